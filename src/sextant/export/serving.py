"""Serve commands for vLLM, SGLang and TensorRT-LLM from a serving scenario.

Option names as each engine's source declares them (tests/data/framework_options/, with the
version and source file of each): vLLM 0.34 ``vllm serve`` (vllm/engine/arg_utils.py over the
config dataclasses), SGLang ``python -m sglang.launch_server`` (python/sglang/srt/server_args.py)
and TensorRT-LLM ``trtllm-serve`` with its LLM API YAML (tensorrt_llm/commands/serve.py,
tensorrt_llm/llmapi/llm_args.py). One command serves one deployment: ``replicas`` become the
engine's data parallelism (vLLM ``--data-parallel-size``, SGLang ``--dp-size``); TensorRT-LLM
serves one replica per command.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from sextant.catalog.models import HF_REPOS
from sextant.export import PRESETS
from sextant.export.launch import ExportError, LaunchConfig, flag
from sextant.resolve.serve import ServeContext, resolve_serve
from sextant.spec.serving import ServeScenario

VLLM = "vLLM 0.34"
SGLANG = "SGLang (server_args.py, main 001067f)"
TRTLLM = "TensorRT-LLM (trtllm-serve, PyTorch backend, main 44373a3)"
TRTLLM_CONFIG = "extra-llm-api-config.yml"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
#: 16-bit weights as each engine names the dtype.
_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class ServeJob:
    ctx: ServeContext
    model_path: str  # a Hugging Face repository, or a placeholder the notes explain
    longest_request: int | None  # prompt + output tokens, when the workload bounds them

    @property
    def scenario(self) -> ServeScenario:
        return self.ctx.scenario


def serve_job(scenario: ServeScenario) -> ServeJob:
    ctx = resolve_serve(scenario)
    return ServeJob(ctx, _weights_path(ctx.model.name), _longest(scenario))


def _weights_path(model: str) -> str:
    """The model's Hugging Face repository where the catalog knows one, else a placeholder."""
    repo = HF_REPOS.get(model.lower(), "").split(" ")[0]
    return repo if _REPO_ID.fullmatch(repo) else f"/path/to/{model}"


def _longest(scenario: ServeScenario) -> int | None:
    w = scenario.workload
    if w.trace is not None:
        return None
    lengths = [length if isinstance(length, int) else (length.max if length.max is not None else
                                                       int(length.mean) if length.distribution == "fixed" else None)
               for length in (w.input_len, w.output_len)]
    return None if None in lengths else sum(lengths)  # type: ignore[arg-type]


def export_serving(scenario: ServeScenario, fmt: str) -> LaunchConfig:
    job = serve_job(scenario)
    _refuse_common(job, fmt)
    return {"vllm": _vllm, "sglang": _sglang, "trtllm": _trtllm}[fmt](job)


def _engine_name(fmt: str) -> str:
    return {"vllm": "vLLM", "sglang": "SGLang", "trtllm": "TensorRT-LLM"}[fmt]


def _refuse_common(job: ServeJob, fmt: str) -> None:
    s = job.scenario
    name = _engine_name(fmt)
    off = s.offload
    reasons = (  # (refused?, why): the first that applies is reported
        (s.scheduler.batching == "static", "static batching: the engine batches continuously"),
        (s.disaggregation is not None, "a prefill/decode-disaggregated deployment is two server groups and a "
                                       "KV-transfer connector; the export writes one server command"),
        (s.deployment.resolved_kv_precision in ("int8", "int4"), f"a {s.deployment.resolved_kv_precision} KV "
                                                                  "cache: the engine stores KV in 16 bits or fp8"),
        (s.scheduler.preemption == "swap", "swap preemption: the engine preempts by recomputation"),
        (s.speculative is not None and s.speculative.target_device == "cpu",
         "a target model on the CPU (Dovetail) is not an engine option"),
        (off.kv_cache != "gpu", f"a KV cache in {off.kv_cache} memory with attention off the GPU (FlexGen) is not "
                                "an engine option"),
        (off.weights == "nvme", "weights streamed from NVMe are not an engine option"),
        (off.weights == "cpu" and off.streamed == "experts", "streaming only the routed experts from host memory "
                                                              "is not an engine option"),
        (off.weights == "cpu" and fmt == "trtllm", "TensorRT-LLM does not stream weights from host memory"),
        (s.deployment.ep not in (1, s.deployment.tp) and fmt == "vllm",
         f"ep {s.deployment.ep} inside tp {s.deployment.tp}: vLLM spreads experts over all tp x dp ranks or none"),
    )
    for refused, why in reasons:
        if refused:
            raise ExportError(name, why)


