"""How a training job is parallelized and executed (Megatron-LM / TorchTitan vocabulary)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sextant.spec.base import Spec
from sextant.spec.limits import MAX_GLOBAL_BATCH, MAX_GPUS

Recompute = Literal["none", "selective", "full"]
Schedule = Literal["gpipe", "1f1b", "interleaved"]
Precision = Literal["bf16", "fp16", "fp8", "tf32", "fp32"]
AttentionKernel = Literal["flash", "unfused"]
CollectiveAlgorithm = Literal["hierarchical", "flat_ring"]
OffloadTarget = Literal["none", "cpu", "nvme"]
#: Where the optimizer state lives and who updates it: the GPU; the CPU (ZeRO-Offload); the CPU
#: with the state on NVMe (ZeRO-Infinity); or the state in host memory updated partly by the CPU
#: and partly by the GPU, layer by layer, whichever finishes first (Deep Optimizer States).
OptimizerOffload = Literal["none", "cpu", "nvme", "interleaved"]

#: How the planner's candidate columns code the strategy's choices, and back.
RECOMPUTE_CODES: dict[str, int] = {"none": 0, "selective": 1, "full": 2}
SCHEDULE_CODES: dict[str, int] = {"gpipe": 0, "1f1b": 1, "interleaved": 2}
#: Offload targets: none, host memory, NVMe, and (optimizer only) interleaved CPU/GPU updates.
OFFLOAD_CODES: dict[str, int] = {"none": 0, "cpu": 1, "nvme": 2, "interleaved": 3}
RECOMPUTE_NAMES: dict[int, str] = {v: k for k, v in RECOMPUTE_CODES.items()}
SCHEDULE_NAMES: dict[int, str] = {v: k for k, v in SCHEDULE_CODES.items()}
OFFLOAD_NAMES: dict[int, str] = {v: k for k, v in OFFLOAD_CODES.items()}


def layout_label(dp: int, tp: int, pp: int, cp: int = 1, ep: int = 1, vpp: int = 1, *,
                 sequence_parallel: bool = False, etp: int | None = None) -> str:
    """A parallel layout in a few characters, for tables: the degrees above 1 (``dp4 tp8+sp pp8
    vpp3``; ``+sp`` marks Megatron-LM's sequence parallelism; ``etp1`` an expert tensor
    parallelism other than tp), or ``1 GPU`` when nothing is split."""
    parts = [f"{name}{n}" + ("+sp" if name == "tp" and sequence_parallel else "")
             for name, n in (("dp", dp), ("tp", tp), ("pp", pp), ("cp", cp), ("ep", ep)) if n > 1]
    if etp is not None and etp != tp:
        parts.append(f"etp{etp}")
    if vpp > 1:
        parts.append(f"vpp{vpp}")
    return " ".join(parts) or "1 GPU"


class Overlap(Spec):
    """Which communication the framework hides behind compute.

    Defaults follow Megatron-Core with ``--overlap-grad-reduce --overlap-param-gather`` and
    FSDP/ZeRO-3 prefetching. Megatron-LM as of the SC21 paper overlapped none of them.
    """

    dp_grad_reduce: bool = True
    dp_param_gather: bool = True
    tp_comm: bool = False
    pp_p2p: bool = True
    #: MoE: one micro-batch's expert-parallel all-to-alls hidden behind another's compute
    #: (Megatron-Core ``--overlap-moe-expert-parallel-comm``, the combined 1F1B schedule after
    #: DeepSeek-V3's DualPipe overlap).
    ep_comm: bool = False
    #: An offloaded optimizer updates each layer as soon as its final gradient is on the host,
    #: during the rest of the last backward (Fuyou, Liao et al. 2024, arXiv:2403.06504), instead
    #: of after the last backward (ZeRO-Offload, ZeRO-Infinity).
    optimizer_with_backward: bool = False
    #: ZeRO-Offload's one-step delayed parameter update (Ren et al. ATC 2021, section 4.3): the
    #: CPU update of step i runs during step i+1's forward and backward, which use the parameters
    #: of step i-1. Applies where the optimizer is offloaded and the parameters stay on the GPU;
    #: step i's parameters are copied in during step i+1, each layer's once its backward is done
    #: with the old ones (no second copy). Steady state only (the paper starts it after a few
    #: dozen synchronous warm-up steps).
    delayed_parameter_update: bool = False
    #: Fraction of the shorter of (communication, compute it overlaps with) that is actually
    #: hidden: 1.0 is perfect overlap; less models streams contending for SMs and memory, and
    #: prefetching that starts late.
    efficiency: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_optimizer_overlap(self) -> Overlap:
        if self.optimizer_with_backward and self.delayed_parameter_update:
            raise ValueError("optimizer_with_backward and delayed_parameter_update are exclusive: the update "
                             "overlaps either the last backward (Fuyou) or the next step (ZeRO-Offload's DPU)")
        return self


class Strategy(Spec):
    """Parallel degrees and execution choices. ``dp`` may be left out: gpus / (tp*pp*cp)."""

    dp: int | None = Field(default=None, gt=0, le=MAX_GPUS)
    tp: int = Field(default=1, gt=0, le=MAX_GPUS)
    pp: int = Field(default=1, gt=0, le=MAX_GPUS)
    cp: int = Field(default=1, gt=0, le=MAX_GPUS)
    ep: int = Field(default=1, gt=0, le=MAX_GPUS)
    etp: int | None = Field(
        default=None, gt=0, le=MAX_GPUS,
        description="Expert tensor parallelism: the ranks one expert's GEMMs are split over. Default: tp. "
                    "Megatron-Core's MoE parallel folding lays the expert layers' etp x ep x expert-dp over the "
                    "same tp x cp x dp ranks as the attention layers, so ep may exceed dp*cp (etp 1, ep 64 on "
                    "tp 2 x dp 32).")
    vpp: int = Field(default=1, gt=0, le=MAX_GPUS, description="Virtual pipeline stages per rank.")
    zero: int = Field(default=1, ge=0, le=3, description="ZeRO stage; 3 is FSDP full shard.")
    micro_batch: int = Field(default=1, gt=0, le=MAX_GLOBAL_BATCH)
    recompute: Recompute = "none"
    sequence_parallel: bool = False
    schedule: Schedule | None = Field(default=None, description="Default: interleaved if vpp>1 else 1f1b.")
    precision: Precision = "bf16"
    attention_kernel: AttentionKernel = "flash"
    dp_collective: CollectiveAlgorithm = "hierarchical"
    #: What ZeRO-3/FSDP gathers at once: a whole transformer layer (FSDP wrapping per block, as
    #: TorchTitan) or each sub-module's weights (DeepSpeed ZeRO-3). Two units are live at a time
    #: (the one in use and the one prefetched).
    zero3_gather_unit: Literal["layer", "module"] = "layer"
    #: With fp16 parameters, the optimizer keeps an fp32 copy of the gradients (Megatron-LM: true;
    #: DeepSpeed converts per partition during the step: false).
    fp32_grad_copy: bool = True
    #: With bf16 parameters and ZeRO 0-1, autograd's bf16 gradients stay allocated beside the fp32
    #: gradient buffer they are accumulated into: DeepSpeed's BF16_Optimizer
    #: (deepspeed/runtime/bf16_optimizer.py) keeps ``fp32_groups_gradients_flat`` for every local
    #: parameter and frees ``param.grad`` only when the next backward starts, 2 more bytes per
    #: parameter. Megatron-LM accumulates into its fp32 ``main_grad`` directly (false).
    bf16_grad_copy: bool = False
    #: DeepSpeed's ``partition_activations`` (activation checkpointing with model parallelism):
    #: with full recomputation, each tensor-parallel rank keeps 1/tp of the checkpointed layer
    #: input and all-gathers it before the layer is recomputed.
    partition_activations: bool = False
    #: What ``recompute: selective`` recomputes (cost/layer.py ``SELECTIVE_RECOMPUTE``): the
    #: attention core (Megatron-LM) or every second matmul and all element-wise ops of a block
    #: (TorchTitan's per-op selective activation checkpointing), or MLA's up-projections
    #: (Megatron-Core's ``--recompute-modules mla_up_proj``). A framework preset or a run sets it.
    selective_recompute: Literal["attention_core", "alternate_matmuls", "mla_up_proj"] = "attention_core"
    #: The query, key and value projections run as one GEMM, and an MLP's gate and up projections
    #: as one (Megatron-Core's ``linear_qkv`` and ``linear_fc1``); false: each its own GEMM, as in
    #: TorchTitan's and Hugging Face's Llama modules. A framework preset sets it.
    fused_projections: bool = True
    #: How MoE tokens reach their experts: ``alltoall`` (NCCL all-to-all, one copy per routed
    #: expert) or ``deepep`` (DeepEP or Megatron-Core's HybridEP: one copy per remote node,
    #: forwarded over NVLink; cost/parallel.py ``remote_copy_share``).
    moe_dispatcher: Literal["alltoall", "deepep"] = "alltoall"
    #: The data type of the gradient buffer with bf16/fp8 parameters: fp32 (Megatron-LM's
    #: ``main_grad``, the default) or bf16 (``--grad-reduce-in-bf16``; NeMo's FP8 performance
    #: recipes set ``grad_reduce_in_fp32 = False``): 2 bytes per parameter instead of 4, in
    #: memory and in the data-parallel reduction.
    grad_buffer: Literal["fp32", "bf16"] = "fp32"
    #: The cross-entropy implementation, for the memory its logits take (cost/memory.py
    #: ``LOSS_KERNELS``): Megatron-Core's vocab-parallel kernel, PyTorch's eager
    #: ``F.cross_entropy`` on fp32 logits, the same under ``torch.compile``, or a fused kernel.
    #: A framework preset sets it.
    loss_kernel: Literal["vocab_parallel", "eager", "compiled", "fused"] = "vocab_parallel"
    #: The optimizer's implementation: ``fused`` updates in place (Apex/Transformer Engine
    #: FusedAdam, ``torch.optim.AdamW(fused=True)``), ``foreach`` allocates an fp32 temporary per
    #: parameter during the step (PyTorch's default multi-tensor path). A framework preset sets it.
    optimizer_kernel: Literal["fused", "foreach"] = "fused"
    #: What FP8 training keeps of a GEMM's input for the weight gradient: its FP8 cast
    #: (Transformer Engine, cost/memory.py ``layer_activation_bytes``) or the 16-bit input, cast
    #: again in the backward (torchao's Float8Linear). A framework preset sets it.
    fp8_saved_inputs: Literal["fp8", "bf16"] = "fp8"
    overlap: Overlap = Overlap()
    #: Offloading (train/offload_timeline.py): optimizer state and update, the 16-bit parameters (needs
    #: ZeRO-3, as ZeRO-Infinity), and the activations saved for the backward (SSDTrain).
    offload_optimizer: OptimizerOffload = "none"
    offload_params: OffloadTarget = "none"
    offload_activations: OffloadTarget = "none"

    @property
    def resolved_etp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def offloads(self) -> bool:
        return self.offload_optimizer != "none" or self.offload_params != "none" or self.offload_activations != "none"

    @property
    def resolved_schedule(self) -> Schedule:
        if self.schedule is not None:
            return self.schedule
        return "interleaved" if self.vpp > 1 else "1f1b"
