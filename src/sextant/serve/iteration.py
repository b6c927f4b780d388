"""The cost of one serving-engine iteration, tabulated from the shared cost functions of
:mod:`sextant.cost.inference`, and of its offloaded variant (:mod:`sextant.cost.streaming`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from sextant.cost.inference import (
    Layout,
    attention_efficiency_ratio,
    attention_rates,
    output_head_time,
    speculative_tokens_per_step,
    token_time,
)
from sextant.cost.streaming import Streaming
from sextant.serve.accounting import SecondsLog, added
from sextant.spec.model import ModelSpec

#: Decode runs of up to this many iterations are evaluated in plain Python (see
#: IterationCost.decode_run): below it, float arithmetic one iteration at a time costs less than
#: NumPy's per-call overhead (measured crossover on a 2-core cloud VM: 64-128 iterations).
PYTHON_RUN_MAX = 96
#: With a context table (see IterationCost._context_table) a run's iterations are a copy; past
#: this many, that is cheaper than plain Python.
TABLE_RUN_MIN = 16
#: Context tables are kept for batches of up to this many sequences, from this many contexts up
#: to that many (a few MB per batch size at most).
CONTEXT_TABLE_SEQS = 8
CONTEXT_TABLE_MIN, CONTEXT_TABLE_MAX = 1 << 12, 1 << 16
#: Token counts are tabulated in blocks of this many, each the first time an iteration needs one:
#: a simulation touches few distinct counts (its decode batches and prompt chunks), and a
#: mixture-of-experts model's cost per count is not small.
TABLE_BLOCK = 256
#: Token-work tables last built, shared by every IterationCost of the same model and layout:
#: ``plan serve`` builds an engine per candidate over a few layouts, and a table is a pure
#: function of the two, so sharing changes nothing but the time.
_TABLES: list[tuple[ModelSpec, Layout, dict]] = []
_TABLES_KEPT = 8


def _token_table(model: ModelSpec, lay: Layout) -> dict[int, list[tuple[float, float, float]]]:
    for m, layout, table in _TABLES:
        if (m is model or m == model) and layout == lay:
            return table
    table: dict[int, list[tuple[float, float, float]]] = {}
    _TABLES.insert(0, (model, lay, table))
    del _TABLES[_TABLES_KEPT:]
    return table


def cuda_graph_sizes(max_tokens: int) -> list[int]:
    """Batch sizes (tokens) an engine captures CUDA graphs for, up to ``max_tokens``: vLLM V1's
    default list, 1, 2, 4, then multiples of 8 below 256 and of 16 from 256 (vllm/config,
    ``cudagraph_capture_sizes``), ending at ``max_tokens`` itself."""
    sizes = [s for s in [1, 2, 4, *range(8, 256, 8), *range(256, max_tokens + 1, 16)] if s <= max_tokens]
    if not sizes or sizes[-1] != max_tokens:
        sizes.append(max_tokens)
    return sizes


def graph_padding(max_tokens: int) -> list[int]:
    """For each token count 0..max_tokens, the captured size its batch is padded to."""
    padded = [0] * (max_tokens + 1)
    low = 1
    for size in cuda_graph_sizes(max_tokens):
        padded[low:size + 1] = [size] * (size + 1 - low)
        low = size + 1
    return padded


def graphed(lay: Layout) -> Layout:
    """The layout as a replayed CUDA graph runs it: each kernel costs the profile's
    ``graph_kernel_overhead_s`` beyond its work instead of an eager launch."""
    profile = lay.dev.profile
    if profile.kernel_overhead_s == profile.graph_kernel_overhead_s:
        return lay
    dev = replace(lay.dev, profile=profile.model_copy(update={"kernel_overhead_s": profile.graph_kernel_overhead_s}))
    return replace(lay, dev=dev)


class IterationCost:
    """Seconds of an iteration from its token count, sampled sequences and attention work, by
    part; built from the shared cost functions of :mod:`sextant.cost.inference` (tabulated)."""

    PARTS = ("gemm", "elementwise", "communication", "attention", "offload_wait", "host_overhead")
    #: Resources an offloaded iteration keeps busy (see :mod:`sextant.cost.streaming`).
    RESOURCES = ("gpu", "host_to_gpu", "nvme", "gpu_to_host", "cpu")

    def __init__(self, model: ModelSpec, lay: Layout, max_seqs: int,  # noqa: PLR0913
                 stream: Streaming | None = None, on_host: bool = False,
                 speculation: Speculation | None = None, graph_max_tokens: int = 0) -> None:
        self.model, self.lay, self.stream = model, lay, stream
        #: Speculative decoding: a draft proposes tokens for this model to verify.
        self.speculation = speculation
        #: (GEMM, element-wise, communication) seconds per token count, by block of TABLE_BLOCK.
        self._blocks = _token_table(model, lay)
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
        #: Per batch size, the parts of a decode-only iteration that do not depend on its context.
        self._lines: dict[int, DecodeLine] = {}
        #: Per small batch size, its plain decode-only iterations at each total context.
        self._context_tables: dict[int, np.ndarray] = {}
        self.has_table = lay.dev.attention_table is not None
        #: CUDA graphs: iterations of up to ``graph_max_tokens`` tokens run their GEMMs and
        #: element-wise kernels from a captured graph, padded to a captured size; decode-only ones
        #: their attention too. Speculative and host-run models stay eager.
        self.graph_max_tokens = graph_max_tokens if speculation is None and not on_host else 0
        if self.graph_max_tokens:
            glay = graphed(lay)
            self._graph_lay = glay
            self._graph_blocks = _token_table(model, glay)
            self._graph_pad = graph_padding(self.graph_max_tokens)
            self.graph_launch_s = attention_rates(model, glay).launch_s

    def token_parts(self, tokens: int) -> tuple[float, float, float]:
        """(GEMM, element-wise, communication) seconds of an iteration over ``tokens`` tokens;
        from a CUDA graph of the padded size where one is captured."""
        if tokens <= 0:
            return 0.0, 0.0, 0.0
        if tokens <= self.graph_max_tokens:
            blocks, lay, tokens = self._graph_blocks, self._graph_lay, self._graph_pad[tokens]
        else:
            blocks, lay = self._blocks, self.lay
        block, i = divmod(tokens - 1, TABLE_BLOCK)
        rows = blocks.get(block)
        if rows is None:
            rows = _tabulate(blocks, self.model, lay, block)
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

    def host(self, device_s, top=max, graphed: bool = False):
        """Host seconds an iteration adds to ``device_s`` (a float, or an array with ``np.maximum``);
        a replayed CUDA graph issues no layer from the host, only the engine's own work."""
        if graphed and not self.host_sync:
            return self.iteration_overhead_s
        added = self.host_s if self.host_sync else top(self.host_s - device_s, 0.0)
        return added + self.iteration_overhead_s

    def decode_attention(self, context, seqs: int, graphed: bool = False):
        """Seconds of decode attention over ``context`` cached tokens in all for ``seqs`` sequences
        (each writing one token's keys and values), with its kernel launch (replayed in a graph)."""
        return self.decode_per_ctx * context + self.write_s * seqs + (self.graph_launch_s if graphed else self.launch_s)

    def decode_work(self, seqs: int, context) -> tuple[float, float, int]:
        """(draft seconds, attention seconds, tokens this model processes) of the decode part of an
        iteration over ``seqs`` sequences with ``context`` cached tokens in all. With speculation
        the draft proposes k tokens per sequence one at a time (its GEMMs, head and attention over
        the same context, each step), and this model verifies the k + 1 of each sequence in one
        pass: k + 1 query rows per cached token, reading the cache once (Leviathan et al. 2023;
        vLLM's speculative decoding scores the proposals in a single target forward)."""
        spec = self.speculation
        if spec is None:
            return 0.0, self.decode_attention(context, seqs), seqs
        d, k = spec.draft, spec.tokens
        dg, dew, dcomm = d.token_parts(seqs)
        per_draft = dg + dew + dcomm + d.head(seqs) + d.decode_per_ctx * context + d.write_s * seqs + d.launch_s
        rt = self.rates
        attention = max((k + 1) * rt.pair_s, rt.kv_read_s) * context + rt.write_s * seqs * (k + 1) + self.launch_s
        return k * per_draft, attention, seqs * (k + 1)

    def offloaded(self, gpu_s, tokens: int, decode_context, decode_seqs: int, new_tokens: int,
                  cached_prefill_tokens: float, top=max, bottom=min) -> tuple:
        """(CPU attention seconds the GPU no longer does, iteration device seconds, busy seconds per
        resource) of an iteration whose weights or KV cache are streamed; ``gpu_s`` is the GPU work
        as if nothing were offloaded, its decode attention included. Floats, or arrays over the
        iterations of a decode run (``top``/``bottom`` then ``np.maximum``/``np.minimum``)."""
        st = self.stream
        assert st is not None
        moved = 0.0
        cpu = 0.0
        if st.cpu_per_context_s:
            moved = self.decode_per_ctx * decode_context + self.write_s * decode_seqs if decode_seqs else 0.0
            cpu = st.cpu_per_context_s * decode_context
        device, busy = st.iteration(gpu_s - moved, cpu, tokens, decode_context, new_tokens, cached_prefill_tokens,
                                    top, bottom)
        return moved, device, busy

    def charge(self, device, tokens: int, decode_context, decode_seqs: int, new_tokens: int,
               cached_prefill_tokens: float, draft_s: float = 0.0, top=max, bottom=min) -> tuple:
        """(device seconds, decode attention seconds moved to the CPU, seconds the GPU waits, busy
        seconds per resource) of an iteration whose GPU work without offloading is ``device``
        (``draft_s`` of it the draft model's). Floats, or arrays over a decode run."""
        if self.stream is None:
            if self.on_host:  # Dovetail: the draft's proposals on the GPU, the rest on the CPU
                return device, 0.0, 0.0, {"gpu": draft_s, "cpu": device - draft_s}
            return device, 0.0, 0.0, {"gpu": device}
        moved, streamed, busy = self.offloaded(device, tokens, decode_context, decode_seqs, new_tokens,
                                               cached_prefill_tokens, top, bottom)
        return streamed, moved, streamed - (device - moved), busy

    def decode_steps(self, seqs: int, context) -> DecodeSteps:
        """Iterations that only decode, each over the same ``seqs`` sequences: one at ``context``
        cached tokens in all (a float), or a run of them, the i-th at ``context[i]`` (an array).
        The engine's decode-only iteration, evaluated for a whole run at once in the same
        operation order as one at a time, so each entry is bit-identical to the iteration
        computed alone."""
        gemm, tew, tcomm, work, _, _, graphed, plain, same_host, *_ = self._line(seqs)
        attention = self.decode_attention(context, seqs, graphed)
        top, bottom = (np.maximum, np.minimum) if isinstance(context, np.ndarray) else (max, min)
        if plain:  # nothing offloaded or on the host: the GPU's work is the iteration's
            device = work + attention
            host = same_host if same_host is not None else self.host(device, top, graphed)
            return DecodeSteps(duration=device + host, gemm=gemm, elementwise=tew, communication=tcomm,
                               attention=attention, host=host, wait=0.0, busy={"gpu": device})
        device, moved, wait, busy = self.charge(work + attention, seqs, context, seqs, seqs, 0.0,
                                                top=top, bottom=bottom)
        attention = attention - moved
        host = self.host(device, top, graphed)
        return DecodeSteps(duration=device + host, gemm=gemm, elementwise=tew, communication=tcomm,
                           attention=attention, host=host, wait=wait, busy=busy)

    def decode_run(self, seqs: int, s0: float, per_step: float, first: int, length: int, start: float,
                   horizon: float, seconds: SecondsLog) -> tuple[int, float, float]:
        """Plan up to ``length`` decode-only iterations over ``seqs`` sequences from step
        ``first``, the first starting at ``start``: as many as start before ``horizon``. Step
        ``j`` attends to ``s0 + per_step * j`` cached tokens in all. Adds their seconds to
        ``seconds`` and returns (iterations, end of the last, start of the last).

        Each iteration is :meth:`decode_steps`'s, in the same operations, and its seconds are
        added in iteration order, so the run is bit-identical to its iterations one at a time. A
        short run is evaluated in plain Python, keeping the running totals as it goes (a handful
        of NumPy calls costs more than ~50 iterations of float arithmetic); a long one in NumPy,
        with one sequential cumulative sum for the iterations' ends and the totals."""
        line = self._line(seqs)
        gemm, tew, tcomm, work, write, launch, _, plain, same_host, *_ = line
        if not plain:
            return self._decode_run_streamed(seqs, s0, per_step, first, length, start, horizon, seconds)
        if length > (TABLE_RUN_MIN if seqs <= CONTEXT_TABLE_SEQS else PYTHON_RUN_MAX):
            return self._decode_run_array(line, seqs, s0, per_step, first, length, start, horizon, seconds)
        running = seconds.running
        total_a, total_d, total_h = running["attention"], running["gpu"], running["host_overhead"]
        t = last = start
        context = s0 + per_step * first
        if same_host is not None and context.is_integer() and per_step.is_integer():
            # Whole contexts (below 2^53) step exactly, so each is s0 + per_step * j to the bit.
            dpc = self.decode_per_ctx
            for k in range(1, length + 1):  # noqa: B007 (k: the iterations planned, read after the loop)
                a = dpc * context + write + launch  # decode_attention, inline (same operations)
                d = work + a
                total_a += a
                total_d += d
                last = t
                t = t + (d + same_host)
                if t >= horizon:  # the next would start at or after it
                    break
                context += per_step
        else:
            dpc, spare, overhead = self.decode_per_ctx, self.host_s, self.iteration_overhead_s
            for j in range(first, first + length):
                a = dpc * (s0 + per_step * j) + write + launch
                d = work + a
                total_a += a
                total_d += d
                last = t
                if same_host is not None:
                    t = t + (d + same_host)
                else:
                    h = max(spare - d, 0.0) + overhead
                    total_h += h
                    t = t + (d + h)
                if t >= horizon:
                    break
            k = j - first + 1
        running["attention"], running["gpu"], running["host_overhead"] = total_a, total_d, total_h
        for key, value in line.alike:  # what every iteration adds alike (same_host when fixed)
            running[key] = added(running[key], value, k)
        return k, t, last

    def _decode_run_array(self, line: DecodeLine, seqs: int, s0: float, per_step: float, first: int, length: int,
                          start: float, horizon: float, seconds: SecondsLog) -> tuple[int, float, float]:
        """decode_run for a longer run of plain iterations, in NumPy: each iteration's seconds
        from the context table where there is one, else computed for the run, then one
        cumulative sum for the ends and the running totals (the parts every iteration adds alike
        ride along as constant rows: DecodeLine.run_keys)."""
        keys, varying = line.run_keys, line.run_varying
        rows = np.empty((1 + len(keys), length + 1))
        rows[:, 0] = [start, *seconds.values(keys)]
        rows[1 + varying:, 1:] = line.run_constants
        context = s0 + per_step * first  # total context of the first iteration: a whole number
        table = (self._context_table(seqs, int(context + per_step * length))
                 if context.is_integer() and per_step.is_integer() else None)
        if table is not None:
            c, stride = int(context), int(per_step)
            rows[:1 + varying, 1:] = table[:, c:c + stride * length:stride]
        else:
            for i, column in enumerate(self._plain_columns(seqs, s0 + per_step * np.arange(first, first + length))):
                rows[i, 1:] = column
        # Sequential along each row: the ends, then running totals (add.accumulate is cumsum
        # without its dispatch, a microsecond a run).
        np.add.accumulate(rows, axis=1, out=rows)
        ends = rows[0]
        k = length if horizon == math.inf else 1 + int(ends[1:length].searchsorted(horizon))
        seconds.store(keys, rows[1:, k].tolist())
        last, end = ends[k - 1:k + 1].tolist()
        return k, end, last

    def _plain_columns(self, seqs: int, context: np.ndarray) -> tuple[np.ndarray, ...]:
        """decode_steps' plain iterations at each ``context``, as (duration, attention, device)
        seconds, and host seconds where they vary from one iteration to the next."""
        it = self.decode_steps(seqs, context)
        varying_host = (it.host,) if isinstance(it.host, np.ndarray) else ()
        return (it.duration, it.attention, it.busy["gpu"], *varying_host)

    def _context_table(self, seqs: int, top: int) -> np.ndarray | None:
        """Plain decode-only iterations over ``seqs`` sequences at every total context from 0 past
        ``top``, as rows (duration, attention, device[, host]); None where that table would be
        too large. At low arrival rates a simulation decodes a few sequences at a time and
        revisits the same (sequences, context) pairs a hundredfold, so a run copies its
        iterations out of the table instead of computing them."""
        table = self._context_tables.get(seqs)
        if table is not None and table.shape[1] > top:
            return table
        size = max(1 << max(top, 1).bit_length(), CONTEXT_TABLE_MIN)
        if seqs > CONTEXT_TABLE_SEQS or size > CONTEXT_TABLE_MAX:
            return None
        table = np.array(self._plain_columns(seqs, np.arange(size, dtype=float)))
        self._context_tables[seqs] = table
        return table

    def _decode_run_streamed(self, seqs: int, s0: float, per_step: float, first: int, length: int, start: float,
                             horizon: float, seconds: SecondsLog) -> tuple[int, float, float]:
        """decode_run for iterations whose weights or KV stream in, or that run on the host."""
        it = self.decode_steps(seqs, s0 + per_step * np.arange(first, first + length))
        ends = np.empty(length + 1)
        ends[0] = start
        ends[1:] = it.duration
        ends.cumsum(out=ends)  # sequential: ends[i] is the end of the i-th iteration
        k = length if horizon == math.inf else 1 + int(ends[1:length].searchsorted(horizon))

        def first_k(v):
            return v[:k] if isinstance(v, np.ndarray) else v
        seconds.add(k, (it.gemm, it.elementwise, it.communication, first_k(it.attention), first_k(it.wait),
                        first_k(it.host)), {key: first_k(v) for key, v in it.busy.items()})
        last, end = ends[k - 1:k + 1].tolist()
        return k, end, last

    def _line(self, seqs: int) -> DecodeLine:
        """The batch's DecodeLine, made the first time a run or an iteration needs it."""
        line = self._lines.get(seqs)
        if line is None:
            line = self._lines[seqs] = self._decode_line(seqs)
        return line

    def _decode_line(self, seqs: int) -> DecodeLine:
        """What a decode-only iteration over ``seqs`` sequences costs apart from its context: its
        GEMM, element-wise and communication seconds, their sum, the KV it writes, the attention
        kernel's launch, whether it replays a CUDA graph, whether its device seconds are the
        GPU's alone (nothing streamed or on the host), and the host's seconds where they do not
        depend on the device's (see host(): a replayed graph, a synchronous host, or a host
        whose layer launches a device-bound iteration always hides), else None."""
        tg, tew, tcomm = self.token_parts(seqs)
        gemm = tg + self.head(seqs)
        graphed = 0 < seqs <= self.graph_max_tokens
        launch = self.graph_launch_s if graphed else self.launch_s
        plain = self.stream is None and not self.on_host
        # Device seconds are positive, so with no host seconds to hide max(host_s - device, 0) is 0.
        same_host = self.host(0.0, graphed=graphed) if graphed or self.host_sync or self.host_s <= 0.0 else None
        varying = ("attention", "gpu") if same_host is not None else ("attention", "gpu", "host_overhead")
        # The parts every iteration adds alike ride along in the same cumulative sum.
        alike = [(key, value) for key, value in (("gemm", gemm), ("elementwise", tew), ("communication", tcomm),
                                                 ("host_overhead", same_host)) if value]
        return DecodeLine(gemm, tew, tcomm, gemm + tew + tcomm, self.write_s * seqs, launch, graphed, plain,
                          same_host, (*varying, *(key for key, _ in alike)), len(varying),
                          np.array([[value] for _, value in alike]).reshape(len(alike), 1), tuple(alike))