def _offloaded_gib(job: ServeJob) -> float:
    """GiB of weights per GPU the prediction kept in host memory and streamed in (its offload
    plan's): vLLM's and SGLang's ``--cpu-offload-gb``, "the space in GiB to offload to CPU, per
    GPU". Only whole dense layers stream here (expert streaming is refused above), so the plan's
    expert-miss grid, whose range ``max_tokens`` sets, plays no part."""
    from sextant.serve.offload_plan import plan_offload
    from sextant.units import GiB

    return round(plan_offload(job.ctx, max_tokens=1).host_weight_bytes / GiB, 1)


def _quantization_notes(job: ServeJob, dynamic_fp8: bool) -> list[str]:
    p = job.scenario.deployment.precision
    if p in ("bf16", "fp16") or (p == "fp8" and dynamic_fp8):
        return []
    checkpoint = {"fp8": "an FP8", "int8": "a W8A8 (INT8)", "w4a16": "a 4-bit weight-only (AWQ/GPTQ)",
                  "fp4": "an NVFP4"}[p]
    return [f"{p} weights: the engine reads the quantization from the checkpoint; point the model at {checkpoint} "
            "checkpoint (e.g. one quantized with NVIDIA ModelOpt or llm-compressor)"]


def _common_notes(job: ServeJob, fmt: str) -> list[str]:
    notes = []
    if not _REPO_ID.fullmatch(job.model_path):
        notes.append(f"{job.model_path}: the model's weights (the catalog knows no Hugging Face repository for "
                     f"{job.ctx.model.name})")
    preset = job.scenario.framework
    if preset is None or not preset.startswith(fmt):
        used = f"the {preset} preset" if preset else "no framework preset"
        notes.append(f"predicted with {used}: `--framework {PRESETS[fmt]}` predicts {_engine_name(fmt)}'s scheduler "
                     "defaults and overheads")
    return notes


