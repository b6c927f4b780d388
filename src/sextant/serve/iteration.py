"""The cost of one serving-engine iteration, tabulated from the shared cost functions of
:mod:`sextant.cost.inference`, and of its offloaded variant (:mod:`sextant.cost.streaming`)."""

from __future__ import annotations

import numpy as np

from sextant.cost.inference import (
    Layout,
    attention_efficiency_ratio,
    attention_rates,
    output_head_time,
    token_time,
)
from sextant.cost.streaming import Streaming
from sextant.spec.model import ModelSpec

#: Token counts are tabulated in blocks of this many, each the first time an iteration needs one:
#: a simulation touches few distinct counts (its decode batches and prompt chunks), and a
#: mixture-of-experts model's cost per count is not small.
TABLE_BLOCK = 256


class IterationCost:
    """Seconds of an iteration from its token count, sampled sequences and attention work, by
    part; built from the shared cost functions of :mod:`sextant.cost.inference` (tabulated)."""

    PARTS = ("gemm", "elementwise", "communication", "attention", "offload_wait", "host_overhead")
    #: Resources an offloaded iteration keeps busy (see :mod:`sextant.cost.streaming`).
    RESOURCES = ("gpu", "host_to_gpu", "nvme", "gpu_to_host", "cpu")

    def __init__(self, model: ModelSpec, lay: Layout, max_seqs: int,
                 stream: Streaming | None = None, on_host: bool = False) -> None:
        self.model, self.lay, self.stream = model, lay, stream
        #: (GEMM, element-wise, communication) seconds per token count, by block of TABLE_BLOCK.
        self._blocks: dict[int, list[tuple[float, float, float]]] = {}
        self._head = [0.0, *output_head_time(model, lay, np.arange(1, max(max_seqs, 1) + 1, dtype=float)).tolist()]
        rates = attention_rates(model, lay)
        self.rates = rates
        self.decode_per_ctx = max(rates.pair_s, rates.kv_read_s)
        self.write_s = rates.write_s
        self.launch_s = rates.launch_s
        p = lay.dev.profile
        self.host_s = model.num_layers * p.layer_overhead_s
        self.host_sync = lay.dev.host_synchronous
        #: The model runs on the host CPU beside a GPU draft (Dovetail's target): its work is the
        #: CPU's, the draft's the GPU's.
        self.on_host = on_host
        self.iteration_overhead_s = lay.iteration_overhead_s
        self.has_table = lay.dev.attention_table is not None

    def token_parts(self, tokens: int) -> tuple[float, float, float]:
        """(GEMM, element-wise, communication) seconds of an iteration over ``tokens`` tokens."""
        if tokens <= 0:
            return 0.0, 0.0, 0.0
        block, i = divmod(tokens - 1, TABLE_BLOCK)
        rows = self._blocks.get(block)
        if rows is None:
            counts = np.arange(block * TABLE_BLOCK + 1, (block + 1) * TABLE_BLOCK + 1, dtype=float)
            parts = token_time(self.model, self.lay, counts, 0.0)
            rows = list(zip(parts["gemm"].tolist(), parts["elementwise"].tolist(), parts["communication"].tolist()))
            self._blocks[block] = rows
        return rows[i]

    def head(self, sequences: int) -> float:
        if sequences < len(self._head):
            return self._head[sequences]
        return float(output_head_time(self.model, self.lay, float(sequences)))

    def efficiency_ratio(self, seq: float) -> float:
        return float(attention_efficiency_ratio(self.model, self.lay, seq)) if self.has_table else 1.0

    def prefill_attention(self, new: float, cached: float, ratio: float = 1.0) -> float:
        r = self.rates
        pairs = new * cached + 0.5 * new * new
        return max(r.pair_s / ratio * pairs, r.kv_read_s * cached) + r.write_s * new

    def host(self, device_s: float) -> float:
        added = self.host_s if self.host_sync else max(self.host_s - device_s, 0.0)
        return added + self.iteration_overhead_s

    def offloaded(self, gpu_s: float, tokens: int, decode_context: float, decode_seqs: int,
                  new_tokens: int, cached_prefill_tokens: float) -> tuple[float, float, dict[str, float]]:
        """(CPU attention seconds the GPU no longer does, iteration device seconds, busy seconds per
        resource) of an iteration whose weights or KV cache are streamed; ``gpu_s`` is the GPU work
        as if nothing were offloaded, its decode attention included."""
        st = self.stream
        assert st is not None
        moved = 0.0
        cpu = 0.0
        if st.cpu_per_context_s:
            moved = self.decode_per_ctx * decode_context + self.write_s * decode_seqs if decode_seqs else 0.0
            cpu = st.cpu_per_context_s * decode_context
        device, busy = st.iteration(gpu_s - moved, cpu, tokens, decode_context, new_tokens, cached_prefill_tokens)
        return moved, device, busy
