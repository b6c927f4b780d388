"""The result of predicting one training configuration (the JSON shape of ``predict train``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sextant.spec.strategy import layout_label

TIME_PART_LABELS = {
    "gemm": "matrix multiplies (GEMM)",
    "attention": "attention kernels",
    "elementwise": "memory-bound element-wise kernels",
    "recompute": "activation recomputation",
    "embedding_logits": "embedding, logits and loss",
    "tp_comm": "tensor-parallel communication (intra-node link)",
    "cp_comm": "context-parallel ring attention communication",
    "ep_comm": "expert-parallel all-to-all",
    "pp_p2p": "pipeline send/receive",
    "framework_overhead": "framework overhead per layer and micro-batch",
    "pipeline_bubble": "pipeline bubble",
    "dp_comm": "data-parallel gradient/parameter communication",
    "optimizer": "optimizer step",
    "offload_wait": "GPU waiting for offload transfers (PCIe, NVMe)",
}
#: The same parts in a word or two, for table columns.
TIME_PART_SHORT = {
    "gemm": "GEMM",
    "attention": "attention",
    "elementwise": "element-wise",
    "recompute": "recompute",
    "embedding_logits": "logits",
    "tp_comm": "TP comm",
    "cp_comm": "CP comm",
    "ep_comm": "EP all-to-all",
    "pp_p2p": "PP send/recv",
    "framework_overhead": "framework",
    "pipeline_bubble": "PP bubble",
    "dp_comm": "DP comm",
    "optimizer": "optimizer",
    "offload_wait": "offload wait",
}
MEMORY_PART_LABELS = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer": "optimizer state",
    "activations": "activations (in-flight micro-batches)",
    "activation_temporaries": "activation temporaries (loss over the logits, recomputed layer)",
    "comm_buffers": "communication buffers",
    "optimizer_step": "optimizer-step temporaries (beyond the activations they replace)",
    "fragmentation": "caching-allocator fragmentation (reserved beyond allocated)",
    "runtime": "CUDA context and NCCL (outside the allocator)",
}


class TrainResult(BaseModel):
    """Keys are stable: scripts read them (see README, "JSON output")."""

    model_config = ConfigDict(extra="forbid")

    model: str
    framework: str | None
    gpu: str
    gpus: int
    dp: int
    tp: int
    pp: int
    cp: int
    ep: int
    #: Expert tensor parallelism (the ranks each expert is split over; tp unless folded).
    etp: int
    vpp: int
    zero: int
    micro_batch: int
    global_batch: int
    seq_len: int
    recompute: str
    sequence_parallel: bool
    schedule: str
    precision: str
    num_microbatches: float
    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    model_tflops_per_gpu: float
    mfu: float
    hfu: float
    executed_tflops_per_gpu: float
    hardware_utilization: float
    flop_convention: str
    memory_gb_per_gpu: dict[str, float]
    memory_capacity_gb: float
    fits: bool
    memory_headroom_gb: float
    #: What must fit (GiB): the tensors, the fragmentation a full GPU leaves and the runtime; the
    #: ``total`` part is the peak as the device shows it with memory to spare.
    memory_required_gb: float = 0.0
    #: The upper bound on the peak (the point estimate times the held-out ratio of
    #: data/memory_bound.yaml), its level, and the verdict in words with the margin.
    memory_upper_gb: float = 0.0
    memory_bound_level: float = 0.0
    fits_statement: str = ""
    time_breakdown_s: dict[str, float]
    bottleneck: str
    profile: str
    #: Whether the hardware profile was fitted to measured runs of this GPU (False: defaults or
    #: another GPU's fit, so the error is likely larger than the validated figures).
    profile_fitted: bool = False
    #: The interval held-out validation supports: ``step_time_s``, ``tokens_per_s_per_gpu`` and
    #: ``model_tflops_per_gpu`` each mapped to ``{low, high, level}``; empty when no validated
    #: regime applies. ``interval_basis`` says which runs it comes from.
    interval: dict[str, dict[str, float]] = {}
    interval_basis: str = ""
    assumptions: list[str]
    method: str = "full"
    offload_optimizer: str = "none"
    offload_params: str = "none"
    offload_activations: str = "none"
    #: Bytes per GPU in each tier (GiB): the GPU's own memory, host DRAM and NVMe, and each
    #: tier's capacity per GPU (host and NVMe shared by the node's GPUs).
    memory_gb_per_tier: dict[str, float] = {}
    tier_capacity_gb: dict[str, float] = {}
    #: The resource the step is bound by (GPU, PCIe, NVMe, CPU, or an interconnect), and the
    #: busy seconds per resource on the offload timeline.
    binding_resource: str = "GPU compute"
    resource_busy_s: dict[str, float] = {}

    @property
    def layout(self) -> str:
        """The parallel degrees above 1, e.g. ``dp4 tp8+sp pp8`` (see :func:`layout_label`)."""
        return layout_label(self.dp, self.tp, self.pp, self.cp, self.ep, self.vpp,
                            sequence_parallel=self.sequence_parallel, etp=self.etp)

    @property
    def largest_part(self) -> str:
        """The largest part of the step time, in a word or two (:data:`TIME_PART_SHORT`)."""
        return TIME_PART_SHORT[max(self.time_breakdown_s, key=self.time_breakdown_s.get)]
