"""Forward-only iterations of a decoder for inference: prefill, decode and mixed batches.

One *iteration* of a serving engine runs the model once over a set of sequences: some decode one
token each (they attend to their whole KV cache), some prefill a chunk of their prompt (they
attend to the chunk and to what is already cached). The work splits into

- **token work**, which depends only on how many tokens the iteration runs: every weight GEMM
  (rows = tokens), the element-wise kernels, the tensor-parallel all-reduces and the
  expert-parallel all-to-alls; plus the output projection, whose rows are the sequences that
  produce a token;
- **decode attention**, linear in the total context the decoding sequences attend to:
  ``max(FLOPs / attention peak, KV bytes / bandwidth)``, the memory-bound regime analysed in
  Pope et al. 2022, "Efficiently Scaling Transformer Inference", section 2;
- **prefill attention**, per sequence chunk: causal FlashAttention over ``new`` queries and
  ``cached + new`` keys, at most as fast as reading the cached keys and values.

Splitting it this way lets the serving simulator tabulate token work once per token count and
sum attention per sequence, while :func:`prefill_time` and :func:`decode_time` below are the same
functions applied to a uniform batch (a test holds the simulator to them).

Layout: tensor parallelism ``tp`` splits heads and MLP columns as in Megatron-LM (Shoeybi et al.
2019, section 3), with one all-reduce after attention and one after the MLP (one per layer for
parallel-attention blocks such as GPT-J and Falcon, which sum both branches first); KV heads are
split over ``tp`` and replicated where there are fewer than ``tp`` of them (vLLM, TensorRT-LLM).
MLA caches the compressed latent and the rotary key (DeepSeek-V2, section 2.1.2), replicated on
every TP rank, and decodes with the projections absorbed into the query. Expert parallelism
``ep`` spreads the routed experts over that many ranks with an all-to-all to dispatch and one to
combine tokens (GShard). Pipeline parallelism runs the layers in ``pp`` stages with a
point-to-point send between them; times below are for the whole model (all stages in turn).

Weights may be quantized: the GEMMs read ``Device.weight_bytes`` per weight element and run at the peak
of ``Device.gemm_peak`` (FP8 and INT8 W8A8 use the 8-bit tensor-core peak); weight-only INT4
(W4A16, as AWQ/Marlin kernels) runs the math in 16 bits and dequantizes each weight once per
64-row tile of activations on the vector units (Frantar et al. 2024, "MARLIN"). The embedding and
the output projection stay in 16 bits (TensorRT-LLM and AutoAWQ exclude the LM head).

Host overhead: an iteration issues ``layers`` decoder layers; the profile's ``layer_overhead_s``
is the host time per layer (eager PyTorch; 0 where the engine replays CUDA graphs). A GPU runs
the kernels while the host issues the next ones, so the iteration takes at least the host time
(the ``host_overhead`` part is what the host adds beyond the device's work); a CPU device is the
host and pays both in turn. A serving engine's own per-iteration work (scheduling, sampling,
detokenization) is the ``iteration_overhead_s`` of the layout, added to every iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.cost import comm
from sextant.cost.compute import memory_bound_time
from sextant.cost.layer import (
    CAUSAL_FRACTION,
    Device,
    _attention_projections,
    _mlp_gemms,
    device_gemm,
    elementwise_bytes,
    grouped_gemm,
    mlp_matmuls,
)
from sextant.cost.params import attention_qk_dim, attention_v_dim, count_params
from sextant.spec.model import ModelSpec

#: Bytes per element of the embedding, output projection and norms, which stay in 16 bits.
UNQUANTIZED_BYTES = 2.0


@dataclass(frozen=True)
class Layout:
    """One model replica as the GPUs of one serving instance hold it."""

    dev: Device  # per GPU: GEMM peak and operand width of the precision, quantized weight width
    tp: int = 1
    pp: int = 1
    ep: int = 1
    kv_bytes: float = 2.0  # bytes per cached key/value element
    fabric: comm.Fabric | None = None  # None: one GPU, no collectives
    gpus_per_node: int = 8
    #: The serving engine's own work per iteration (scheduling, sampling, detokenization).
    iteration_overhead_s: float = 0.0
    #: Device for the output projection, which stays in 16 bits; None: ``dev``.
    head_dev: Device | None = None
    #: Decode attention reads each KV head once per query-head group (False: once per query head).
    grouped_kv_reads: bool = True

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def weight_bytes(self) -> float:
        return self.dev.gemm_bytes if self.dev.weight_bytes is None else self.dev.weight_bytes


def speculative_tokens_per_step(acceptance_rate: float, proposed: int) -> float:
    """Expected tokens a speculative decoding step yields per sequence when a draft proposes
    ``proposed`` tokens, each accepted with probability ``acceptance_rate``, and the verifying
    pass adds one of its own: (1 - a^(k+1)) / (1 - a) (Leviathan et al., ICML 2023, eq. 1)."""
    a, k = acceptance_rate, proposed
    return (1 - a ** (k + 1)) / (1 - a)


def single_device(dev: Device) -> Layout:
    """A one-GPU layout whose weights, activations and KV cache use the device's own widths."""
    return Layout(dev=dev, kv_bytes=dev.act_bytes)


