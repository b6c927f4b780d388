"""One serving engine: its scheduler and its paged KV cache, charging each iteration what
:class:`~sextant.serve.iteration.IterationCost` says it costs.

The engine advances one *iteration* at a time (one forward pass over a batch). Per-request work
happens only at events (admission, end of prefill, preemption, finish), never per token, so that
10^5-request traces simulate in seconds:

- A decoding sequence writes one KV slot per decode step. Entering decode at step ``D0`` with
  ``c0`` cached tokens, it writes slot ``c0 + (D - D0) - 1`` at step ``D`` and needs a new block
  exactly when that index is a multiple of the block size, i.e. when ``D = D0 + 1 - c0 (mod B)``.
  The engine keeps a count of decoding sequences per residue, so the blocks a step needs are one
  lookup (vLLM allocates blocks on demand in the same way; ``block_manager.append_slots``).
- The context all decoding sequences attend to at step ``D`` is ``sum(c0 - g D0) + g n D`` for
  ``n`` sequences advancing ``g`` tokens per step, kept as a running sum.
- Each sequence's finishing step is known when it enters decode; a heap yields the finishers.

Policies (``static`` batching, a batch prefilled together and decoded to its longest request, is
:class:`~sextant.serve.static_engine.StaticEngine`):
- ``continuous``: vLLM's prefill-first scheduler: an iteration prefills newly admitted prompts
  (whole, within the token budget) when any can be admitted, else decodes every running
  sequence (Yu et al., Orca, OSDI 2022; Kwon et al., vLLM, SOSP 2023).
- ``chunked``: every iteration decodes every running sequence and fills the rest of the token
  budget with prompt chunks (Agrawal et al., Sarathi-Serve, OSDI 2024).
KV allocation is ``on_demand`` (blocks as sequences grow; when a step lacks blocks the most
recently admitted sequence is preempted, LIFO as vLLM, and either recomputed later or swapped to
host memory over PCIe) or ``reserve`` (prompt + output reserved at admission; never preempts).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sextant.serve.iteration import DecodeSteps, IterationCost
from sextant.serve.kv_blocks import BlockCycle
from sextant.serve.prefix_cache import PrefixCache

WAITING, PREFILLING, DECODING, SWAPPED, DONE = range(5)
#: Fraction of KV blocks vLLM keeps free when admitting prompts (``watermark``, 1%).
ADMISSION_WATERMARK = 0.01


@dataclass
class RequestTable:
    """Per-request state shared by every engine of a simulation (plain lists: scalar access in
    the event loop is faster than NumPy's)."""

    arrival: list[float]
    inp: list[int]
    out: list[int]
    first: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    state: list[int] = field(default_factory=list)
    gen: list[int] = field(default_factory=list)  # tokens generated so far (at the last event)
    target: list[int] = field(default_factory=list)  # tokens the next prefill must process
    done: list[int] = field(default_factory=list)  # of which prefilled so far (chunked)
    held: list[int] = field(default_factory=list)  # KV blocks held outside the decode accounting
    c0: list[int] = field(default_factory=list)
    d0: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    #: Shared-prefix group of each request (-1: none) and the prefix's length in tokens.
    group: list[int] = field(default_factory=list)
    prefix_tokens: int = 0
    #: Which repeated whole prompt each request sends (-1: a prompt of its own).
    prompt: list[int] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)  # KV blocks reused from the prefix cache
    preemptions: int = 0

    def __post_init__(self) -> None:
        n = len(self.arrival)
        self.first = [-1.0] * n
        self.finish = [-1.0] * n
        self.state = [WAITING] * n
        self.gen = [0] * n
        self.target = list(self.inp)
        self.done = [0] * n
        self.held = [0] * n
        self.c0 = [0] * n
        self.d0 = [0] * n
        self.epoch = [0] * n
        self.group = list(self.group) if self.group else [-1] * n
        self.prompt = list(self.prompt) if self.prompt else [-1] * n
        self.shared = [0] * n


