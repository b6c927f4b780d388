"""Serving iterations whose weights or KV cache live below the GPU: what each iteration streams
over the host link, what the CPU computes beside the GPU, and how the three overlap.

**Weights streamed per layer** (ZeRO-Inference, Aminabadi et al. SC22, "DeepSpeed-Inference",
section VI; the DeepSpeed blog "ZeRO-Inference: Democratizing massive model inference", 2022;
FlexGen, Sheng et al. ICML 2023). Every iteration (one forward pass over the batch) brings each
offloaded layer's weights to the GPU once, from host DRAM over the host link or from NVMe through
host bounce buffers (the slower of the two stages binds), while the GPU computes the layer before
(layer prefetching). Only the first layer's fetch cannot hide. A dense layer's fetch costs the
same whatever the batch; what the batch buys is compute per fetched byte, which is why these
systems spend GPU memory on batch rather than on resident weights (the blog's full- versus
partial-offload comparison).

**Experts streamed on demand** (Eliseev and Mazur 2023, "Fast Inference of Mixture-of-Experts
Language Models with Offloading"; HybriMoE, Zhong et al. 2025; MoE-Lens, 2025). Only the routed
experts some token picked are fetched, and a GPU cache of each layer's most popular experts
serves the rest. With per-token routing probabilities ``q_e`` over a layer's experts and top-k
routing, a batch of ``T`` tokens touches expert ``e`` with probability ``1 - (1 - k q_e)^T``; the
expected experts fetched per layer are that sum over the uncached ones, and the cache hit rate is
the routing mass of the cached ones. The distribution is uniform, Zipf, or counted from a routing
trace (a CSV of ``layer, expert`` choices).

**KV cache in host memory, attention on the CPU** (FlexGen section 4.2: computing attention where
the cache lives moves only the activations; MoE-Lens runs CPU attention beside the GPU's
GEMMs). Decode attention then reads the cache at the host's DRAM bandwidth, or is bound by the
CPU's vector peak (the CPU priced as a device, ``sextant.cost.host_compute``); new keys and values go to the host over the link. Or the attention stays on
the GPU and the whole cache crosses the link every decode iteration (FlexGen without its CPU
delegation, which it turns off when it compresses the cache; its cost model's ``ctog`` term).

**Three tiers** (FlexGen's placement, section 4.2 and appendix A.3): a share of the streamed
weights, and possibly the KV cache, live on NVMe. They are read into host memory and on, so the
drives' busy time per iteration is their share of the weights at the read rate, plus, for a cache
on NVMe, the whole cache read back every decode iteration (``dtoc``) and each new token's keys and
values written (``ctod``); reads and writes share the volume.

**Overlap.** Per layer the GPU's work ``g``, the CPU's attention ``a`` and the fetch ``f`` of the
next layer run on three resources. Attention sits between the GPU's projections and its MLP, so
with one micro-batch the GPU and CPU take turns (``g + a``); split into ``m`` micro-batches, one
micro-batch's attention overlaps another's GEMMs (FlexGen's GPU batches), a two-stage pipeline
taking ``max(g, a) + min(g, a) / m``. The fetch overlaps both. Layers being alike, an iteration
is ``max(G + ..., F, W, D) + max(F, D) / L`` over the whole model's sums: ``G`` GPU, ``A`` CPU,
``F`` host-to-GPU transfers, ``W`` KV written to the host, ``D`` the drives (FlexGen's cost model
takes the same maximum over its five terms, assuming perfect overlap). Micro-batches are taken
to cost no GEMM efficiency.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sextant.errors import SpecError
from sextant.files import read_user_text


@dataclass(frozen=True)
class Streaming:
    """Per-iteration streaming and CPU costs of one serving instance (seconds, per GPU)."""

    layers: int
    micro_batches: int
    dense_fetch_s: float  # host-link seconds of the weights every iteration streams, whatever the batch
    expert_fetch_s: float  # host-link seconds of one (layer, expert) pair's weights
    miss_tokens: np.ndarray  # grid of token counts ...
    miss_experts: np.ndarray  # ... and the expected (layer, expert) pairs fetched at each
    cpu_per_context_s: float  # CPU attention per (sequence, cached token) pair, all layers; 0: GPU
    kv_to_host_per_token_s: float  # writing one new token's keys and values to the host; 0: GPU
    kv_from_host_per_token_s: float  # reading one cached token's keys and values back (prefill chunks)
    expert_hit_rate: float  # routing mass the GPU's expert cache serves (1 with no expert streaming)
    #: Drive seconds per host-link second of weight fetch (the NVMe share of the weights, read at
    #: the drives' rate through host bounce buffers); 0 when every streamed weight is in DRAM.
    weight_nvme_per_link_s: float = 0.0
    #: The cache off the GPU, attention on it: one cached token's keys and values over the link,
    #: every decode iteration.
    kv_link_per_context_s: float = 0.0
    #: The cache on NVMe: one cached token read from the drives, and one new token written.
    kv_nvme_per_context_s: float = 0.0
    kv_nvme_write_per_token_s: float = 0.0

    @functools.cached_property
    def _log_miss_tokens(self) -> np.ndarray:
        return np.log(self.miss_tokens)

    def fetch_s(self, tokens) -> np.ndarray:
        """Seconds of host-link transfer of the weights an iteration over ``tokens`` tokens needs."""
        t = np.asarray(tokens, float)
        if self.expert_fetch_s == 0.0:
            return np.full_like(t, self.dense_fetch_s)
        misses = np.interp(np.log(np.maximum(t, 1.0)), self._log_miss_tokens, self.miss_experts)
        return self.dense_fetch_s + self.expert_fetch_s * np.where(t > 0, misses, 0.0)

    def iteration_s(self, gpu_s, cpu_s, transfers: tuple, first_s, top=max, bottom=min):
        """Seconds of one iteration from each resource's total work: the GPU and CPU in turn or
        pipelined over the micro-batches, every transfer overlapping them, and ``first_s`` (the
        first layer's transfers) before anything can start (see the module docstring). Floats
        with the builtin ``max``/``min``, or arrays (one entry per iteration of a decode run)
        with ``np.maximum``/``np.minimum``."""
        compute = top(gpu_s, cpu_s) + bottom(gpu_s, cpu_s) / self.micro_batches
        for t in transfers:
            compute = top(compute, t)
        return compute + first_s

    def iteration(self, gpu_s, cpu_s, tokens: int, decode_context, new_tokens: int,
                  cached_prefill_tokens: float, top=max, bottom=min) -> tuple:
        """(seconds, busy seconds per resource) of one iteration over ``tokens`` tokens whose
        decode sequences hold ``decode_context`` cached tokens in all, writing ``new_tokens``
        tokens' keys and values and reading ``cached_prefill_tokens`` back for prefill chunks.
        ``gpu_s``, ``cpu_s`` and ``decode_context`` may be arrays over the iterations of a decode
        run (``top``/``bottom`` then ``np.maximum``/``np.minimum``)."""
        # Dense weights cost the same whatever the batch: no array for them, once per iteration.
        weights = self.dense_fetch_s if self.expert_fetch_s == 0.0 else float(self.fetch_s(tokens))
        link = (weights + self.kv_link_per_context_s * decode_context
                + self.kv_from_host_per_token_s * cached_prefill_tokens)
        nvme = (weights * self.weight_nvme_per_link_s
                + self.kv_nvme_per_context_s * (decode_context + cached_prefill_tokens)
                + self.kv_nvme_write_per_token_s * new_tokens)
        to_host = self.kv_to_host_per_token_s * new_tokens
        device = self.iteration_s(gpu_s, cpu_s, (link, to_host, nvme), top(link, nvme) / self.layers, top, bottom)
        return device, {"gpu": gpu_s, "host_to_gpu": link, "nvme": nvme, "gpu_to_host": to_host, "cpu": cpu_s}


def expert_popularity(kind: str, experts: int, exponent: float = 1.0) -> np.ndarray:
    """Per-token routing shares of one layer's experts, most popular first: uniform, or Zipf
    (share of the i-th most popular proportional to i^-exponent)."""
    if kind == "uniform":
        return np.full(experts, 1.0 / experts)
    if kind == "zipf":
        w = np.arange(1, experts + 1, dtype=float) ** -exponent
        return w / w.sum()
    raise SpecError(f"unknown expert popularity {kind!r}; use uniform or zipf", field="expert_popularity")


def trace_popularity(path: str | Path, moe_layers: int, experts: int) -> np.ndarray:
    """Routing shares per MoE layer (rows) counted from a CSV of ``layer, expert`` choices (one row
    per token and choice; ``layer`` numbers the MoE layers from 0). Layers the trace lacks take the
    mean of the traced layers' sorted shares, which is all a most-popular cache depends on.

    Counted once per file version (its path, size and modification time): ``plan serve`` predicts
    hundreds of placements under one trace. The array is read-only."""
    try:
        stat = Path(path).stat()
    except OSError:
        raise SpecError(f"no such routing trace {path}", field="routing_trace") from None
    return _count_trace(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, moe_layers, experts)


@functools.lru_cache(maxsize=8)
def _count_trace(path: str, size: int, mtime_ns: int, moe_layers: int, experts: int) -> np.ndarray:
    text = read_user_text(path, field="routing_trace", kind="routing trace")
    try:
        rows = [(int(r["layer"]), int(r["expert"])) for r in csv.DictReader(text.splitlines())]
    except (KeyError, ValueError, TypeError):
        raise SpecError(f"routing trace {path} needs integer columns layer, expert", field="routing_trace") from None
    if not rows:
        raise SpecError(f"routing trace {path} has no rows", field="routing_trace")
    arr = np.asarray(rows)
    if arr[:, 0].min() < 0 or arr[:, 0].max() >= moe_layers or arr[:, 1].min() < 0 or arr[:, 1].max() >= experts:
        raise SpecError(f"routing trace {path}: layers must lie in 0..{moe_layers - 1} and experts in "
                        f"0..{experts - 1}", field="routing_trace")
    counts = np.zeros((moe_layers, experts))
    np.add.at(counts, (arr[:, 0], arr[:, 1]), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    seen = totals[:, 0] > 0
    shares = np.sort(np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0), axis=1)[:, ::-1]
    shares[~seen] = shares[seen].mean(axis=0)
    shares.setflags(write=False)
    return shares


def expected_misses(shares: np.ndarray, top_k: int, cached: int, tokens: np.ndarray) -> np.ndarray:
    """Expected (layer, expert) pairs fetched per iteration of ``tokens`` tokens, summed over the
    layers of ``shares`` (rows sorted most popular first), when each layer caches its ``cached``
    most popular experts: sum over uncached ``e`` of ``1 - (1 - min(1, k q_e))^T``."""
    shares = np.atleast_2d(shares)
    p = np.minimum(1.0, top_k * shares[:, cached:]).ravel()
    if p.size == 0:
        return np.zeros_like(np.asarray(tokens, float))
    t = np.asarray(tokens, float)[:, None]
    return (1.0 - (1.0 - p[None, :]) ** t).sum(axis=1)


def hit_rate(shares: np.ndarray, cached: int) -> float:
    """Routing mass a cache of each layer's ``cached`` most popular experts serves."""
    shares = np.atleast_2d(shares)
    return float(shares[:, :cached].sum(axis=1).mean())


def miss_grid(shares: np.ndarray, top_k: int, cached: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`expected_misses` on a logarithmic grid up to ``max_tokens`` (smooth and monotone in
    the token count, so :meth:`Streaming.fetch_s` interpolates it)."""
    grid = np.unique(np.round(np.geomspace(1, max(max_tokens, 2), 256)))
    return grid, expected_misses(shares, top_k, cached, grid)
