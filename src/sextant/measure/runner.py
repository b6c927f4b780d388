"""``sextant measure train|serve``: run the real model on the local device and compare with the
prediction for the same configuration.

Training: forward, cross-entropy, backward and an AdamW step per iteration; the median of the
timed iterations (after warm-up) is the measured step time. Serving: a prefill of ``batch``
prompts into a preallocated KV cache, then decode iterations of one token per sequence; the mean
decode iteration is the measured step time (the prediction averages over the same contexts).

Peak memory. On CUDA it is ``torch.cuda.max_memory_allocated`` (tensors only, so the
prediction compared with it leaves out the allocator and runtime overheads it adds elsewhere).
On a CPU PyTorch keeps no allocation high-water mark, so the measured figure is what PyTorch
can observe: the bytes of every parameter, gradient and optimizer-state tensor, plus the
activations autograd saves for backward (counted once per storage through
``torch.autograd.graph.saved_tensors_hooks``); for serving, the weights plus the KV cache.
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from sextant.cost.inference import decode_time, kv_cache_bytes_per_token, prefill_time
from sextant.cost.params import count_params
from sextant.cost.precision import precision_bytes
from sextant.errors import SpecError
from sextant.reference.model import Llama
from sextant.resolve.hardware import catalog_gpu_for, load_profile_file
from sextant.resolve.train import resolve_train
from sextant.spec.model import ModelSpec
from sextant.spec.scenario import HardwareRef, TrainScenario
from sextant.spec.strategy import Strategy
from sextant.spec.workload import TrainWorkload
from sextant.train.predict import predict_train
from sextant.train.step import ALLOCATED_PARTS
from sextant.units import GiB

#: Sizes that suit each device: a few seconds per iteration at most on a 2-core CPU; about 1B
#: parameters on a GPU (Llama 3.2 1B's shape with a 32k vocabulary).
TINY = ModelSpec(name="measure-tiny", source="sextant measure: tiny Llama-style decoder for CPUs",
                 hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32,
                 ffn_hidden_size=688, vocab_size=4096, max_seq_len=1024)
ONE_B = ModelSpec(name="measure-1b", source="sextant measure: Llama 3.2 1B shape, 32k vocabulary",
                  hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                  ffn_hidden_size=8192, vocab_size=32000, max_seq_len=4096)


class MeasureResult(BaseModel):
    """JSON shape of ``sextant measure --json``."""

    kind: Literal["train", "serve"]
    device: str
    device_name: str
    model: str
    parameters: int
    precision: str
    batch: int
    seq_len: int
    steps: int
    measured_step_time_s: float
    predicted_step_time_s: float
    error: float  # (predicted - measured) / measured
    #: Memory in GiB (2^30 bytes), as every Sextant report (the keys keep their names).
    measured_peak_memory_gb: float
    predicted_peak_memory_gb: float
    memory_error: float
    memory_method: str
    measured_memory_gb: dict[str, float]
    predicted_memory_gb: dict[str, float]
    predicted_breakdown_s: dict[str, float]
    extra: dict[str, float] = {}
    profile: str
    threads: int
    notes: list[str] = []


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _tensor_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _measured_peak(dev: str, parts: dict[str, float], cuda_span: str, cpu_what: str) -> tuple[float, str]:
    """The measured peak (GiB) and how it was measured: the allocator's high-water mark on CUDA,
    the sum of the observable tensors on a CPU (PyTorch keeps no CPU allocation peak)."""
    if dev != "cpu":
        return torch.cuda.max_memory_allocated() / GiB, f"torch.cuda.max_memory_allocated {cuda_span}"
    return sum(parts.values()), f"{cpu_what} (CPU: no allocator peak)"


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise SpecError(f"device must be cpu or cuda, got {device!r}", field="device")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("no CUDA device is visible to PyTorch; use --device cpu", field="device")
    return "cuda:0" if device == "cuda" else "cpu"


def _device_name(dev: str) -> str:
    return torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu"


def _scenario(spec: ModelSpec, profile: str | None, gpu: str | None, batch: int, seq: int, precision: str,
              optimizer_kernel: str = "fused") -> TrainScenario:
    if gpu is None and profile is None and torch.cuda.is_available():
        gpu = catalog_gpu_for(torch.cuda.get_device_name(0))
        if gpu is None:
            raise SpecError(f"{torch.cuda.get_device_name(0)!r} matches no catalog GPU; pass --gpu or --profile",
                            field="gpu")
    hw = {"gpus": 1, "profile": profile}
    if gpu:
        hw["gpu"] = gpu
    return TrainScenario(
        model=spec, hardware=HardwareRef(**hw),
        # The measured loop runs eager F.cross_entropy on the logits.
        strategy=Strategy(zero=0, micro_batch=batch, precision=precision, attention_kernel="flash", recompute="none",
                          loss_kernel="eager", optimizer_kernel=optimizer_kernel),
        workload=TrainWorkload(global_batch=batch, seq_len=seq, optimizer="adamw", dropout=False),
    )


def _notes(profile_threads: int | None) -> list[str]:
    notes = []
    if profile_threads is not None and profile_threads != torch.get_num_threads():
        notes.append(f"the profile was calibrated with {profile_threads} threads, this run uses "
                     f"{torch.get_num_threads()}: expect a larger error")
    return notes


def _profile_threads(profile: str | None) -> int | None:
    if not profile:
        return None
    return load_profile_file(profile).provenance.get("cpu_threads")


def measure_train(device: str = "cpu", *, profile: str | None = None, gpu: str | None = None,
                  spec: ModelSpec | None = None, batch: int | None = None, seq_len: int | None = None,
                  steps: int = 5, warmup: int = 2) -> MeasureResult:
    dev = _check_device(device)
    spec = spec or (TINY if dev == "cpu" else ONE_B)
    batch = batch or 4
    seq_len = seq_len or (256 if dev == "cpu" else 2048)
    if seq_len > spec.max_seq_len:
        raise SpecError(f"{seq_len} exceeds the model's {spec.max_seq_len} positions", field="seq_len")
    precision = "fp32"
    # AdamW as the loop below runs it: fused on CUDA, foreach on the CPU.
    scenario = _scenario(spec, profile, gpu, batch, seq_len, precision, "foreach" if dev == "cpu" else "fused")
    predicted = predict_train(scenario)  # first: a bad profile fails before minutes of running

    torch.manual_seed(0)
    model = Llama(spec).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if dev != "cpu" else {"foreach": True}))
    tokens = torch.randint(0, spec.vocab_size, (batch, seq_len + 1), device=dev)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(inputs)
        F.cross_entropy(logits.reshape(-1, spec.vocab_size), targets.reshape(-1)).backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev != "cpu":
        torch.cuda.reset_peak_memory_stats()
    times = [_timed(step, dev) for _ in range(steps)]
    measured_step = statistics.median(times)

    params = list(model.parameters())
    states = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    measured_parts = {"weights": _tensor_bytes(params) / GiB, "gradients": _tensor_bytes(p.grad for p in params) / GiB,
                      "optimizer": _tensor_bytes(states) / GiB}
    saved: dict[int, int] = {}
    param_ptrs = {t.untyped_storage().data_ptr() for t in [*params, *model.buffers()]}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in param_ptrs:
            saved[st.data_ptr()] = st.nbytes()
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, spec.vocab_size), targets.reshape(-1))
    measured_parts["activations"] = sum(saved.values()) / GiB
    del loss, logits
    measured_peak, method = _measured_peak(dev, measured_parts, "over the timed steps",
                                           "parameters + gradients + optimizer states + autograd-saved activations")
    # The CPU keeps no allocator peak: compare the tensors it can see. On CUDA the allocated
    # peak counts the temporaries (loss, optimizer step) as well.
    compared = ("weights", "gradients", "optimizer", "activations") if dev == "cpu" else ALLOCATED_PARTS
    pred_parts = {k: v for k, v in predicted.memory_gb_per_gpu.items() if k in compared}
    predicted_peak = sum(pred_parts.values())
    return MeasureResult(
        kind="train", device=dev, device_name=_device_name(dev), model=spec.name,
        parameters=sum(p.numel() for p in params), precision=precision, batch=batch, seq_len=seq_len, steps=steps,
        measured_step_time_s=measured_step, predicted_step_time_s=predicted.step_time_s,
        error=(predicted.step_time_s - measured_step) / measured_step,
        measured_peak_memory_gb=measured_peak, predicted_peak_memory_gb=predicted_peak,
        memory_error=(predicted_peak - measured_peak) / measured_peak, memory_method=method,
        measured_memory_gb=measured_parts, predicted_memory_gb=pred_parts,
        predicted_breakdown_s={k: v for k, v in predicted.time_breakdown_s.items() if v > 0},
        extra={"step_time_min_s": min(times), "step_time_max_s": max(times)},
        profile=predicted.profile, threads=torch.get_num_threads(), notes=_notes(_profile_threads(profile)),
    )


def measure_serve(device: str = "cpu", *, profile: str | None = None, gpu: str | None = None,
                  spec: ModelSpec | None = None, batch: int | None = None, prompt_len: int | None = None,
                  output_len: int | None = None, repeats: int = 3) -> MeasureResult:
    dev = _check_device(device)
    spec = spec or (TINY if dev == "cpu" else ONE_B)
    batch = batch or 16
    prompt_len = prompt_len or (256 if dev == "cpu" else 1024)
    output_len = output_len or (64 if dev == "cpu" else 128)
    total = prompt_len + output_len
    if total > spec.max_seq_len:
        raise SpecError(f"prompt + output = {total} exceeds the model's {spec.max_seq_len} positions", field="seq_len")
    precision = "fp32"
    _, ctx = resolve_train(_scenario(spec, profile, gpu, batch, prompt_len, precision))
    dv = ctx.device
    prefill_parts = {k: float(v) for k, v in prefill_time(spec, dv, batch, prompt_len).items()}
    decode_parts = [decode_time(spec, dv, batch, prompt_len + i + 1) for i in range(output_len)]
    predicted_decode = statistics.fmean(float(sum(p.values())) for p in decode_parts)
    predicted_prefill = sum(prefill_parts.values())

    torch.manual_seed(0)
    model = Llama(spec).to(dev).eval()
    cache = [tuple(torch.zeros(batch, spec.num_kv_heads, total, spec.head_dim, device=dev) for _ in range(2))
             for _ in range(spec.num_layers)]
    prompt = torch.randint(0, spec.vocab_size, (batch, prompt_len), device=dev)
    if dev != "cpu":
        torch.cuda.reset_peak_memory_stats()
    prefills, decodes = [], []
    with torch.inference_mode():
        for r in range(repeats + 1):  # the first round warms up
            _sync(dev)
            start = time.perf_counter()
            token = model(prompt, cache, 0, last_only=True).argmax(-1)
            _sync(dev)
            prefill_s = time.perf_counter() - start
            steps = []
            for i in range(output_len):
                start = time.perf_counter()
                token = model(token, cache, prompt_len + i, last_only=True).argmax(-1)
                _sync(dev)
                steps.append(time.perf_counter() - start)
            if r:
                prefills.append(prefill_s)
                decodes.extend(steps)
    # Mean over every timed decode iteration: the prediction is the mean over the same contexts.
    measured_decode = statistics.fmean(decodes)
    measured_prefill = statistics.median(prefills)

    weights = _tensor_bytes(model.parameters())
    kv = _tensor_bytes(t for pair in cache for t in pair)
    measured_parts = {"weights": weights / GiB, "kv_cache": kv / GiB}
    pred_parts = {"weights": count_params(spec).total * precision_bytes(precision).weight / GiB,
                  "kv_cache": kv_cache_bytes_per_token(spec, dv.act_bytes) * batch * total / GiB}
    measured_peak, method = _measured_peak(dev, measured_parts, "during prefill and decode",
                                           "weight tensors + KV-cache tensors")
    predicted_peak = sum(pred_parts.values())
    mean_decode_parts = {k: statistics.fmean(float(p[k]) for p in decode_parts) for k in decode_parts[0]}
    return MeasureResult(
        kind="serve", device=dev, device_name=_device_name(dev), model=spec.name,
        parameters=sum(p.numel() for p in model.parameters()), precision=precision, batch=batch, seq_len=total,
        steps=output_len, measured_step_time_s=measured_decode, predicted_step_time_s=predicted_decode,
        error=(predicted_decode - measured_decode) / measured_decode,
        measured_peak_memory_gb=measured_peak, predicted_peak_memory_gb=predicted_peak,
        memory_error=(predicted_peak - measured_peak) / measured_peak, memory_method=method,
        measured_memory_gb=measured_parts, predicted_memory_gb=pred_parts,
        predicted_breakdown_s={f"decode_{k}": v for k, v in mean_decode_parts.items()},
        extra={"measured_prefill_s": measured_prefill, "predicted_prefill_s": predicted_prefill,
               "prefill_error": (predicted_prefill - measured_prefill) / measured_prefill,
               "measured_decode_tokens_per_s": batch / measured_decode,
               "predicted_decode_tokens_per_s": batch / predicted_decode},
        profile=ctx.profile.name, threads=torch.get_num_threads(), notes=_notes(_profile_threads(profile)),
    )