def kv_heads_per_gpu(model: ModelSpec, tp: int) -> float:
    """KV heads one tensor-parallel rank caches (replicated when fewer than ``tp``)."""
    return max(model.num_kv_heads / tp, 1.0)


def kv_elements_per_token_layer(model: ModelSpec, tp: int = 1) -> float:
    """Cached elements per token and layer on one TP rank: K and V heads, or MLA's latent."""
    if model.mla is not None:
        return float(model.mla.kv_lora_rank + model.mla.qk_rope_head_dim)
    return kv_heads_per_gpu(model, tp) * (attention_qk_dim(model) + attention_v_dim(model))


def kv_cache_bytes_per_token(model: ModelSpec, kv_bytes: float, tp: int = 1) -> float:
    """Bytes of keys and values one token keeps across all layers, on one TP rank."""
    return model.num_layers * kv_elements_per_token_layer(model, tp) * kv_bytes


def attention_flops_per_pair(model: ModelSpec, tp: int = 1) -> float:
    """FLOPs per (query, key) pair in one layer on one TP rank: QK^T and PV."""
    heads = model.num_heads / tp
    if model.mla is not None:
        # Absorbed MLA: scores over the latent + rotary dims, values in the latent space.
        m = model.mla
        return 2.0 * heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim)
    return 2.0 * heads * (attention_qk_dim(model) + attention_v_dim(model))


def weight_bytes_per_gpu(model: ModelSpec, lay: Layout) -> float:
    """Weights one GPU holds: the decoder's linear layers at the quantized width, the embedding,
    output projection and norms in 16 bits; all split over ``tp`` and ``pp``. Routed experts are
    spread over ``ep`` ranks inside the tp group with their FFN split over the other tp/ep, so
    they too divide by ``tp``."""
    c = count_params(model)
    norms = (c.num_dense_layers + c.num_moe_layers) * c.norms_layer + c.final_norm
    experts = c.expert_params
    linear = c.layers_total - experts - (c.num_dense_layers + c.num_moe_layers) * c.norms_layer
    quantized = (linear + experts) * lay.weight_bytes
    return (quantized + (c.embeddings + norms) * UNQUANTIZED_BYTES) / (lay.tp * lay.pp)