def _replica_nodes(job: ServeJob) -> int:
    """Nodes one replica spans (tp x pp GPUs over the node's GPUs)."""
    return -(-job.scenario.deployment.gpus_per_replica // job.ctx.cluster.node.gpus_per_node)


def _multi_node(job: ServeJob, addr_flag: str, port: str) -> tuple[list[str], list[str]]:
    """The options and notes of a replica that spans nodes: the same command on each node, told
    its rank and the first node's address (``$NODE_RANK``, ``$MASTER_ADDR``); several such
    replicas are started one command set each."""
    nodes = _replica_nodes(job)
    if nodes == 1:
        return [], []
    notes = [f"one replica spans {nodes} nodes: run this command on each, with NODE_RANK 0..{nodes - 1} and "
             "MASTER_ADDR the address of node 0"]
    if job.ctx.replicas > 1:
        notes.append(f"{job.ctx.replicas} replicas: start this set of nodes once per replica, behind a load balancer")
    return ["--nnodes", str(nodes), "--node-rank", "${NODE_RANK}", addr_flag, "${MASTER_ADDR}" + port], notes


def _vllm(job: ServeJob) -> LaunchConfig:
    s, dep, sch = job.scenario, job.scenario.deployment, job.scenario.scheduler
    o = ["vllm", "serve", job.model_path, "--tensor-parallel-size", str(dep.tp)]
    flag(o, "--pipeline-parallel-size", dep.pp, when=dep.pp > 1)
    nodes_args, nodes_notes = _multi_node(job, "--master-addr", "")
    o += nodes_args
    flag(o, "--data-parallel-size", job.ctx.replicas, when=job.ctx.replicas > 1 and not nodes_args)
    flag(o, "--enable-expert-parallel", when=dep.ep > 1)
    o += ["--max-num-seqs", str(sch.max_batch), "--block-size", str(sch.block_size),
          "--gpu-memory-utilization", f"{sch.gpu_memory_utilization:g}"]
    flag(o, "--max-num-batched-tokens", sch.token_budget, when=sch.token_budget is not None)
    o.append("--enable-chunked-prefill" if sch.batching == "chunked" else "--disable-chunked-prefill")
    o.append("--enable-prefix-caching" if sch.prefix_caching else "--disable-prefix-caching")
    o.append("--async-scheduling" if sch.async_scheduling else "--no-async-scheduling")
    flag(o, "--enforce-eager", when=not sch.cuda_graphs)
    flag(o, "--max-cudagraph-capture-size", sch.cuda_graph_max_tokens, when=sch.cuda_graphs and sch.cuda_graph_max_tokens)
    flag(o, "--dtype", _DTYPE.get(dep.precision), when=dep.precision in _DTYPE)
    flag(o, "--quantization", "fp8", when=dep.precision == "fp8")
    o += ["--kv-cache-dtype", "fp8" if dep.resolved_kv_precision == "fp8" else "auto"]
    flag(o, "--cpu-offload-gb", _offloaded_gib(job), when=s.offload.weights == "cpu")
    flag(o, "--max-model-len", job.longest_request,
         when=job.longest_request is not None and job.longest_request > job.ctx.model.max_seq_len)
    if s.speculative is not None:
        o += ["--speculative-config", json.dumps({"model": _draft_path(job), "num_speculative_tokens": s.speculative.num_tokens})]
    notes = _quantization_notes(job, dynamic_fp8=True) + _common_notes(job, "vllm") + nodes_notes
    if dep.precision == "fp8":
        notes.append("--quantization fp8 quantizes a 16-bit checkpoint's weights to FP8 as it loads them")
    if not nodes_args and job.ctx.replicas * dep.gpus_per_replica > job.ctx.cluster.node.gpus_per_node:
        notes.append("data parallelism across nodes: start one `vllm serve` per node with --data-parallel-size-local, "
                     "--data-parallel-start-rank and --data-parallel-address (vLLM's data-parallel deployment guide)")
    return LaunchConfig(format="vllm", framework=VLLM, argv=o, notes=notes)


def _draft_path(job: ServeJob) -> str:
    assert job.scenario.speculative is not None
    return _weights_path(job.scenario.speculative.draft_model)


def _sglang(job: ServeJob) -> LaunchConfig:
    s, dep, sch = job.scenario, job.scenario.deployment, job.scenario.scheduler
    o = ["python", "-m", "sglang.launch_server", "--model-path", job.model_path, "--tp-size", str(dep.tp)]
    flag(o, "--pp-size", dep.pp, when=dep.pp > 1)
    nodes_args, nodes_notes = _multi_node(job, "--dist-init-addr", ":5000")
    o += nodes_args
    flag(o, "--dp-size", job.ctx.replicas, when=job.ctx.replicas > 1 and not nodes_args)
    flag(o, "--ep-size", dep.ep, when=dep.ep > 1)
    o += ["--max-running-requests", str(sch.max_batch), "--page-size", str(sch.block_size),
          "--mem-fraction-static", f"{sch.gpu_memory_utilization:g}"]
    # SGLang chunks every prefill longer than --chunked-prefill-size; -1 turns chunking off.
    o += ["--chunked-prefill-size", str(sch.token_budget or 8192) if sch.batching == "chunked" else "-1"]
    flag(o, "--disable-radix-cache", when=not sch.prefix_caching)
    flag(o, "--disable-overlap-schedule", when=not sch.async_scheduling)
    # Deprecated on main for --cuda-graph-backend-{decode,prefill} disabled, which releases up to
    # 0.5.18 lack; the old flag is accepted by both.
    flag(o, "--disable-cuda-graph", when=not sch.cuda_graphs)
    flag(o, "--dtype", _DTYPE.get(dep.precision), when=dep.precision in _DTYPE)
    flag(o, "--quantization", "fp8", when=dep.precision == "fp8")
    flag(o, "--kv-cache-dtype", "fp8_e4m3", when=dep.resolved_kv_precision == "fp8")
    flag(o, "--cpu-offload-gb", math.ceil(_offloaded_gib(job)), when=s.offload.weights == "cpu")  # an int
    flag(o, "--context-length", job.longest_request,
         when=job.longest_request is not None and job.longest_request > job.ctx.model.max_seq_len)
    if s.speculative is not None:
        o += ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", _draft_path(job),
              "--speculative-num-steps", str(s.speculative.num_tokens), "--speculative-eagle-topk", "1",
              "--speculative-num-draft-tokens", str(s.speculative.num_tokens + 1)]
    notes = _quantization_notes(job, dynamic_fp8=True) + _common_notes(job, "sglang") + nodes_notes
    return LaunchConfig(format="sglang", framework=SGLANG, argv=o, notes=notes)


