"""Number formats: the bytes per element of every kind of tensor, for training and serving, and
the tensor-core dtype a precision's GEMMs run in. One table; the training precisions, the serving
weight precisions and the KV-cache precisions are views of it.

- Element widths: IEEE 754 binary32/binary16, bfloat16, the OCP 8-bit floating-point formats
  (E4M3/E5M2) and int8; tf32 is stored as fp32 (it changes only the tensor-core math).
- FP4 (NVFP4, NVIDIA's Blackwell format: E2M1 values with one E4M3 scale per block of 16,
  plus one fp32 scale per tensor; NVIDIA, "Introducing NVFP4", 2025) stores 0.5 + 1/16 bytes per
  element; weights and activations both run through the FP4 tensor cores (W4A4).
- Four-bit formats store an fp16 scale (and, asymmetric, an fp16 zero point) per group of
  elements: weights W4A16 with groups of 128 (AWQ, Lin et al. 2024; GPTQ, Frantar et al. 2023);
  KV caches with groups of 64 (KIVI, Liu et al. 2024).
- Training (mixed precision, Micikevicius et al. 2018): 16-bit weights and activations, fp32
  master weights; bf16 and fp8 keep an fp32 ``main_grad`` (Megatron-LM requires fp32
  accumulation for bf16), fp16 keeps fp16 gradients. FP8 (Transformer Engine) casts GEMM
  operands to 1 byte and keeps bf16 activations between layers. fp32/tf32: everything in
  4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bytes per element of each storage format.
NVFP4_BLOCK = 16
ELEMENT_BYTES = {"fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0,
                 "fp4": 0.5 + 1.0 / NVFP4_BLOCK}
#: Elements sharing one fp16 scale: W4A16 weights (AWQ/GPTQ default) and int4 KV caches (KIVI).
WEIGHT_GROUP_SIZE = 128
KV_GROUP_SIZE = 64
#: Bytes of fp32 logits per sampled row (the sampler's softmax input).
LOGIT_BYTES = ELEMENT_BYTES["fp32"]


def four_bit_bytes(group_size: int, zero_point: bool = False) -> float:
    """Bytes per element of a 4-bit format with an fp16 scale (and an fp16 zero point when
    asymmetric) per ``group_size`` elements."""
    return 0.5 + (2.0 * ELEMENT_BYTES["fp16"] if zero_point else ELEMENT_BYTES["fp16"]) / group_size


#: Bytes per cached KV element, by KV-cache precision.
KV_BYTES = {**{p: ELEMENT_BYTES[p] for p in ("bf16", "fp16", "fp8", "int8")}, "int4": four_bit_bytes(KV_GROUP_SIZE)}
#: Tensor-core dtype the GEMMs run in, by serving weight precision (W4A16 dequantizes to fp16).
GEMM_DTYPE = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "int8", "w4a16": "fp16", "fp4": "fp4"}


#: A GEMM dtype whose efficiency scale no profile states yet takes that of the next wider format:
#: a prior (narrower formats reach a smaller fraction of their peak), not a fit; no FP4
#: measurement is in the ledgers yet.
SCALE_FALLBACK = {"fp4": "fp8"}


def dtype_scale(scales: dict[str, float], dtype: str) -> float:
    """The profile's efficiency scale for GEMMs in ``dtype`` (1 where neither it nor its
    :data:`SCALE_FALLBACK` is stated)."""
    while dtype not in scales and dtype in SCALE_FALLBACK:
        dtype = SCALE_FALLBACK[dtype]
    return scales.get(dtype, 1.0)


def weight_bytes(precision: str, group_size: int = WEIGHT_GROUP_SIZE, zero_point: bool = False) -> float:
    """Bytes per stored weight element of a serving weight precision; W4A16 adds its group scales
    (AWQ and GPTQ: groups of 128, symmetric; ZeRO-Inference: 64 with a minimum)."""
    if precision == "w4a16":
        return four_bit_bytes(group_size, zero_point)
    return ELEMENT_BYTES[GEMM_DTYPE[precision]]


def gemm_operand_bytes(precision: str) -> float:
    """Bytes per GEMM operand element of a serving weight precision: W8A8 and W4A4 (NVFP4) formats
    read their own narrow operands, every other GEMM runs on 16-bit operands (W4A16 dequantizes
    its weights first)."""
    return ELEMENT_BYTES[precision] if precision in ("fp8", "int8", "fp4") else ELEMENT_BYTES["fp16"]


@dataclass(frozen=True)
class PrecisionBytes:
    """Bytes per element of each kind of tensor under one training precision."""

    weight: float  # parameters as the forward pass reads them
    grad: float  # gradient buffer
    activation: float  # activations kept for backward and sent between GPUs
    gemm_operand: float  # GEMM inputs as the kernels read them
    master_copy: bool  # optimizer keeps fp32 master weights beside the weights


def _mixed(half: str, grad: str, operand: str) -> PrecisionBytes:
    e = ELEMENT_BYTES
    return PrecisionBytes(weight=e[half], grad=e[grad], activation=e[half], gemm_operand=e[operand], master_copy=True)


def _full(fmt: str) -> PrecisionBytes:
    w = ELEMENT_BYTES[fmt]
    return PrecisionBytes(weight=w, grad=w, activation=w, gemm_operand=w, master_copy=False)


#: Training precisions (see the module docstring).
PRECISION_BYTES = {
    "bf16": _mixed("bf16", "fp32", "bf16"),
    "fp16": _mixed("fp16", "fp16", "fp16"),
    "fp8": _mixed("bf16", "fp32", "fp8"),
    "tf32": _full("tf32"),
    "fp32": _full("fp32"),
}


def precision_bytes(precision: str) -> PrecisionBytes:
    return PRECISION_BYTES[precision]


def attention_dtype(precision: str) -> str:
    """The dtype training attention runs in: FP8 training keeps attention in bf16 (Transformer
    Engine's FP8 recipe covers the linear layers)."""
    return "bf16" if precision == "fp8" else precision
