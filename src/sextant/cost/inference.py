"""Forward-only iterations of a dense decoder for inference: prefill and decode.

Prefill runs the training forward pass over the prompt (GEMMs on ``batch * prompt`` rows, causal
attention over the prompt), then the output projection for the last position of each sequence.
Decode runs one token per sequence: every GEMM has ``batch`` rows, so reading the weights bounds
it (the roofline of :func:`gemm_time`), and attention reads each sequence's whole KV cache:
``max(FLOPs / attention peak, KV bytes / bandwidth)`` (the memory-bound regime analysed in
Pope et al. 2022, "Efficiently Scaling Transformer Inference", section 2). KV-cache sizes follow
the model's key/value heads (GQA) and head dimensions.

Host overhead: an iteration issues ``layers`` decoder layers; the profile's ``layer_overhead_s``
is the host time per layer. A GPU runs the kernels while the host issues the next ones, so the
iteration takes at least the host time (the ``host_overhead`` part is what the host adds beyond
the device's work); a CPU device is the host and pays both in turn.
"""

from __future__ import annotations

import numpy as np

from sextant.cost.compute import memory_bound_time
from sextant.cost.layer import Device, dense_layer_cost, device_gemm, embedding_cost
from sextant.cost.params import attention_qk_dim, attention_v_dim
from sextant.spec.model import ModelSpec


def kv_cache_bytes_per_token(model: ModelSpec, kv_bytes: float) -> float:
    """Bytes of keys and values one token keeps across all layers."""
    heads = model.num_kv_heads
    return model.num_layers * heads * (attention_qk_dim(model) + attention_v_dim(model)) * kv_bytes


def prefill_time(model: ModelSpec, dev: Device, batch, prompt) -> dict[str, np.ndarray]:
    """Seconds of one prefill iteration over ``batch`` prompts of ``prompt`` tokens, by kind."""
    layer = dense_layer_cost(model, batch, prompt, prompt, 1, False, dev, flash=True, dropout=False)
    emb, _ = embedding_cost(model, batch, prompt, dev)
    logits = device_gemm(np.asarray(batch, float), model.vocab_size, model.hidden_size, dev)
    n = model.num_layers
    return _with_host_overhead(model, dev, {"gemm": n * layer.fwd.gemm + logits, "attention": n * layer.fwd.attention,
                                            "elementwise": n * layer.fwd.elementwise + emb})


def _with_host_overhead(model: ModelSpec, dev: Device, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    host = model.num_layers * dev.profile.layer_overhead_s
    device_time = sum(parts.values())
    parts["host_overhead"] = (np.full_like(device_time, host) if dev.host_synchronous
                              else np.maximum(host - device_time, 0.0))
    return parts


def decode_time(model: ModelSpec, dev: Device, batch, context) -> dict[str, np.ndarray]:
    """Seconds of one decode iteration: ``batch`` sequences, each attending to ``context`` tokens
    (its cache plus the new token)."""
    b = np.asarray(batch, float)
    ctx = np.asarray(context, float)
    layer = dense_layer_cost(model, b, 1, 1, 1, False, dev, flash=True, dropout=False)
    a, g = model.num_heads, model.num_kv_heads
    dqk, dv = attention_qk_dim(model), attention_v_dim(model)
    flops = 2.0 * b * a * ctx * (dqk + dv)
    kv_read = b * ctx * g * (dqk + dv) * dev.act_bytes
    p = dev.profile
    attention = np.maximum(flops / (dev.attention_peak * p.flash_attention_efficiency),
                           kv_read / (dev.mem_bw * p.memory_bw_efficiency)) + p.kernel_overhead_s
    # The new keys and values are written into the cache.
    cache_write = memory_bound_time(b * g * (dqk + dv) * dev.act_bytes, mem_bw=dev.mem_bw, profile=p)
    emb, _ = embedding_cost(model, b, 1, dev)
    logits = device_gemm(b, model.vocab_size, model.hidden_size, dev)
    n = model.num_layers
    return _with_host_overhead(model, dev, {"gemm": n * layer.fwd.gemm + logits,
                                            "attention": n * (attention + cache_write),
                                            "elementwise": n * layer.fwd.elementwise + emb})
