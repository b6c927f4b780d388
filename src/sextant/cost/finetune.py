"""Training methods beyond full-parameter Adam: what each changes in the bytes a GPU keeps per
parameter and in the work of a layer.

- ``lora`` (Hu et al., ICLR 2022): frozen 16-bit base weights; rank-r adapters A (r x d_in) and
  B (d_out x r) on every linear layer of the blocks (QLoRA's finding that all layers need them),
  trained in fp32 with Adam (4 B weight + 4 B gradient + 8 B moments). The backward computes
  input gradients through the frozen weights but no weight gradients: its GEMMs are half of full
  training's (the adapters' own GEMMs are r/d of the base and are neglected).
- ``qlora`` (Dettmers et al., NeurIPS 2023, section 3): LoRA on a base stored as 4-bit NormalFloat
  with double-quantized block constants, 4 + 0.127 bits per weight (section 3, "Double
  Quantization"); each forward and backward dequantizes a layer's weights to bf16 before its
  GEMMs (bitsandbytes), an element-wise pass that reads the 4-bit weights and writes 16-bit ones.
  Embeddings and the output layer stay 16-bit.
- ``galore`` (Zhao et al., ICML 2024, section 4): full-parameter training with the gradient of
  each m x n matrix (m <= n) projected to rank r; Adam's moments live in the projected space
  (2 r n) beside the projector (m r), in bf16 as the paper's memory estimates count them, without
  an fp32 master copy; weights update layer by layer during the backward, so only one layer's
  gradients exist at a time. The projector's SVD (every few hundred steps) is not costed.
- ``zo`` (MeZO, Malladi et al., NeurIPS 2023; ZO2, Wang et al. 2025): zeroth-order SGD: two
  forward passes with the weights perturbed by +-eps z (z regenerated from a seed), no backward,
  no gradients, no optimizer state, no stored activations; the update re-reads and writes every
  weight once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sextant.spec.model import ModelSpec

METHODS = ("full", "lora", "qlora", "galore", "zo")
#: NF4 weight plus its double-quantized block constants: 0.127 bits per parameter (QLoRA section 3).
QLORA_BITS_PER_WEIGHT = 4.0 + 0.127
#: Adapter bytes per parameter (weight, gradient, Adam moments): fp32 adapters for LoRA (PEFT keeps
#: adapters in fp32 beside a 16-bit base); bf16 adapters with 32-bit paged AdamW for QLoRA (the
#: qlora repository casts LoRA layers to bf16 under --bf16; its default optim paged_adamw_32bit).
ADAPTER_BYTES = {"lora": (4.0, 4.0, 8.0), "qlora": (2.0, 2.0, 8.0)}


def linear_shapes(model: ModelSpec) -> list[tuple[int, int]]:
    """(d_in, d_out) of the linear layers of one (dense) block, as LoRA wraps them."""
    h, a, g, d = model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim
    f = model.ffn_hidden_size if model.moe is None else model.moe.expert_ffn_hidden_size
    shapes = [(h, a * d), (h, g * d), (h, g * d), (a * d, h)]
    shapes += [(h, f), (h, f), (f, h)] if model.gated_mlp else [(h, f), (f, h)]
    return shapes


@dataclass(frozen=True)
class MethodCosts:
    """Per block parameter of the base model (the frozen or trained weights of the blocks)."""

    weight_bytes: float  # base weights as stored on the GPU
    grad_bytes: float  # gradient bytes kept (per block parameter, averaged)
    optimizer_bytes: float  # optimizer state per block parameter, averaged
    trainable_fraction: float  # trainable parameters / block parameters
    backward_gemm_factor: float  # backward GEMM time relative to full training
    forward_passes: int  # forward passes per micro-batch
    backward: bool
    dequant_bytes_per_weight: float  # element-wise bytes per weight per pass (QLoRA)


def method_costs(model: ModelSpec, method: str, rank: int, precision_weight: float, precision_grad: float,
                 optimizer_state: float) -> MethodCosts:
    """Bytes per block parameter and compute factors of ``method`` (see the module docstring)."""
    shapes = linear_shapes(model)
    block = sum(i * o for i, o in shapes)
    adapters = sum(rank * (i + o) for i, o in shapes)
    frac = adapters / block
    if method == "full":
        return MethodCosts(precision_weight, precision_grad, optimizer_state, 1.0, 1.0, 1, True, 0.0)
    if method in ("lora", "qlora"):
        base = QLORA_BITS_PER_WEIGHT / 8.0 if method == "qlora" else precision_weight
        weight, grad, moments = ADAPTER_BYTES[method]
        return MethodCosts(
            weight_bytes=base + frac * weight, grad_bytes=frac * grad,
            optimizer_bytes=frac * moments, trainable_fraction=frac, backward_gemm_factor=0.5,
            forward_passes=1, backward=True,
            dequant_bytes_per_weight=(QLORA_BITS_PER_WEIGHT / 8.0 + 2.0) if method == "qlora" else 0.0)
    if method == "galore":
        states = sum(2.0 * (min(i, o) * rank + 2 * max(i, o) * rank) for i, o in shapes)  # bf16
        return MethodCosts(precision_weight, 0.0, states / block, 1.0, 1.0, 1, True, 0.0)
    if method == "zo":
        return MethodCosts(precision_weight, 0.0, 0.0, 1.0, 0.0, 2, False, 0.0)
    raise ValueError(f"unknown training method {method!r}; one of {', '.join(METHODS)}")