def expected_experts_touched(experts: float, top_k: int, tokens) -> np.ndarray:
    """Expected distinct experts that ``tokens`` tokens route to when each picks ``top_k`` of
    ``experts`` uniformly at random: E (1 - (1 - k/E)^T)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** np.asarray(tokens, float))


def _moe_time(model: ModelSpec, lay: Layout, tokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(GEMM, element-wise, communication) seconds of one MoE layer's feed-forward part.

    Each of the ``ep`` ranks holds E/ep experts (their FFN split over the remaining tp/ep) and
    receives T k / ep token-expert pairs; only the experts some token picked are read, which is
    what makes small decode batches cheaper than the whole expert set. The experts of a layer run
    as one grouped GEMM per projection (vLLM's and SGLang's fused_moe Triton kernel, TensorRT-LLM's
    CUTLASS MoE GEMM), so a layer launches each projection once, not once per expert.
    """
    moe = model.moe
    assert moe is not None
    dev, ep, h = lay.dev, lay.ep, model.hidden_size
    ffn_split = max(lay.tp // ep, 1)
    local = moe.num_experts / ep
    pairs = tokens * moe.top_k / ep
    touched = np.clip(expected_experts_touched(moe.num_experts, moe.top_k, tokens) / ep, 1e-9, local)
    router = device_gemm(tokens, moe.num_experts, h, dev)
    experts = sum(grouped_gemm(pairs, touched, n, k, dev)
                  for k, n in mlp_matmuls(model, moe.expert_ffn_hidden_size, ffn_split))
    shared = 0.0
    if moe.num_shared_experts:
        shared, _ = _mlp_gemms(model, tokens, moe.shared_expert_ffn_hidden_size * moe.num_shared_experts, lay.tp, dev)
    # Permutation to experts and back: read + write the routed activations twice.
    permute = memory_bound_time(2 * 2 * dev.act_bytes * pairs * h, mem_bw=dev.mem_bw, profile=dev.profile, kernels=4)
    a2a = np.zeros_like(tokens)
    if lay.fabric is not None and ep > 1:
        a2a = 2 * comm.all_to_all(dev.act_bytes * pairs * h, ep, min(ep, lay.gpus_per_node), lay.fabric)
    return router + experts + shared, permute, a2a


def token_time(model: ModelSpec, lay: Layout, tokens, sequences) -> dict[str, np.ndarray]:
    """Seconds of the work that depends only on the number of tokens in an iteration, all
    layers: weight GEMMs over ``tokens`` rows, element-wise kernels, TP all-reduces and EP
    all-to-alls, pipeline sends, the embedding; and the output projection over ``sequences``
    rows (one sampled token each; see :func:`output_head_time`)."""
    dev, t = lay.dev, lay.tp
    tokens = np.asarray(tokens, float)
    sequences = np.asarray(sequences, float)
    h, p = model.hidden_size, dev.profile
    proj, _ = _attention_projections(model, tokens, t, dev)
    ew_bytes, kernels = elementwise_bytes(model, tokens, t, False, ffn_local=model.ffn_hidden_size / t,
                                          dropout=False, act_bytes=dev.act_bytes)
    ew = memory_bound_time(ew_bytes, mem_bw=dev.mem_bw, profile=p, kernels=kernels)
    act = dev.act_bytes * tokens * h
    tp_comm = np.zeros_like(tokens)
    if lay.fabric is not None and t > 1:
        reduces = 1 if model.parallel_attention else 2
        tp_comm = reduces * comm.all_reduce(act, t, min(t, lay.gpus_per_node), lay.fabric)
    n_dense, n_moe = model.num_dense_layers, model.num_moe_layers
    gemm = model.num_layers * proj
    if n_dense:
        gemm = gemm + n_dense * _mlp_gemms(model, tokens, model.ffn_hidden_size, t, dev)[0]
    elementwise = model.num_layers * ew
    communication = model.num_layers * tp_comm
    if n_moe:
        moe_gemm, moe_ew, moe_comm = _moe_time(model, lay, tokens)
        gemm = gemm + n_moe * moe_gemm
        elementwise = elementwise + n_moe * moe_ew
        communication = communication + n_moe * moe_comm
    # Embedding gather; the output projection in 16 bits over one row per sequence.
    elementwise = elementwise + memory_bound_time(2 * dev.act_bytes * tokens * h, mem_bw=dev.mem_bw, profile=p)
    gemm = gemm + output_head_time(model, lay, sequences)
    if lay.fabric is not None and lay.pp > 1:
        crosses = lay.tp * lay.pp > lay.gpus_per_node
        communication = communication + (lay.pp - 1) * comm.p2p(act / t, crosses, lay.fabric)
    return {"gemm": gemm, "elementwise": elementwise, "communication": communication}


def output_head_time(model: ModelSpec, lay: Layout, sequences) -> np.ndarray:
    """Seconds of the 16-bit output projection over one row per sequence that samples a token."""
    seqs = np.asarray(sequences, float)
    t = device_gemm(np.maximum(seqs, 1.0), model.vocab_size / lay.tp, model.hidden_size, lay.head_dev or lay.dev)
    return np.where(seqs > 0, t, 0.0)


@dataclass(frozen=True)
class AttentionRates:
    """Seconds per unit of attention work over all layers, for one layout: what the decode and
    prefill attention times are made of, and what the serving simulator sums per iteration."""

    pair_s: float  # per causal (query, key) pair, at the profile's fused-attention efficiency
    kv_read_s: float  # per cached token whose keys and values are read
    write_s: float  # per new token whose keys and values are written into the cache
    launch_s: float  # one batched attention pass: the attention kernel and the cache write

    def decode(self, sequences, context_tokens):
        """Decode attention of ``sequences`` sequences over ``context_tokens`` keys in total."""
        return max(self.pair_s, self.kv_read_s) * context_tokens + self.write_s * sequences

    def prefill(self, new_tokens, cached_tokens=0.0, efficiency_ratio=1.0):
        """Causal attention of a chunk of ``new_tokens`` queries over ``cached_tokens`` cached
        keys and the chunk itself (FlashAttention skips masked blocks: query i of the chunk sees
        cached + i keys, the training lowering's CAUSAL_FRACTION over a whole sequence);
        ``efficiency_ratio`` scales the attention efficiency (a measured table at this length)."""
        pairs = new_tokens * cached_tokens + CAUSAL_FRACTION * new_tokens * new_tokens
        return (np.maximum(self.pair_s / efficiency_ratio * pairs, self.kv_read_s * cached_tokens)
                + self.write_s * new_tokens)


def attention_rates(model: ModelSpec, lay: Layout) -> AttentionRates:
    dev = lay.dev
    p = dev.profile
    per_token_bytes = kv_elements_per_token_layer(model, lay.tp) * lay.kv_bytes
    bw = dev.mem_bw * p.memory_bw_efficiency
    n = model.num_layers
    reads = 1.0 if lay.grouped_kv_reads or model.mla is not None else (
        (model.num_heads / lay.tp) / kv_heads_per_gpu(model, lay.tp))
    return AttentionRates(
        pair_s=n * attention_flops_per_pair(model, lay.tp) / (dev.attention_peak * p.flash_attention_efficiency),
        kv_read_s=n * per_token_bytes * reads / bw,
        write_s=n * per_token_bytes / bw,
        launch_s=n * 2 * p.kernel_overhead_s,
    )


def attention_launch_time(model: ModelSpec, lay: Layout) -> float:
    """Fixed seconds of one batched attention pass (attention kernel + cache write, all layers)."""
    return attention_rates(model, lay).launch_s


def decode_attention_time(model: ModelSpec, lay: Layout, sequences, context_tokens) -> np.ndarray:
    """Seconds of decode attention (without launches) for ``sequences`` sequences attending to
    ``context_tokens`` keys in total (each its cache plus the new token), all layers, including
    writing the new keys and values into the cache: ``max(FLOPs / attention peak, KV bytes /
    bandwidth)``."""
    return np.asarray(attention_rates(model, lay).decode(np.asarray(sequences, float),
                                                         np.asarray(context_tokens, float)))


def attention_efficiency_ratio(model: ModelSpec, lay: Layout, seq) -> np.ndarray:
    """A measured attention table's efficiency at ``seq`` keys over the profile's scalar one."""
    dev = lay.dev
    if dev.attention_table is None:
        return np.ones_like(np.asarray(seq, float))
    eff = dev.attention_table.interpolate(np.maximum(np.asarray(seq, float), 1.0), attention_qk_dim(model))
    return eff / dev.profile.flash_attention_efficiency


def prefill_attention_time(model: ModelSpec, lay: Layout, new_tokens, cached_tokens=0.0) -> np.ndarray:
    """Seconds of causal attention (without launches) for one sequence chunk of ``new_tokens``
    queries over ``cached_tokens`` cached keys plus the chunk itself, all layers, including the
    cache write; at most as fast as reading the cached keys and values."""
    c = np.asarray(new_tokens, float)
    cached = np.asarray(cached_tokens, float)
    ratio = attention_efficiency_ratio(model, lay, cached + c)
    return np.asarray(attention_rates(model, lay).prefill(c, cached, ratio))


def host_overhead(model: ModelSpec, lay: Layout, device_time) -> np.ndarray:
    """Seconds the host adds to an iteration whose kernels take ``device_time``."""
    host = model.num_layers * lay.dev.profile.layer_overhead_s
    device_time = np.asarray(device_time, float)
    added = np.full_like(device_time, host) if lay.dev.host_synchronous else np.maximum(host - device_time, 0.0)
    return added + lay.iteration_overhead_s


def _with_host_overhead(model: ModelSpec, lay: Layout, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    parts["host_overhead"] = host_overhead(model, lay, sum(parts.values()))
    return parts


def _layout(dev: Device | Layout) -> Layout:
    return dev if isinstance(dev, Layout) else single_device(dev)


def prefill_time(model: ModelSpec, dev: Device | Layout, batch, prompt) -> dict[str, np.ndarray]:
    """Seconds of one prefill iteration over ``batch`` prompts of ``prompt`` tokens, by kind."""
    lay = _layout(dev)
    b = np.asarray(batch, float)
    parts = token_time(model, lay, b * prompt, b)
    parts["attention"] = b * prefill_attention_time(model, lay, prompt) + attention_launch_time(model, lay)
    return _with_host_overhead(model, lay, parts)


def decode_time(model: ModelSpec, dev: Device | Layout, batch, context) -> dict[str, np.ndarray]:
    """Seconds of one decode iteration: ``batch`` sequences, each attending to ``context`` tokens
    (its cache plus the new token)."""
    lay = _layout(dev)
    b = np.asarray(batch, float)
    parts = token_time(model, lay, b, b)
    parts["attention"] = (decode_attention_time(model, lay, b, b * np.asarray(context, float))
                          + attention_launch_time(model, lay))
    return _with_host_overhead(model, lay, parts)
