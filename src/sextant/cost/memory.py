"""Memory per GPU: model states (weights, gradients, optimizer) and activations.

Model states follow ZeRO (Rajbhandari et al., SC20, section 3.1): mixed-precision Adam keeps
2 bytes of weights, 2 bytes of gradients and K = 12 bytes of fp32 master weights, momentum and
variance per parameter; ZeRO stage 1 shards the optimizer state over data parallelism, stage 2
also the gradients, stage 3 (= FSDP full shard) also the weights. With bf16, Megatron-LM keeps
gradients in an fp32 ``main_grad`` buffer (4 bytes). 8-bit Adam (Dettmers et al., ICLR 2022)
stores the two moments in one byte each.

Activations follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", section 4, generalized term by term: their per-layer 34sbh + 5as^2b bytes
(GPT, MHA, GeLU MLP of 4h, dropout) is rebuilt from the tensors each kernel saves, so that GQA,
gated MLPs, MLA, MoE, FlashAttention (no s^2 terms) and dropout-free training follow from the
same derivation. Every function broadcasts over NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.cost.layer import ALTERNATE_MATMULS, MLA_UP_PROJ, matmul_chain
from sextant.cost.params import attention_qk_dim, attention_v_dim
from sextant.cost.precision import PRECISION_BYTES
from sextant.spec.model import ModelSpec
from sextant.units import GiB

#: Bytes per parameter of optimizer state (fp32 master weights included), per optimizer.
OPTIMIZER_STATE_BYTES = {"adamw": 12.0, "adam": 12.0, "sgd": 8.0, "adam8bit": 6.0}
#: Device memory outside the caching allocator: CUDA context and kernel images, NCCL's buffers
#: (what nvidia-smi counts beyond ``torch.cuda.max_memory_reserved``; a framework preset may
#: restate it: ``runtime_reserved_gib``).
RUNTIME_RESERVED_BYTES = 1.0 * GiB
#: Caching-allocator fragmentation: what it reserves beyond the allocated peak, as a fraction of
#: it (a framework preset may restate it: ``allocator_overhead``).
ALLOCATOR_OVERHEAD = 0.05
#: The fragmentation a full GPU leaves: before it raises an out-of-memory error the caching allocator
#: frees its cached blocks and retries, so what must fit is less than what it reserves with room
#: to spare. A run that failed held 1.37 GiB reserved beyond 29.09 GiB allocated (4.7%; DeepSpeed's
#: ZeRO tutorial, GPT-2 1.5B on a 32 GB V100: "29.09 GiB already allocated; ... 30.46 GiB reserved").
FRAGMENTATION_AT_CAPACITY = 0.05
#: The fp32 master copy of the weights inside OPTIMIZER_STATE_BYTES; fp32 training has none (the
#: weights are the master copy).
MASTER_WEIGHT_BYTES = 4.0


def optimizer_state_bytes(optimizer: str, precision: str, *, fp32_grad_copy: bool = False) -> float:
    """Optimizer-state bytes per parameter: the optimizer's states with the fp32 master copy of
    mixed precision (fp32 training has none), plus the fp32 gradient copy of Megatron-LM's fp16
    optimizer where asked (see :func:`model_state_bytes`)."""
    pb = PRECISION_BYTES[precision]
    return (OPTIMIZER_STATE_BYTES[optimizer] - (0.0 if pb.master_copy else MASTER_WEIGHT_BYTES)
            + (4.0 if fp32_grad_copy and precision == "fp16" else 0.0))


def optimizer_step_bytes(optimizer: str, precision: str) -> float:
    """Bytes one optimizer step moves per local parameter: every state byte read and written
    (fp32 master weights included), the gradient read, and the 16-bit weights written back in
    mixed precision (fp32 training updates the weights in place: they are the master copy).
    Adam in bf16: 2 x 12 + 4 + 2 = 30; in fp32: 2 x (8 + 4) + 4 = 28. The step is memory-bound
    (fused multi-tensor Adam in Apex and PyTorch's ``foreach`` implementation)."""
    pb = PRECISION_BYTES[precision]
    state = optimizer_state_bytes(optimizer, precision)
    in_place_weights = 0.0 if pb.master_copy else pb.weight
    return 2.0 * (state + in_place_weights) + pb.grad + (pb.weight if pb.master_copy else 0.0)


def model_state_bytes(params_local, dp, zero, precision: str, optimizer: str, *, fp32_grad_copy: bool = False,
                      bf16_grad_copy: bool = False, grad_bytes: float | None = None):
    """(weights, gradients, optimizer) bytes per GPU for ``params_local`` parameters held by the
    GPU's model-parallel shard before ZeRO sharding over ``dp`` ranks.

    ``fp32_grad_copy``: with fp16 parameters the optimizer also keeps an fp32 copy of the
    gradients (Megatron-LM's fp16 optimizer: 2 + 2 + 16 = 20 bytes per parameter, 4 + 16/d with
    its distributed optimizer; Megatron-LM docs, "Distributed Optimizer"), where DeepSpeed
    converts them per partition during the step (ZeRO's 2 + 2 + 12). With bf16 the 4-byte
    gradient buffer is that copy already.

    ``bf16_grad_copy``: with bf16 parameters and ZeRO 0-1, the 2-byte gradients autograd produces
    stay allocated beside that fp32 buffer (DeepSpeed's BF16_Optimizer: 2 + 2 + 4 + 12/d).

    ``grad_bytes``: the gradient buffer's width where the strategy restates it (a bf16 buffer,
    Strategy.grad_buffer); the precision's otherwise."""
    params_local = np.asarray(params_local, float)
    dp = np.asarray(dp, float)
    zero = np.asarray(zero)
    pb = PRECISION_BYTES[precision]
    weights = params_local * pb.weight / np.where(zero >= 3, dp, 1.0)
    lp_grads = np.where(zero <= 1, pb.weight, 0.0) if bf16_grad_copy and precision == "bf16" else 0.0
    grad = pb.grad if grad_bytes is None else grad_bytes
    grads = params_local * (grad + lp_grads) / np.where(zero >= 2, dp, 1.0)
    state = optimizer_state_bytes(optimizer, precision, fp32_grad_copy=fp32_grad_copy)
    optim = params_local * state / np.where(zero >= 1, dp, 1.0)
    return weights, grads, optim


def layer_activation_bytes(model: ModelSpec, b, s, t, sp, recompute, *, flash: bool, dropout: bool,  # noqa: PLR0913
                           moe_layer: bool = False, act_bytes: float = 2.0, partitioned=False,
                           selective: str = "attention_core", etp=None, fp8_inputs: bool = False) -> np.ndarray:
    """Bytes one layer keeps for backward per micro-batch (``s``: local sequence length).

    ``recompute``: 0 none, 1 selective, 2 full (only the layer input is kept). ``selective``
    names the policy (cost/layer.py ``SELECTIVE_RECOMPUTE``): the attention core recomputed (no
    s^2 terms), or TorchTitan's per-op policy, which keeps the block's input and the outputs of
    its attention kernel and of its odd-numbered matmuls (:func:`_alternate_matmuls_saved`).
    A MoE layer's routed experts see the token-expert pairs of cost/layer.py ``routed_rows``, each
    expert split over ``etp`` ranks (default ``t``). Terms, with ``e`` = ``act_bytes`` per activation (2 in mixed
    precision, Korthikanti's case) and 1-byte dropout masks: norms e*sbh each; QKV input e*sbh;
    Q, K, V; scores (unfused: softmax output e, dropout mask 1, dropout output e per score); attention
    output e*s*b*a*d_v; output-projection dropout mask sbh; MLP input e*sbh; MLP intermediates
    (GeLU: input and output, 2 x e*s*b*f; gated: gate, up and their product, 3 x e*s*b*f); MLP
    dropout mask sbh. Tensors before the column-parallel split are divided by t only with sequence
    parallelism. Flash attention keeps an fp32 log-sum-exp per row instead of the scores.
    ``partitioned``: DeepSpeed's partitioned activation checkpoints (``partition_activations``):
    each tensor-parallel rank keeps 1/t of the kept layer input, as sequence parallelism does, and
    gathers the rest before recomputing the layer.
    ``fp8_inputs``: FP8 training that keeps the FP8 cast of each GEMM input for the weight gradient
    (Transformer Engine's Linear, LayerNormLinear and GroupedLinear save ``inputmat`` or its
    transpose in FP8 when the weight gradient runs in FP8, ``override_linear_precision.wgrad``
    off): the normalized inputs of QKV and of the MLP, the MLP's second GEMM input and the routed
    experts' inputs take 1 byte instead of ``e``; the attention output is kept twice, in 16 bits
    for the attention kernel's backward and as the output projection's FP8 input.
    """
    e = act_bytes
    h, a, g = model.hidden_size, model.num_heads, model.num_kv_heads
    b = np.asarray(b, float)
    t = np.asarray(t, float)
    sbh = s * b * h
    seq_split = np.where(sp, t, 1.0)
    mask = 1.0 if dropout else 0.0
    norms = 1 if (model.parallel_attention and model.parallel_attention_norms == 1) else 2
    dqk, dv = attention_qk_dim(model), attention_v_dim(model)

    gin = 1.0 if fp8_inputs else e  # a GEMM input kept for the weight gradient
    replicated = (norms * e + gin + mask) * sbh  # norm inputs, QKV input, out-proj dropout mask
    if not model.parallel_attention:
        replicated = replicated + (gin + mask) * sbh  # MLP input, MLP dropout mask
    else:
        replicated = replicated + mask * sbh
    if model.mla is not None:
        m = model.mla
        kv_heads_qk = a  # MLA up-projects keys and values for every head
        latent = e * s * b * (m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim)
        replicated = replicated + latent
    else:
        kv_heads_qk = g
    qkv = e * s * b * (a * dqk + kv_heads_qk * dqk + kv_heads_qk * dv) / t
    attn_out = (e + (1.0 if fp8_inputs else 0.0)) * s * b * a * dv / t
    if flash:
        scores = 4.0 * b * a * s / t  # fp32 log-sum-exp per row
    else:
        scores = (e + mask + e) * b * a * s * s / t
    gated = 3 if model.gated_mlp else 2
    etp = t if etp is None else np.asarray(etp, float)
    if moe_layer and model.moe is not None:
        moe = model.moe
        routed = s * b * moe.top_k * etp / t
        # The activation's inputs in 16 bits, the second GEMM's input (its output) as kept.
        inter = ((gated - 1) * e + gin) * routed * moe.expert_ffn_hidden_size / etp
        inter = inter + gin * routed * h  # permuted expert inputs
        if moe.num_shared_experts:
            f_sh = moe.shared_expert_ffn_hidden_size * moe.num_shared_experts
            inter = inter + ((gated - 1) * e + gin) * s * b * f_sh / t
    else:
        inter = ((gated - 1) * e + gin) * s * b * model.ffn_hidden_size / t

    full_layer = replicated / seq_split + qkv + attn_out + scores + inter
    only_input = e * sbh / np.where(np.asarray(sp, bool) | np.asarray(partitioned, bool), t, 1.0)
    if selective == ALTERNATE_MATMULS:
        kept = only_input + attn_out + scores + _alternate_matmuls_saved(model, s, b, t, e, moe_layer=moe_layer, etp=etp)
    elif selective == MLA_UP_PROJ:
        kept = full_layer - (qkv if model.mla is not None else 0.0)
    else:
        kept = full_layer - np.where(flash, 0.0, scores)
    recompute = np.asarray(recompute)
    return np.where(recompute == 2, only_input, np.where(recompute == 1, kept, full_layer))


def _alternate_matmuls_saved(model: ModelSpec, s, b, t, e: float, *, moe_layer: bool, etp) -> np.ndarray:
    """Bytes TorchTitan's per-op selective checkpointing keeps of one layer beyond its input and
    attention kernel: the outputs of the odd-numbered matmuls of :func:`matmul_chain` (a
    row-parallel matmul's output is the full hidden width before its reduction) and, in a
    mixture-of-experts layer, the tokens permuted to the experts (the all-to-all's output, a
    communication op it saves)."""
    chain = matmul_chain(model, t, moe_layer=moe_layer)
    saved = e * s * b * sum(n for _, n in chain[0::2])
    if moe_layer and model.moe is not None:
        saved = saved + e * s * b * model.moe.top_k * etp / t * model.hidden_size
    return saved


def layer_activation_peak_extra(model: ModelSpec, b, s, t, sp, recompute, *, flash: bool, dropout: bool,  # noqa: PLR0913
                                moe_layer: bool = False, act_bytes: float = 2.0, partitioned=False,
                                selective: str = "attention_core", etp=None, fp8_inputs: bool = False) -> np.ndarray:
    """Extra bytes while one layer is recomputed and back-propagated: with full recomputation the
    layer's complete activations exist again for the duration of its backward (less the part of
    its input that was kept and is counted already); with selective, what the policy recomputed."""
    kw = dict(flash=flash, dropout=dropout, moe_layer=moe_layer, act_bytes=act_bytes, partitioned=partitioned,
              selective=selective, etp=etp, fp8_inputs=fp8_inputs)
    full = layer_activation_bytes(model, b, s, t, sp, 0, **kw)
    sel = layer_activation_bytes(model, b, s, t, sp, 1, **kw)
    kept_input = layer_activation_bytes(model, b, s, t, sp, 2, **kw)
    recompute = np.asarray(recompute)
    return np.where(recompute == 2, full - kept_input, np.where(recompute == 1, full - sel, 0.0))


@dataclass(frozen=True)
class LossKernel:
    """Bytes per logit (``s*b*V/t`` of them on the last stage) a cross-entropy implementation
    keeps from its forward to its backward, and the most that exist at once while it runs."""

    kept: float
    peak: float


#: Cross-entropy implementations, each traced through its code:
#:
#: - ``vocab_parallel``: Megatron-Core's ``vocab_parallel_cross_entropy``
#:   (megatron/core/tensor_parallel/cross_entropy.py) upcasts the bf16 logits to fp32, subtracts
#:   the max and exponentiates in place and saves that fp32 tensor (4); in the forward the bf16
#:   logits still exist beside it (2 + 4 = 6); the backward turns the saved tensor into the
#:   gradient in place and casts it to bf16 (4 + 2 = 6). Korthikanti et al. 2022 keep the same
#:   4 bytes.
#: - ``eager``: ``F.cross_entropy(logits.float(), labels)`` as TorchTitan, Hugging Face and
#:   nanotron-style trainers run it without a fused kernel: the bf16 logits, their fp32 copy and
#:   log_softmax's fp32 output exist together in the forward (2 + 4 + 4 = 10); log_softmax keeps
#:   its output (4); at the start of the backward nll_loss's dense fp32 gradient, the saved
#:   output and log_softmax's fp32 input gradient exist together (4 + 4 + 4 = 12).
#: - ``compiled``: the same loss under ``torch.compile`` (TorchTitan compiles it with the model
#:   since 2025-04, torchtitan/components/loss.py): Inductor reads the bf16 logits in one reduction,
#:   keeps them and the per-row log-sum-exp, and writes their bf16 gradient in the backward
#:   (2 + 2 = 4 at the peak).
#: - ``fused``: Transformer Engine's ``parallel_cross_entropy`` (Megatron-Core
#:   ``cross_entropy_fusion_impl: te``) and Liger-style kernels compute the loss and write its
#:   gradient into the bf16 logits in place: the logits are all that exists (2).
LOSS_KERNELS = {
    "vocab_parallel": LossKernel(kept=4.0, peak=6.0),
    "eager": LossKernel(kept=4.0, peak=12.0),
    "compiled": LossKernel(kept=2.0, peak=4.0),
    "fused": LossKernel(kept=2.0, peak=2.0),
}


def logits_activation_bytes(model: ModelSpec, b, s, t, act_bytes: float = 2.0,
                            loss_kernel: str = "vocab_parallel") -> np.ndarray:
    """Output layer on the last stage: the final norm's input and the output projection's input
    (e*sbh each) and what the loss keeps of the logits (:data:`LOSS_KERNELS`)."""
    b = np.asarray(b, float)
    logits = s * b * model.vocab_size / np.asarray(t, float)
    return 2.0 * act_bytes * s * b * model.hidden_size + LOSS_KERNELS[loss_kernel].kept * logits


def loss_transient_bytes(model: ModelSpec, b, s, t, loss_kernel: str = "vocab_parallel") -> np.ndarray:
    """Bytes beyond what the loss keeps that exist while it runs (:data:`LOSS_KERNELS`): the
    moment the last stage holds its in-flight activations and the logits' temporaries at once."""
    kernel = LOSS_KERNELS[loss_kernel]
    return (kernel.peak - kernel.kept) * s * np.asarray(b, float) * model.vocab_size / np.asarray(t, float)


#: Bytes per optimizer-local parameter that one optimizer step allocates beside the states, by
#: implementation. PyTorch's ``foreach`` Adam/AdamW (torch/optim/adam.py ``_multi_tensor_adam``)
#: computes ``exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)`` for the whole parameter list
#: at once, an fp32 tensor per parameter; the fused kernels (``fused=True``, Apex and
#: Transformer Engine FusedAdam, DeepSpeed's) update in place.
OPTIMIZER_STEP_TEMPORARY_BYTES = {"fused": 0.0, "foreach": 4.0}


def pipeline_in_flight(pp, vpp, num_microbatches, schedule_code, stage_index) -> np.ndarray:
    """Micro-batches whose activations a stage holds at its peak.

    GPipe: all m. 1F1B (Narayanan et al. 2021, PipeDream-Flush): stage i holds pp - i.
    Interleaved 1F1B: the first stage holds pp * (1 + (pp - 1) / (pp * vpp)) micro-batches' worth
    of its layers (Korthikanti et al. 2022, section 4.2.3); later stages proportionally fewer.
    """
    pp = np.asarray(pp, float)
    m = np.asarray(num_microbatches, float)
    interleave = np.where(schedule_code == 2, 1 + (pp - 1) / (pp * np.asarray(vpp, float)), 1.0)
    in_flight = np.where(schedule_code == 0, m, np.maximum(pp - stage_index, 1.0) * interleave)
    return np.minimum(in_flight, np.maximum(m, 1.0) * interleave)


#: Layers whose buffers are live at once per offload stream: the one in use and the one
#: prefetched (ZeRO-Infinity's and SSDTrain's double buffering).
OFFLOAD_BUFFERS = 2
#: Offload target codes of the planner's columns (sextant.spec.strategy.OFFLOAD_CODES).
OFFLOAD_HOST, OFFLOAD_NVME, OFFLOAD_INTERLEAVED = 1, 2, 3


def stage_activations(n_layers, in_flight, act_layer, act_extra, logits_act, with_logits, loss_extra=0.0) -> tuple:
    """(layers' kept, kept, temporaries) activation bytes of a stage at its peak: ``n_layers``
    layers' saved activations for each micro-batch in flight; with the output layer's on the last
    stage; and the larger of two moments that do not coincide, the loss's temporaries
    (``loss_extra``, at the turn from forward to backward) and the recomputed layer's extra while
    its backward runs."""
    kept = n_layers * in_flight * act_layer
    temporaries = np.maximum(act_extra, np.where(with_logits, loss_extra, 0.0))
    return kept, kept + np.where(with_logits, logits_act, 0.0), temporaries


def method_state_bytes(params, n_layers, dp_group, zero, method, *, galore: bool, weight_bytes: float) -> tuple:
    """(weights, gradients, optimizer) bytes per GPU of ``params`` block parameters under a
    training method other than full training (:class:`sextant.cost.finetune.MethodCosts`):
    its stored base weights and adapter states, sharded by ZeRO as full training's; GaLore
    updates layer by layer in the backward, so one layer's gradients exist at a time."""
    weights = params * method.weight_bytes / np.where(zero >= 3, dp_group, 1.0)
    grads = (params / np.maximum(n_layers, 1) * weight_bytes if galore
             else params * method.grad_bytes / np.where(zero >= 2, dp_group, 1.0))
    optim = params * method.optimizer_bytes / np.where(zero >= 1, dp_group, 1.0)
    return weights, grads, optim


def offload_tier_bytes(weights, grads, optim, kept_activations, codes: tuple) -> tuple:
    """(host, NVMe) bytes per GPU of what leaves the GPU: the optimizer state (and, with it, the
    gradients, which accumulate in host memory: ZeRO-Offload), the parameters, and the saved
    activations, each to the tier its code names. ``codes``: (optimizer, parameters,
    activations) offload codes."""
    opt, par, act = codes
    host = np.zeros(np.shape(opt))
    nvme = np.zeros(np.shape(opt))
    for code, tier_bytes in ((opt, optim), (par, weights), (act, kept_activations)):
        host += np.where((code == OFFLOAD_HOST) | (code == OFFLOAD_INTERLEAVED), tier_bytes, 0.0)
        nvme += np.where(code == OFFLOAD_NVME, tier_bytes, 0.0)
    host += np.where(opt > 0, grads, 0.0)
    return host, nvme


def offloaded_gpu_states(weights, grads, optim, activations, codes: tuple, staged_grads, staged_activations) -> tuple:
    """(weights, gradients, optimizer, activations) bytes a GPU keeps when ``codes`` offload
    them: staging buffers instead, two gather units of 16-bit gradients (a layer, or one weight
    matrix as DeepSpeed reduces them) and two layers of activations each way."""
    opt, par, act = codes
    return (np.where(par > 0, 0.0, weights), np.where(opt > 0, staged_grads, grads), np.where(opt > 0, 0.0, optim),
            np.where(act > 0, staged_activations, activations))


def optimizer_step_excess(optimizer_local_params, activation_bytes, optimizer_kernel: str) -> np.ndarray:
    """Bytes by which the optimizer step's moment exceeds the backward's peak. The step runs after
    the last backward, when the activations are freed, so its temporaries
    (:data:`OPTIMIZER_STEP_TEMPORARY_BYTES`) raise the peak only where they outweigh them."""
    temporary = OPTIMIZER_STEP_TEMPORARY_BYTES[optimizer_kernel] * np.asarray(optimizer_local_params, float)
    return np.maximum(temporary - activation_bytes, 0.0)


def allocator_fragmentation(allocated_peak_bytes, allocator_overhead: float) -> np.ndarray:
    """Bytes the caching allocator reserves beyond the allocated peak (what
    ``torch.cuda.max_memory_reserved`` counts beyond ``max_memory_allocated``): blocks cached
    in segments that no request of the moment can use."""
    return allocator_overhead * np.asarray(allocated_peak_bytes, float)