def _tabulate(blocks: dict[int, list[tuple[float, float, float]]], model: ModelSpec, lay: Layout,
              block: int) -> list[tuple[float, float, float]]:
    """Tabulate (GEMM, element-wise, communication) seconds for the ``block``-th TABLE_BLOCK token
    counts into ``blocks`` (the first time an iteration needs one of them)."""
    counts = np.arange(block * TABLE_BLOCK + 1, (block + 1) * TABLE_BLOCK + 1, dtype=float)
    parts = token_time(model, lay, counts, 0.0)
    rows = list(zip(parts["gemm"].tolist(), parts["elementwise"].tolist(), parts["communication"].tolist()))
    blocks[block] = rows
    return rows


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding (Leviathan et al., ICML 2023): ``draft`` proposes ``tokens`` tokens per
    step, each accepted with probability ``acceptance_rate``."""

    draft: IterationCost
    tokens: int
    acceptance_rate: float

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens per sequence and verification step."""
        return speculative_tokens_per_step(self.acceptance_rate, self.tokens)


class DecodeLine(NamedTuple):
    """What a decode-only iteration over a batch costs apart from its context (see
    IterationCost._decode_line), and how a run of them is laid out in NumPy."""

    gemm: float
    elementwise: float
    communication: float
    work: float  # the three above, summed
    write: float  # seconds to write the batch's new KV  (these two: decode_attention's terms,
    launch: float  # the attention kernel's launch        for decode_run's inline copy)
    graphed: bool
    plain: bool  # device seconds are the GPU's alone: nothing streamed or on the host
    same_host: float | None  # host seconds where they do not depend on the device's
    #: IterationCost._decode_run_array's running totals: their keys, how many of them vary from
    #: one iteration to the next, and the per-iteration constants of the others (a column).
    run_keys: tuple[str, ...]
    run_varying: int
    run_constants: np.ndarray
    alike: tuple[tuple[str, float], ...]  # the constant keys and their seconds


class DecodeSteps(NamedTuple):
    """Seconds of one decode-only iteration (floats), or per iteration of a run of them (arrays,
    one entry per iteration; a float is the same for every iteration)."""

    duration: np.ndarray | float
    gemm: float
    elementwise: float
    communication: float
    attention: np.ndarray | float
    host: np.ndarray | float
    wait: np.ndarray | float
    busy: dict  # resource -> seconds