def _trtllm(job: ServeJob) -> LaunchConfig:
    s, dep, sch = job.scenario, job.scenario.deployment, job.scenario.scheduler
    o = ["trtllm-serve", job.model_path, "--backend", "pytorch", "--tp_size", str(dep.tp)]
    flag(o, "--pp_size", dep.pp, when=dep.pp > 1)
    flag(o, "--ep_size", dep.ep, when=dep.ep > 1)
    o += ["--max_batch_size", str(sch.max_batch), "--kv_cache_free_gpu_memory_fraction",
          f"{sch.gpu_memory_utilization:g}"]
    flag(o, "--max_num_tokens", sch.token_budget, when=sch.token_budget is not None)
    flag(o, "--max_seq_len", job.longest_request, when=job.longest_request is not None)
    o += ["--extra_llm_api_options", TRTLLM_CONFIG]
    kv: dict = {"dtype": "fp8" if dep.resolved_kv_precision == "fp8" else "auto",
                "enable_block_reuse": sch.prefix_caching, "tokens_per_block": sch.block_size}
    config: dict = {"kv_cache_config": kv, "enable_chunked_prefill": sch.batching == "chunked",
                    "disable_overlap_scheduler": not sch.async_scheduling,
                    "cuda_graph_config": {"max_batch_size": sch.max_batch, "enable_padding": True}
                    if sch.cuda_graphs else None}
    if s.speculative is not None:
        config["speculative_config"] = {"decoding_type": "Draft_Target", "max_draft_len": s.speculative.num_tokens,
                                        "speculative_model": _draft_path(job)}
    notes = _quantization_notes(job, dynamic_fp8=False) + _common_notes(job, "trtllm")
    notes.append("--kv_cache_free_gpu_memory_fraction is the share of the memory left after the weights and "
                 "activations that the KV cache takes (not of the whole GPU, as vLLM's --gpu-memory-utilization)")
    if job.ctx.replicas > 1:
        notes.append(f"one command serves one replica of {dep.gpus_per_replica} GPU(s): start {job.ctx.replicas} "
                     "(CUDA_VISIBLE_DEVICES apart) behind a load balancer")
    if _replica_nodes(job) > 1:
        notes.append(f"one replica spans {_replica_nodes(job)} nodes: launch it with mpirun over "
                     f"{dep.gpus_per_replica} ranks through trtllm-llmapi-launch (TensorRT-LLM's multi-node serving)")
    return LaunchConfig(format="trtllm", framework=TRTLLM, argv=o, files={TRTLLM_CONFIG: _yaml(config)}, notes=notes)


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)
