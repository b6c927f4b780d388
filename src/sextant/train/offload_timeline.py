"""Offloaded training on an event timeline: transfers and CPU work overlap GPU compute where
their dependencies allow, and the step takes as long as the timeline, not the sum of its parts.

One micro-batch of a pipeline-free rank (pp = 1; the offloading systems modelled here are
data-parallel) is a list of tasks on five resources: the GPU, the host-to-GPU and GPU-to-host
directions of the host link (full duplex), the NVMe volume and the CPU. A task starts when its
resource is free and its inputs are ready (list scheduling in issue order: each resource is an
in-order queue, as a CUDA stream or an I/O queue is); a task of zero duration is absent. Every
array holds one value per candidate row, so ``predict train`` (one row), its Perfetto trace and
``plan train`` (many rows) run the same code.

The tasks, after the systems they model:

- Parameters in host memory or on NVMe (ZeRO-Infinity, Rajbhandari et al. SC21, section 5:
  each rank fetches its 1/dp shard of a layer over its own PCIe link, NVMe -> pinned host ->
  GPU, and all-gathers it; two layers' buffers, so layer i+1 is prefetched while layer i runs,
  and the fetch of layer i waits for layer i-2 to free its buffer). The backward fetches again.
- Activations to host or NVMe (SSDTrain, Wu et al. 2024; ZeRO-Infinity's activation
  checkpoint offload): each layer's saved activations leave the GPU after its forward and come
  back, prefetched one layer ahead, before its backward. Two staging buffers each way, so a
  forward waits for the copy-out of the layer two before it.
- Gradients to host when the optimizer lives there (ZeRO-Offload, Ren et al. ATC 2021, section
  4.1): each layer's 16-bit gradient shard is copied out after its backward and accumulated in
  host memory, every micro-batch.
- The optimizer step after the last micro-batch, layer by layer in the order the gradients
  arrived: on the GPU (no offload); on the CPU, with the updated 16-bit parameters copied back
  to the GPU as each layer finishes (ZeRO-Offload's CPU-Adam with overlapped copies, section
  4.2); on the CPU with the optimizer state streamed from and back to NVMe (ZeRO-Infinity's
  "infinity offload engine", pipelined over sub-groups: read, update, write); or interleaved
  (Deep Optimizer States, Maurya et al. 2024): each layer's update goes to whichever of the CPU
  or the GPU (its state copied in over PCIe and back out) would finish it first.
- Or, where the framework overlaps them (``overlap.optimizer_with_backward``; Fuyou, Liao et
  al. 2024, arXiv:2403.06504, section 4: "synchronous out-of-core CPU Adam overlapped with
  backward propagation"), each layer's update starts as soon as its last micro-batch's gradient
  is on the host, while the backward goes on below it. The update is still synchronous (the next
  step's forward waits for it); what it hides is its own time behind the last backward, and it
  competes with that backward's prefetches for the link and the drives.
- Or, with ZeRO-Offload's one-step delayed parameter update (``overlap.delayed_parameter_update``,
  Ren et al. ATC 2021, section 4.3), the update of step i runs beside step i+1, bounded by each
  shared resource's total work (see :func:`_delayed`).
- Zeroth-order fine-tuning (MeZO, Malladi et al. 2023; ZO2, Wang et al. 2025): no backward; each
  layer runs two perturbed forwards and its in-place update while its parameters are on the GPU,
  then, when they live in host memory, is written back (ZO2 section 4: one upload and one
  offload per layer per step, overlapped with the neighbouring layers' compute).

Micro-batches are separated by a synchronization (DeepSpeed waits for its gradient copy stream
at the end of every backward), so each one takes the time of the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sextant.cost.memory import OFFLOAD_BUFFERS as BUFFERS
from sextant.cost.tiers import RESOURCE_LABELS, TierRates
from sextant.files import write_trace_events
from sextant.resolve.train import TrainContext

if TYPE_CHECKING:
    from sextant.train.candidates import Candidates

RESOURCES = ("gpu", "host_to_gpu", "gpu_to_host", "nvme", "cpu")


@dataclass
class Event:
    resource: str
    name: str
    start: float
    end: float
    phase: str
    last: bool = False  # on the timeline of the last micro-batch (overlapped optimizer)


@dataclass
class Timeline:
    """Per-resource queues over ``n`` rows; ``record`` keeps the events of row 0 for a trace."""

    n: int
    record: bool = False
    free: dict[str, np.ndarray] = field(default_factory=dict)
    busy: dict[str, np.ndarray] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    phase: str = ""

    def __post_init__(self) -> None:
        self.free = {r: np.zeros(self.n) for r in RESOURCES}
        self.busy = {r: np.zeros(self.n) for r in RESOURCES}

    def run(self, resource: str, duration, *deps, name: str = "") -> np.ndarray:
        """Queue a task; return its end time per row (its inputs' time where it is absent)."""
        duration = np.broadcast_to(np.asarray(duration, float), (self.n,))
        ready = np.zeros(self.n)
        for d in deps:
            ready = np.maximum(ready, d)
        present = duration > 0
        start = np.maximum(self.free[resource], ready)
        end = np.where(present, start + duration, ready)
        self.free[resource] = np.where(present, end, self.free[resource])
        self.busy[resource] = self.busy[resource] + duration
        if self.record and present[0]:
            self.events.append(Event(resource, name, float(start[0]), float(end[0]), self.phase))
        return end

    def barrier(self) -> np.ndarray:
        """Every queue drained: the time all resources are free."""
        t = np.zeros(self.n)
        for r in RESOURCES:
            t = np.maximum(t, self.free[r])
        for r in RESOURCES:
            self.free[r] = t.copy()
        return t


@dataclass
class OffloadInputs:
    """Per-row durations (seconds) and sizes (bytes) of one layer of one micro-batch, and codes.

    ``fwd``/``bwd``: GPU time of one layer's forward and backward (recomputation included);
    ``pre``/``mid``: GPU time before the first layer (embedding) and between the forward and the
    backward (output layer and loss); ``weight_bytes``: the layer's 16-bit parameters this rank
    fetches (its shard); ``act_bytes``: what the layer saves for its backward; ``grad_bytes``: its
    16-bit gradient shard; ``opt_params``: parameters this rank's optimizer updates per layer;
    ``opt_state_bytes``: their optimizer state (fp32 master, moments) per parameter; ``gpu_opt``:
    the GPU optimizer's time for one layer's shard.
    """

    layers: int
    fwd: np.ndarray
    bwd: np.ndarray
    pre: np.ndarray
    mid: np.ndarray
    weight_bytes: np.ndarray
    act_bytes: np.ndarray
    grad_bytes: np.ndarray
    opt_params: np.ndarray
    opt_state_bytes: float
    gpu_opt: np.ndarray
    optimizer: np.ndarray  # codes: 0 GPU, 1 CPU, 2 NVMe (CPU update), 3 interleaved
    params: np.ndarray  # codes: 0 GPU, 1 host, 2 NVMe
    activations: np.ndarray  # codes: 0 GPU, 1 host, 2 NVMe
    zeroth_order: bool = False
    optimizer_with_backward: bool = False
    #: ZeRO-Offload's delayed parameter update, over ``microbatches`` per step (see _delayed).
    delayed_update: bool = False
    microbatches: np.ndarray | None = None


@dataclass
class OffloadTimes:
    """Per row: one micro-batch, the optimizer phase after the last, and each resource's busy
    time in each (for the binding resource)."""

    microbatch_s: np.ndarray
    optimizer_s: np.ndarray
    busy_microbatch_s: dict[str, np.ndarray]
    busy_optimizer_s: dict[str, np.ndarray]
    events: list[Event]

    def busy_step(self, microbatches) -> dict[str, np.ndarray]:
        return {r: microbatches * self.busy_microbatch_s[r] + self.busy_optimizer_s[r] for r in RESOURCES}


def _fetch(tl: Timeline, nbytes, code, rates: TierRates, ready, label: str) -> np.ndarray:
    """Bring ``nbytes`` from its tier to the GPU: NVMe -> host (when on NVMe), host -> GPU."""
    from_nvme = tl.run("nvme", np.where(code == 2, nbytes / max(rates.nvme_read, 1e-30), 0.0), ready,
                       name=f"read {label}")
    return tl.run("host_to_gpu", np.where(code >= 1, nbytes / rates.host_to_gpu, 0.0), from_nvme, name=f"load {label}")


def _flush(tl: Timeline, nbytes, code, rates: TierRates, ready, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Send ``nbytes`` off the GPU to its tier; returns (GPU buffer free, data at rest)."""
    out = tl.run("gpu_to_host", np.where(code >= 1, nbytes / rates.gpu_to_host, 0.0), ready, name=f"store {label}")
    rest = tl.run("nvme", np.where(code == 2, nbytes / max(rates.nvme_write, 1e-30), 0.0), out, name=f"write {label}")
    return out, rest


def _microbatch(tl: Timeline, x: OffloadInputs, rates: TierRates, after_gradient=None) -> None:
    """Queue one micro-batch's forward and backward; ``after_gradient(i, ready)`` queues what
    follows layer ``i``'s gradient reaching the host (the overlapped optimizer of the last one)."""
    n, L = len(x.fwd), x.layers
    zero = np.zeros(n)
    par, act, opt = x.params, x.activations, x.optimizer

    # ---- forward ------------------------------------------------------------------------------
    tl.phase = "forward"
    weights_free = [zero] * L  # when each layer's weight buffer can take the next fetch
    act_out = [zero] * L  # activation copy-out end per layer (frees its staging buffer)
    act_rest = [zero] * L  # activations at rest in their tier (ready to be read back)
    t = tl.run("gpu", x.pre, name="embedding")
    depth = BUFFERS - 1
    fetched = {j: _fetch(tl, x.weight_bytes, par, rates, zero, f"weights L{j}") for j in range(min(depth, L))}
    for i in range(L):
        j = i + depth
        if j < L:  # prefetch ``depth`` layers ahead once the layer BUFFERS back has freed its buffer
            fetched[j] = _fetch(tl, x.weight_bytes, par, rates, weights_free[i - 1] if i >= 1 else zero,
                                f"weights L{j}")
        staging = act_out[i - BUFFERS] if i >= BUFFERS else zero
        t = tl.run("gpu", x.fwd, t, fetched.pop(i), staging, name=f"forward L{i}")
        if x.zeroth_order:  # the updated layer goes back to its tier before its buffer is reused
            weights_free[i], _ = _flush(tl, x.weight_bytes, par, rates, t, f"updated weights L{i}")
        else:
            weights_free[i] = t
            act_out[i], act_rest[i] = _flush(tl, x.act_bytes, act, rates, t, f"activations L{i}")
    t = tl.run("gpu", x.mid, t, name="output layer and loss")
    if x.zeroth_order:
        return

    # ---- backward -----------------------------------------------------------------------------
    tl.phase = "backward"
    bwd_done: dict[int, np.ndarray] = {}
    grad_out: dict[int, np.ndarray] = {}
    opt_on_host = opt >= 1

    def fetch_layer(i: int, ready) -> np.ndarray:
        w = _fetch(tl, x.weight_bytes, par, rates, ready, f"weights L{i}")
        a = _fetch(tl, x.act_bytes, act, rates, np.maximum(ready, act_rest[i]), f"activations L{i}")
        return np.maximum(w, a)

    depth = BUFFERS - 1
    pending = {j: fetch_layer(j, zero) for j in range(L - 1, max(L - 1 - depth, -1), -1)}
    for i in range(L - 1, -1, -1):
        j = i - depth
        if j >= 0:  # prefetch ``depth`` layers below once the layer BUFFERS above has freed its buffers
            pending[j] = fetch_layer(j, bwd_done.get(i + 1, zero))
        grad_buffer = grad_out.get(i + BUFFERS, zero)
        t = tl.run("gpu", x.bwd, t, pending.pop(i), grad_buffer, name=f"backward L{i}")
        bwd_done[i] = t
        grad_out[i] = tl.run("gpu_to_host", np.where(opt_on_host, x.grad_bytes / rates.gpu_to_host, 0.0), t,
                             name=f"store gradients L{i}")
        if after_gradient is not None:
            after_gradient(i, grad_out[i])
            tl.phase = "backward"


class _OptimizerStep:
    """Queues the optimizer's work for one layer, in the order the gradients arrive: on the GPU
    (no offload); on the CPU, the updated 16-bit parameters copied back as each layer finishes
    (ZeRO-Offload); on the CPU with the state read from and written back to NVMe (ZeRO-Infinity);
    or interleaved, each layer on whichever of the CPU and the GPU would finish it first (Deep
    Optimizer States)."""

    def __init__(self, tl: Timeline, x: OffloadInputs, rates: TierRates) -> None:
        self.tl, self.x, self.rates = tl, x, rates
        par = x.params
        self.cpu_s = x.opt_params / rates.cpu_adam_params_per_s
        self.state = x.opt_params * x.opt_state_bytes
        self.back_to_gpu = np.where(par == 0, x.weight_bytes / rates.host_to_gpu, 0.0)
        self.to_nvme = np.where(par == 2, x.weight_bytes / max(rates.nvme_write, 1e-30), 0.0)
        # The GPU path of the interleaved update: state and gradient in, update, state out.
        self.gpu_in = (self.state + x.grad_bytes) / rates.host_to_gpu
        self.gpu_out = self.state / rates.gpu_to_host
        self.interleaved = bool((x.optimizer == 3).any())
        self.cpu_done: dict[int, np.ndarray] = {}
        self.ends: list[np.ndarray] = []

    def layer(self, i: int, ready: np.ndarray) -> None:
        tl, x, rates, opt = self.tl, self.x, self.rates, self.x.optimizer
        tl.phase = "optimizer"
        if self.interleaved:
            est_cpu = np.maximum(tl.free["cpu"], ready) + self.cpu_s + self.back_to_gpu
            est_gpu = np.maximum(np.maximum(tl.free["host_to_gpu"], ready) + self.gpu_in, tl.free["gpu"]) + x.gpu_opt
            on_gpu = (opt == 3) & (est_gpu < est_cpu)
        else:
            on_gpu = np.zeros(len(ready), bool)
        on_cpu = (opt >= 1) & ~on_gpu
        buffer = np.maximum(self.cpu_done.get(i + BUFFERS, ready), ready)
        read = tl.run("nvme", np.where(opt == 2, self.state / max(rates.nvme_read, 1e-30), 0.0), buffer,
                      name=f"read optimizer state L{i}")
        cpu = tl.run("cpu", np.where(on_cpu, self.cpu_s, 0.0), read, name=f"CPU Adam L{i}")
        self.cpu_done[i] = cpu
        written = tl.run("nvme", np.where(opt == 2, self.state / max(rates.nvme_write, 1e-30), 0.0), cpu,
                         name=f"write optimizer state L{i}")
        params_back = tl.run("host_to_gpu", np.where(on_cpu, self.back_to_gpu, 0.0), cpu,
                             name=f"load updated weights L{i}")
        params_nvme = tl.run("nvme", np.where(on_cpu, self.to_nvme, 0.0), cpu, name=f"write updated weights L{i}")
        state_in = tl.run("host_to_gpu", np.where(on_gpu, self.gpu_in, 0.0), ready, name=f"load optimizer state L{i}")
        gpu = tl.run("gpu", np.where(opt == 0, x.gpu_opt, np.where(on_gpu, x.gpu_opt, 0.0)), state_in,
                     name=f"GPU Adam L{i}")
        state_out = tl.run("gpu_to_host", np.where(on_gpu, self.gpu_out, 0.0), gpu, name=f"store optimizer state L{i}")
        self.ends += [written, params_back, params_nvme, state_out, gpu]


def offload_timeline(x: OffloadInputs, rates: TierRates, *, record: bool = False) -> OffloadTimes:
    """Simulate one micro-batch and the optimizer phase (see the module docstring).

    ``optimizer_s`` is what the optimizer adds to the step beyond ``m`` micro-batches: the whole
    phase after the last backward, or, when ``x.optimizer_with_backward``, how much longer the
    last micro-batch runs with the updates overlapping its backward."""
    n = len(x.fwd)
    tl = Timeline(n, record)
    _microbatch(tl, x, rates)
    microbatch = tl.barrier()
    busy_microbatch = {r: v.copy() for r, v in tl.busy.items()}

    if x.zeroth_order:
        return OffloadTimes(microbatch_s=microbatch, optimizer_s=np.zeros(n), busy_microbatch_s=busy_microbatch,
                            busy_optimizer_s={r: np.zeros(n) for r in RESOURCES}, events=tl.events)
    if x.optimizer_with_backward:
        # The last micro-batch on a fresh timeline, each layer's update queued as its gradient
        # reaches the host (Fuyou): same resources, so the update competes with the backward's
        # prefetches for the link and the drives.
        last = Timeline(n, record)
        step = _OptimizerStep(last, x, rates)
        _microbatch(last, x, rates, after_gradient=step.layer)
        end = np.max(np.stack([last.barrier(), *step.ends]), axis=0)
        for e in last.events:
            e.last = True
        busy_optimizer = {r: last.busy[r] - busy_microbatch[r] for r in RESOURCES}
        return OffloadTimes(microbatch_s=microbatch, optimizer_s=end - microbatch, busy_microbatch_s=busy_microbatch,
                            busy_optimizer_s=busy_optimizer, events=tl.events + last.events)

    step = _OptimizerStep(tl, x, rates)
    for i in range(x.layers - 1, -1, -1):
        step.layer(i, microbatch)
    end = np.max(np.stack([microbatch, *step.ends]), axis=0)
    busy_optimizer = {r: tl.busy[r] - busy_microbatch[r] for r in RESOURCES}
    times = OffloadTimes(microbatch_s=microbatch, optimizer_s=end - microbatch, busy_microbatch_s=busy_microbatch,
                         busy_optimizer_s=busy_optimizer, events=tl.events)
    if x.delayed_update:
        times.optimizer_s = _delayed(x, times)
    return times


def _delayed(x: OffloadInputs, times: OffloadTimes) -> np.ndarray:
    """What the optimizer adds to a step under ZeRO-Offload's one-step delayed parameter update
    (Ren et al. ATC 2021, section 4.3): the update of step i runs beside step i+1's m
    micro-batches, so the step lasts the longest of the m micro-batches, the update's own chain
    (the synchronous phase above) and, on each resource they share (link, drives, CPU, GPU),
    their work added up. Rows with the parameters off the GPU, or the optimizer on it, keep the
    synchronous phase."""
    m = np.asarray(x.microbatches, float)
    shared = np.max(np.stack(list(times.busy_step(m).values())), axis=0)
    step = np.maximum(np.maximum(m * times.microbatch_s, times.optimizer_s), shared)
    applies = (x.optimizer >= 1) & (x.params == 0)
    return np.where(applies, step - m * times.microbatch_s, times.optimizer_s)


def write_trace(times: OffloadTimes, microbatches: float, path: str) -> int:
    """A Perfetto / Chrome trace (JSON trace-event format) of row 0's timeline: one track per
    resource, the first micro-batch and the optimizer phase after the last, or the last
    micro-batch with its overlapped optimizer (the micro-batches in between repeat the first).
    Returns the number of events."""

    events: list[dict] = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "training step (one GPU)"}}]
    for tid, r in enumerate(RESOURCES, start=1):
        events.append({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": RESOURCE_LABELS[r]}})
    tids = {r: i for i, r in enumerate(RESOURCES, start=1)}
    skipped = (microbatches - 1) * float(times.microbatch_s[0])
    overlapped = any(e.last for e in times.events)
    for e in times.events:
        if overlapped and microbatches <= 1 and not e.last:
            continue  # one micro-batch: the last one's timeline is the whole step
        shift = skipped if (e.phase == "optimizer" or e.last) else 0.0
        events.append({"ph": "X", "pid": 1, "tid": tids[e.resource], "name": e.name, "cat": e.phase,
                       "ts": (e.start + shift) * 1e6, "dur": (e.end - e.start) * 1e6})
    shown = ("micro-batch 1 and the last, with the optimizer overlapping its backward" if overlapped
             else "micro-batch 1 and the optimizer step after the last")
    meta = {"microbatches": microbatches, "shown": shown,
            "microbatch_s": float(times.microbatch_s[0]), "optimizer_s": float(times.optimizer_s[0])}
    write_trace_events(path, events, meta)
    return len(events)


def offload_times(ctx: TrainContext, c: Candidates, rows: np.ndarray, per_layer: dict, emb_both, log_both,
             stage_params, local_params, gpu_optimizer, microbatches, *, record: bool) -> OffloadTimes:
    """The timeline of the offloaded ``rows`` of ``c`` (all pp = 1: one stage holds every layer), from
    the evaluation's per-layer table and per-stage parameter counts."""
    L = ctx.model.num_layers
    b = lambda v: np.broadcast_to(np.asarray(v, float), (len(c),))[rows]  # noqa: E731
    weight_16 = ctx.precision_bytes.weight
    zero = c.zero[rows]
    dp_group = b(c.dp * c.cp)
    layer_params = b(stage_params) / L
    shard = np.where(zero >= 3, dp_group, 1.0)
    mc = ctx.method
    state = mc.optimizer_bytes / mc.trainable_fraction
    fwd = b(per_layer["fwd"])
    inputs = OffloadInputs(
        layers=L, fwd=fwd, bwd=b(per_layer["time"] + ctx.costs.layer_pass_overhead_s) - fwd, pre=b(emb_both), mid=b(log_both),
        weight_bytes=layer_params * mc.weight_bytes / shard,
        act_bytes=b(per_layer["act_layer"]),
        grad_bytes=layer_params * weight_16 * mc.trainable_fraction / np.where(zero >= 2, dp_group, 1.0),
        opt_params=b(local_params) * mc.trainable_fraction / L, opt_state_bytes=state, gpu_opt=b(gpu_optimizer) / L,
        optimizer=c.offload_optimizer[rows], params=c.offload_params[rows], activations=c.offload_activations[rows],
        zeroth_order=ctx.workload.method == "zo", optimizer_with_backward=ctx.overlap.optimizer_with_backward,
        delayed_update=ctx.overlap.delayed_parameter_update, microbatches=b(microbatches),
    )
    return offload_timeline(inputs, ctx.tiers, record=record)