@dataclass
class EngineConfig:
    batching: str
    max_batch: int
    token_budget: int
    block_size: int
    capacity_blocks: int
    reserve: bool
    preemption: str
    swap_blocks: int  # host blocks for swapped KV
    swap_s_per_token: float  # seconds to move one token's KV over PCIe
    role: str = "both"  # both | prefill | decode
    tokens_per_step: float = 1.0  # > 1 with speculative decoding (expected accepted + bonus)
    prefix_caching: bool = False  # reuse the full KV blocks of a shared prompt prefix
    #: The scheduler plans iteration N + 1 while iteration N runs (vLLM V1's async scheduling,
    #: SGLang's overlap scheduler): a request that arrives during N joins N + 2 at the earliest.
    async_scheduling: bool = False


@dataclass
class Iteration:
    start: float
    duration: float
    decode_seqs: int
    prefill_tokens: int
    prefill_seqs: int


class Engine:
    """One engine (a replica, or one virtual engine of a pipeline-parallel replica)."""

    def __init__(self, name: str, cost: IterationCost, cfg: EngineConfig, req: RequestTable,
                 trace: list | None = None) -> None:
        self.name, self.cost, self.cfg, self.req = name, cost, cfg, req
        self.waiting: deque[int] = deque()
        self.swapped: deque[int] = deque()
        self.prefilling: list[int] = []
        self.running_stack: list[int] = []  # admission order, lazily pruned (LIFO victims)
        self.free = cfg.capacity_blocks
        self.peak_used = 0
        self.swap_free = cfg.swap_blocks
        self.D = 0  # decode steps run
        self.n_dec = 0
        self.s0 = 0.0  # sum(c0 - g*d0) over decoding sequences
        self.phase = [0] * cfg.block_size
        self.finish_heap: list[tuple[int, int, int]] = []
        self.busy = False
        self.outstanding = 0
        self.parts = dict.fromkeys(IterationCost.PARTS, 0.0)
        self.resource_busy = dict.fromkeys(IterationCost.RESOURCES, 0.0)
        self.iterations = 0
        self.trace = trace
        self._plan: tuple | None = None
        self._cutoff = math.inf
        #: Shared prefixes and repeated prompts whose KV blocks outlive their requests.
        self.prefix = PrefixCache(req, cfg.block_size, cfg.prefix_caching)
        #: Start of the last iteration planned while busy (None when idle): with async
        #: scheduling, the moment the next iteration's batch was chosen.
        self.last_start: float | None = None

    # ---- queue ----------------------------------------------------------------------------
    def enqueue(self, rid: int) -> None:
        self.waiting.append(rid)
        self.outstanding += 1

    def load(self) -> int:
        return self.outstanding

    def kv_peak_fraction(self) -> float:
        return self.peak_used / self.cfg.capacity_blocks if self.cfg.capacity_blocks else 0.0

    # ---- helpers --------------------------------------------------------------------------
    def _blocks(self, tokens: float) -> int:
        return -(-int(math.ceil(tokens)) // self.cfg.block_size)

    def _use(self, blocks: int) -> None:
        self.free -= blocks
        used = self.cfg.capacity_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used
        if self.prefix.blocks > self.free:
            self.prefix.shrink_to(self.free)

    def _steps_left(self, rid: int) -> int:
        g = self.cfg.tokens_per_step
        remaining = self.req.out[rid] - self.req.gen[rid]
        return remaining if g == 1.0 else int(math.ceil(remaining / g))

    def _enter_decode(self, rid: int) -> bool:
        """After a prefill (or a swap-in): start decoding, or finish if nothing is left.
        Returns True if the request finished."""
        r = self.req
        steps = self._steps_left(rid)
        if steps <= 0:
            return True
        c0 = r.inp[rid] + r.gen[rid] - 1
        r.state[rid] = DECODING
        r.c0[rid] = c0
        r.d0[rid] = self.D
        r.epoch[rid] += 1
        g = self.cfg.tokens_per_step
        self.n_dec += 1
        self.s0 += c0 - g * self.D
        if not self.cfg.reserve:
            self.phase[(self.D + 1 - c0) % self.cfg.block_size] += 1
        heapq.heappush(self.finish_heap, (self.D + steps, rid, r.epoch[rid]))
        return False

    def _leave_decode(self, rid: int, steps_done: int) -> None:
        """Remove a decoding request after ``steps_done`` global steps; frees its blocks."""
        r = self.req
        g = self.cfg.tokens_per_step
        c0, d0 = r.c0[rid], r.d0[rid]
        self.n_dec -= 1
        self.s0 -= c0 - g * d0
        r.epoch[rid] += 1
        if self.cfg.reserve:
            self.free += r.held[rid]
        else:
            self.phase[(d0 + 1 - c0) % self.cfg.block_size] -= 1
            self.free += self._blocks(c0 + g * (steps_done - d0)) - r.shared[rid]
        r.held[rid] = 0
        r.gen[rid] = min(r.out[rid], r.gen[rid] + int(round(g * (steps_done - d0))))

    def _finish(self, rid: int, t: float) -> None:
        r = self.req
        r.state[rid] = DONE
        r.finish[rid] = t
        r.gen[rid] = r.out[rid]
        self.outstanding -= 1

    def _preempt_one(self) -> float:
        """Preempt the most recently admitted running request; seconds of swap-out it costs."""
        r = self.req
        while self.running_stack:
            rid = self.running_stack.pop()
            st = r.state[rid]
            if st == DECODING:
                tokens = r.c0[rid] + self.cfg.tokens_per_step * (self.D - r.d0[rid])
                self._leave_decode(rid, self.D)
                r.preemptions += 1
                blocks = self._blocks(tokens) - r.shared[rid]
                if self.cfg.preemption == "swap" and blocks <= self.swap_free:
                    self.swap_free -= blocks
                    r.state[rid] = SWAPPED
                    r.held[rid] = blocks
                    self.swapped.append(rid)
                    return tokens * self.cfg.swap_s_per_token
                self._requeue(rid)
                return 0.0
            if st == PREFILLING:
                self.free += r.held[rid]
                r.held[rid] = 0
                r.done[rid] = 0
                self.prefilling.remove(rid)
                r.preemptions += 1
                self._requeue(rid)
                return 0.0
        return 0.0

    def _requeue(self, rid: int) -> None:
        r = self.req
        r.state[rid] = WAITING
        r.target[rid] = r.inp[rid] + r.gen[rid]
        r.done[rid] = 0
        r.shared[rid] = 0
        self.waiting.appendleft(rid)

    def _swap_in(self, now: float) -> float:
        """Swapped sequences come back first, when their blocks fit (vLLM's order); seconds."""
        cfg, r = self.cfg, self.req
        seconds = 0.0
        while self.swapped:
            rid = self.swapped[0]
            blocks = r.held[rid]
            if blocks + self._blocks(1) > self.free:
                break
            self.swapped.popleft()
            self.swap_free += blocks
            seconds += (r.inp[rid] + r.gen[rid] - 1) * cfg.swap_s_per_token
            self._use(blocks)
            r.held[rid] = 0
            if self._enter_decode(rid):
                self._finish(rid, now)
            else:
                self.running_stack.append(rid)
        return seconds

    def _admit_ready(self, now: float) -> None:
        """Decode-only instances admit requests whose KV arrived: blocks, no compute."""
        cfg, r = self.cfg, self.req
        while self.waiting and self.n_dec < cfg.max_batch:
            rid = self.waiting[0]
            need = self._blocks(r.inp[rid] + (r.out[rid] if cfg.reserve else 0))
            if need > self.free - self._watermark():
                break
            self.waiting.popleft()
            self._use(need)
            r.held[rid] = need if cfg.reserve else 0
            r.gen[rid] = 1
            if self._enter_decode(rid):
                self.free += need
                self._finish(rid, now)
            else:
                self.running_stack.append(rid)

    # ---- one iteration ---------------------------------------------------------------------
    def start(self, now: float, horizon: float = math.inf) -> float | None:
        """Plan the next iteration at ``now``; the time it ends, or None when there is no work.

        Iterations that only decode are planned as a *run*: every decode-only iteration up to the
        next finish, as long as no step lacks KV blocks and no iteration after the first starts
        at or after ``horizon`` (the next arrival, which could change what the engine admits).
        Nothing else can change between them, so the run is exactly those iterations one by one
        (see :meth:`_decode_run`). A first iteration that preempted frees blocks that the next
        could use to swap in or admit, so it is planned alone."""
        cfg, r, cost = self.cfg, self.req, self.cost
        preemptions = r.preemptions
        # Async scheduling: this iteration's batch was chosen when the previous one started.
        self._cutoff = self.last_start if cfg.async_scheduling and self.last_start is not None else math.inf
        extra = self._swap_in(now) if cfg.role != "prefill" else 0.0
        if cfg.role == "decode":
            self._admit_ready(now)
        chunks: list[tuple[int, int]] = []
        swap_s = extra
        decode = False
        if cfg.batching == "chunked" or cfg.role == "decode":
            # Stall-free: decodes first, prompt chunks fill the rest of the budget.
            if self.n_dec:
                swap_s += self._reserve_decode_blocks()
                decode = self.n_dec > 0
            if cfg.role != "decode":
                chunks = self._admit_prefills(cfg.token_budget - self.n_dec)
        else:
            # Prefill-first: running sequences wait while new prompts are prefilled.
            chunks = self._admit_prefills(cfg.token_budget)
            if not chunks and self.n_dec and cfg.role != "prefill":
                swap_s += self._reserve_decode_blocks()
                decode = self.n_dec > 0
        if not chunks and not decode:
            return self._without_compute(now, swap_s)
        if cfg.async_scheduling and self.waiting and r.arrival[self.waiting[0]] > self._cutoff:
            horizon = now  # a request waits for the next batch: plan one iteration
        if (decode and not chunks and swap_s == 0.0 and r.preemptions == preemptions and cost.speculation is None
                and not cost.on_host):
            return self._decode_run(now, horizon)
        n_dec = self.n_dec if decode else 0
        g = cfg.tokens_per_step
        step = self.D + 1
        prefill_tokens = sum(c for _, c in chunks)
        completing = sum(1 for rid, c in chunks if r.done[rid] + c >= r.target[rid])
        attention = gemm = ew = comm = draft_s = 0.0
        dec_tokens = 0
        if n_dec:
            draft_s, attention, dec_tokens = cost.decode_work(n_dec, self.s0 + g * n_dec * step)
            gemm = draft_s
        if chunks:
            for rid, c in chunks:
                done = r.done[rid]
                ratio = cost.efficiency_ratio(done + c) if cost.has_table else 1.0
                attention += cost.prefill_attention(c, done, ratio)
            attention += cost.launch_s
        tg, tew, tcomm = cost.token_parts(dec_tokens + prefill_tokens)
        gemm += tg + cost.head(dec_tokens + completing)
        ew += tew
        comm += tcomm + swap_s
        device = gemm + ew + comm + attention
        cached = float(sum(r.done[rid] for rid, _ in chunks)) if cost.stream is not None else 0.0
        device, moved, wait = self._charge(device, dec_tokens + prefill_tokens,
                                           self.s0 + g * n_dec * step if n_dec else 0.0, n_dec,
                                           prefill_tokens + n_dec, cached, draft_s)
        attention -= moved
        host = cost.host(device, graphed=0 < dec_tokens + prefill_tokens <= cost.graph_max_tokens)
        duration = device + host
        self._account(gemm, ew, comm, attention, host, wait)
        self.iterations += 1
        self._plan = ("step", int(decode), chunks)
        self.last_start = now
        if self.trace is not None:
            self.trace.append(Iteration(now, duration, n_dec, prefill_tokens, len(chunks)))
        return now + duration

    def _decode_run(self, now: float, horizon: float) -> float:
        """Plan decode-only iterations from step ``D + 1`` (whose blocks are reserved) up to the
        next finish; the time the last ends. The run stops early before a step whose blocks are
        not free (it preempts, one iteration at a time) and before any iteration that would
        start at or after ``horizon``; with a trace every iteration is planned alone. Between
        finishes, arrivals and preemptions no decode-only iteration can turn into another kind:
        nothing was admitted or swapped in this iteration, nothing was preempted to free blocks,
        and free blocks only shrink while decoding, so nothing will be. Times and accumulated
        parts are summed in iteration order, so the run is bit-identical to its iterations
        planned one by one."""
        cfg, cost = self.cfg, self.cost
        n, first, g = self.n_dec, self.D + 1, cfg.tokens_per_step
        one = cost.decode_steps(n, self.s0 + g * n * first)
        end = now + one.duration
        steps = 1 if self.trace is not None or end >= horizon else self.finish_heap[0][0] - self.D
        if steps > 1 and horizon < math.inf:
            # Decode iterations only lengthen as contexts grow, so no more than this many start
            # before the horizon (a bound only: the run is cut exactly below).
            steps = min(steps, 2 + int((horizon - now) / one.duration))
        blocks = None if steps == 1 or cfg.reserve else BlockCycle.after(self.phase, first)
        if blocks is not None:
            steps = 1 + blocks.steps_within(self.free, steps - 1)
        if steps == 1:
            self._account(one.gemm, one.elementwise, one.communication, one.attention, one.host, one.wait)
            for key, v in one.busy.items():
                self.resource_busy[key] += v
            self.iterations += 1
            self._plan = ("step", 1, [])
            self.last_start = now
            if self.trace is not None:
                self.trace.append(Iteration(now, one.duration, n, 0, 0))
            return end
        it = cost.decode_steps(n, self.s0 + g * n * np.arange(first, first + steps))
        ends = np.cumsum(np.concatenate(([now], it.duration)))[1:]
        steps = 1 + int(np.searchsorted(ends[:steps - 1], horizon, side="left"))
        if blocks is not None:
            self._use(blocks.taken(steps - 1))
        self._account_steps(it, steps)
        self._plan = ("step", steps, [])
        self.last_start = float(ends[steps - 2]) if steps > 1 else now
        return float(ends[steps - 1])

    def _without_compute(self, now: float, swap_s: float) -> float | None:
        """An iteration with nothing to compute: swaps only, a new choice of batch for requests
        that arrived after this one was chosen (async scheduling), or idle (None)."""
        self._plan = None
        if swap_s == 0.0 and self.waiting and self.req.arrival[self.waiting[0]] > self._cutoff:
            self.last_start = now
            return self._idle_swap(now, 0.0)
        if swap_s == 0.0:
            self.last_start = None
            return None
        return self._idle_swap(now, swap_s)

    def _idle_swap(self, now: float, seconds: float) -> float:
        self._plan = ("swap",)
        self.parts["communication"] += seconds
        return now + seconds

    def _watermark(self) -> int:
        return int(ADMISSION_WATERMARK * self.cfg.capacity_blocks) if not self.cfg.reserve else 0

    def _admit_prefills(self, budget: int) -> list[tuple[int, int]]:
        """Prompt chunks for this iteration: continue partial prefills, then admit new prompts
        (FCFS) while the token budget, the batch limit and the free blocks allow."""
        cfg, r = self.cfg, self.req
        chunks: list[tuple[int, int]] = []
        chunked = cfg.batching == "chunked"
        if budget <= 0:
            return chunks
        for rid in self.prefilling:
            if budget <= 0:
                break
            done, target = r.done[rid], r.target[rid]
            c = min(target - done, budget)
            if not cfg.reserve:
                need = self._blocks(done + c) - self._blocks(done)
                if need > self.free:
                    break
                self._use(need)
                r.held[rid] += need
            chunks.append((rid, c))
            budget -= c
        running = self.n_dec + len(self.prefilling)
        watermark = self._watermark()
        while self.waiting and budget > 0 and running < cfg.max_batch:
            rid = self.waiting[0]
            if r.arrival[rid] > self._cutoff:
                break
            target = r.target[rid]
            hit = self.prefix.hit(rid) if cfg.prefix_caching else 0
            c = min(target - hit, budget) if chunked else target - hit
            if c > budget:
                break
            shared = hit // cfg.block_size
            if cfg.reserve:
                need = self._blocks(r.inp[rid] + r.out[rid]) - shared
            else:
                need = self._blocks(hit + c) - shared
            if need > self.free - (watermark if running else 0):
                break
            self.waiting.popleft()
            self._use(need)
            r.held[rid] = need
            r.state[rid] = PREFILLING
            r.done[rid] = hit
            r.shared[rid] = shared
            self.prefilling.append(rid)
            self.running_stack.append(rid)
            chunks.append((rid, c))
            budget -= c
            running += 1
        return chunks

    def _reserve_decode_blocks(self) -> float:
        """Blocks the next decode step needs; preempts (LIFO) until they fit. Seconds of swap-out."""
        if self.cfg.reserve:
            return 0.0
        step = self.D + 1
        idx = step % self.cfg.block_size
        swap_s = 0.0
        while self.phase[idx] > self.free and self.n_dec > 0:
            swap_s += self._preempt_one()
        self._use(self.phase[idx])
        return swap_s

    def complete(self, end: float) -> list[int]:
        """Apply the planned iteration's results at ``end``; returns requests whose prefill
        finished on a prefill-only instance (to be handed to a decode instance)."""
        plan = self._plan
        self._plan = None
        handoff: list[int] = []
        if plan is None or plan[0] == "swap":
            return handoff
        _, decode_steps, chunks = plan
        r = self.req
        if decode_steps:
            self.D += decode_steps
            heap = self.finish_heap
            while heap and heap[0][0] <= self.D:
                _, rid, ep = heapq.heappop(heap)
                if r.epoch[rid] != ep or r.state[rid] != DECODING:
                    continue
                self._leave_decode(rid, self.D)
                self._finish(rid, end)
        for rid, c in chunks:
            if r.state[rid] != PREFILLING:
                continue
            r.done[rid] += c
            if r.done[rid] < r.target[rid]:
                continue
            self.prefilling.remove(rid)
            if self.cfg.prefix_caching:
                self.prefix.add(rid)
                self.prefix.shrink_to(self.free)
            if r.first[rid] < 0:
                r.first[rid] = end
            r.gen[rid] += 1
            if self.cfg.role == "prefill":
                self.free += r.held[rid]
                r.held[rid] = 0
                r.state[rid] = WAITING
                self.outstanding -= 1
                handoff.append(rid)
                continue
            if not self.cfg.reserve:
                # The prompt's blocks now belong to the decode accounting.
                r.held[rid] = 0
            if self._enter_decode(rid):
                self.free += (r.held[rid] if self.cfg.reserve
                              else self._blocks(r.inp[rid] + r.gen[rid] - 1) - r.shared[rid])
                r.held[rid] = 0
                self._finish(rid, end)
        return handoff

    def _account_steps(self, it: DecodeSteps, steps: int) -> None:
        """Add the first ``steps`` of a run of decode-only iterations, one at a time in order."""
        p, busy = self.parts, self.resource_busy
        per_step = {"gemm": it.gemm, "elementwise": it.elementwise, "communication": it.communication,
                    "attention": it.attention, "host_overhead": it.host, "offload_wait": it.wait}
        totals = _summed([p[k] for k in per_step] + [busy[k] for k in it.busy],
                         [*per_step.values(), *it.busy.values()], steps)
        for key, total in zip([*per_step, *it.busy], totals):
            (p if key in p else busy)[key] = total
        self.iterations += steps

    def _account(self, gemm, ew, comm, attention, host, wait=0.0) -> None:
        p = self.parts
        p["gemm"] += gemm
        p["elementwise"] += ew
        p["communication"] += comm
        p["attention"] += attention
        p["host_overhead"] += host
        p["offload_wait"] += wait

    def _charge(self, device: float, tokens: int, decode_context: float, decode_seqs: int, new_tokens: int,
                cached_prefill_tokens: float, draft_s: float = 0.0) -> tuple[float, float, float]:
        """(device seconds, decode attention seconds moved to the CPU, seconds the GPU waits) of an
        iteration (:meth:`IterationCost.charge`); records each resource's busy time."""
        device, moved, wait, busy = self.cost.charge(device, tokens, decode_context, decode_seqs, new_tokens,
                                                     cached_prefill_tokens, draft_s)
        for k, v in busy.items():
            self.resource_busy[k] += v
        return device, moved, wait


def _summed(totals: list[float], values: list, count: int) -> list[float]:
    """Each of ``totals`` plus the first ``count`` of its per-iteration ``values`` (an array, or
    one float for every iteration), added one at a time in order, as ``count`` separate
    iterations would have added them (a cumulative sum is sequential; ``np.sum`` is not)."""
    rows = np.empty((len(totals), count + 1))
    rows[:, 0] = totals
    for row, v in zip(rows, values):
        row[1:] = v[:count] if isinstance(v, np.ndarray) else v
    return rows.cumsum(axis=1)[:, -1].tolist()
