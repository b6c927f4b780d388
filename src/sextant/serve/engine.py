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
from dataclasses import dataclass

from sextant.serve.accounting import SecondsLog
from sextant.serve.iteration import IterationCost
from sextant.serve.kv_blocks import BlockCycle, blocks_taken
from sextant.serve.prefix_cache import PrefixCache
from sextant.serve.request_table import DECODING, DONE, PREFILLING, SWAPPED, WAITING, RequestTable

#: Fraction of KV blocks vLLM keeps free when admitting prompts (``watermark``, 1%).
ADMISSION_WATERMARK = 0.01
#: A run up to an arrival evaluates this many times the iterations the last decode iteration's
#: length predicts, in one piece (a finish shortens iterations; a short piece is continued).
RUN_LOOKAHEAD = 1.5


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
        #: Seconds per part and per resource, summed in iteration order.
        self.seconds = SecondsLog(IterationCost.PARTS, IterationCost.RESOURCES)
        self.iterations = 0
        self.trace = trace
        self._plan: tuple | None = None
        self._cutoff = math.inf
        #: Shared prefixes and repeated prompts whose KV blocks outlive their requests.
        self.prefix = PrefixCache(req, cfg.block_size, cfg.prefix_caching)
        #: Start of the last iteration planned while busy (None when idle): with async
        #: scheduling, the moment the next iteration's batch was chosen.
        self.last_start: float | None = None
        #: Whether decode runs may go on past a finish (set by the simulator when nothing outside
        #: the engine observes a finish before the run completes).
        self.through_finishes = False
        self._decode_s = math.inf  # the last decode iteration's seconds (to size a run's pieces)
        #: Seconds of an iteration that prefills one prompt chunk alone, by (chunk, tokens cached
        #: before it, prompt): see start.
        self._lone_prefills: dict[tuple[int, int, int], tuple] = {}

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

    def _enter_decode(self, rid: int) -> bool:
        """After a prefill (or a swap-in): start decoding, or finish if nothing is left.
        Returns True if the request finished."""
        r, g = self.req, self.cfg.tokens_per_step
        remaining = r.out[rid] - r.gen[rid]
        steps = remaining if g == 1.0 else int(math.ceil(remaining / g))
        if steps <= 0:
            return True
        c0 = r.inp[rid] + r.gen[rid] - 1
        r.state[rid] = DECODING
        r.c0[rid] = c0
        r.d0[rid] = self.D
        r.epoch[rid] += 1
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
        # A lone prompt chunk (vLLM's prefill-first iterations at low load) costs what its
        # length, the tokens cached before it and its prompt say, whatever else the engine holds.
        alone = None
        if not n_dec and len(chunks) == 1 and swap_s == 0.0 and cost.stream is None:
            rid, c = chunks[0]
            alone = (c, r.done[rid], r.target[rid])
        seconds = self._lone_prefills.get(alone) if alone else None
        if seconds is None:
            seconds = self._iteration_seconds(chunks, n_dec, swap_s)
            if alone:
                self._lone_prefills[alone] = seconds
        gemm, ew, comm, attention, host, wait, busy, duration, prefill_tokens = seconds
        self._account(gemm, ew, comm, attention, host, wait, busy)
        self.iterations += 1
        self._plan = ("step", int(decode), chunks, [])
        self.last_start = now
        if self.trace is not None:
            self.trace.append(Iteration(now, duration, n_dec, prefill_tokens, len(chunks)))
        return now + duration

    def _iteration_seconds(self, chunks: list[tuple[int, int]], n_dec: int, swap_s: float) -> tuple:
        """What an iteration that decodes ``n_dec`` sequences (at step D + 1) and prefills
        ``chunks`` costs: (GEMM, element-wise, communication, attention, host, offload wait
        seconds, busy seconds per resource, duration, prompt tokens)."""
        r, cost, g = self.req, self.cost, self.cfg.tokens_per_step
        step = self.D + 1
        attention = gemm = ew = comm = draft_s = 0.0
        dec_tokens = prefill_tokens = completing = 0
        if n_dec:
            draft_s, attention, dec_tokens = cost.decode_work(n_dec, self.s0 + g * n_dec * step)
            gemm = draft_s
        if chunks:
            for rid, c in chunks:
                done = r.done[rid]
                prefill_tokens += c
                completing += done + c >= r.target[rid]
                ratio = cost.efficiency_ratio(done + c) if cost.has_table else 1.0
                attention += cost.prefill_attention(c, done, ratio)
            attention += cost.launch_s
        tg, tew, tcomm = cost.token_parts(dec_tokens + prefill_tokens)
        gemm += tg + cost.head(dec_tokens + completing)
        ew += tew
        comm += tcomm + swap_s
        device = gemm + ew + comm + attention
        cached = float(sum(r.done[rid] for rid, _ in chunks)) if cost.stream is not None else 0.0
        device, moved, wait, busy = cost.charge(device, dec_tokens + prefill_tokens,
                                                self.s0 + g * n_dec * step if n_dec else 0.0, n_dec,
                                                prefill_tokens + n_dec, cached, draft_s)
        attention -= moved
        host = cost.host(device, graphed=0 < dec_tokens + prefill_tokens <= cost.graph_max_tokens)
        return gemm, ew, comm, attention, host, wait, busy, device + host, prefill_tokens

    def _decode_run(self, now: float, horizon: float) -> float:
        """Plan decode-only iterations from step ``D + 1`` (whose blocks are reserved); the time
        the last ends. The run stops before a step whose blocks are not free (it preempts, one
        iteration at a time) and before any iteration that would start at or after ``horizon``
        (the next arrival); with a trace every iteration is planned alone. It stops at the next
        finish too, unless the simulator lets it run through finishes (``through_finishes``: a
        finish is then seen by nothing outside this engine) and nothing waits, is swapped out or
        is part-way through its prefill, so that the blocks a finish frees can admit nothing: the
        batch then shrinks and the run goes on (from one arrival to the next at low rates).
        Between finishes, arrivals and preemptions no decode-only iteration can turn into another
        kind: nothing was admitted or swapped in this iteration, nothing was preempted to free
        blocks, and free blocks only shrink while decoding. Times and accumulated parts are
        summed in iteration order, so the run is bit-identical to its iterations planned one by
        one (IterationCost.decode_run)."""
        if self.trace is not None or horizon <= now:
            return self._decode_step(now)
        through = self.through_finishes and not (self.waiting or self.swapped or self.prefilling)
        t, done, finished, reserved = now, 0, [], True
        last_start = now
        next_finish = self._next_finish()  # (nothing leaves decode within a piece)
        while True:
            step = self.D + done  # steps run before this piece
            length = next_finish - step
            if horizon < math.inf:
                length = min(length, 2 + int(RUN_LOOKAHEAD * (horizon - t) / self._decode_s))
            k, t_next, start = self._run_piece(t, step + 1, length, horizon, reserved)
            if k == 0:
                break
            done, t, last_start, reserved = done + k, t_next, start, False
            if next_finish == step + k:
                self._finishers(step + k, t, finished)
                if not through:
                    break
                next_finish = self._next_finish()
            if k < length or t >= horizon or self.n_dec == 0:
                break
        self._plan = ("step", done, [], finished)
        self.last_start = last_start
        return t

    def _run_piece(self, t: float, first: int, length: int, horizon: float,
                   reserved: bool) -> tuple[int, float, float]:
        """Plan up to ``length`` decode-only iterations over the current batch from step
        ``first`` at ``t`` (the first one's blocks already taken when ``reserved``), as many as
        find their blocks and start before ``horizon``: (iterations, end of the last, its start)."""
        n, block = self.n_dec, self.cfg.block_size
        after = first if reserved else first - 1  # blocks are counted from the step after this
        on_demand = not self.cfg.reserve
        # Each sequence takes at most one block per block_size steps: with that many free, every
        # step finds its blocks and the cycle need not be tabulated.
        if on_demand and self.free < n * -(-(length - reserved) // block):
            length = reserved + BlockCycle.after(self.phase, after).steps_within(self.free, length - reserved)
            if length == 0:
                return 0, t, t
        k, end, last = self.cost.decode_run(n, self.s0, self.cfg.tokens_per_step * n, first, length, t, horizon,
                                            self.seconds)
        if on_demand:
            self._use(blocks_taken(self.phase, after, k - reserved, n))
        self.iterations += k
        self._decode_s = end - last
        return k, end, last

    def _decode_step(self, now: float) -> float:
        """One decode-only iteration (its blocks reserved); the time it ends."""
        n, g = self.n_dec, self.cfg.tokens_per_step
        one = self.cost.decode_steps(n, self.s0 + g * n * (self.D + 1))
        self._account(one.gemm, one.elementwise, one.communication, one.attention, one.host, one.wait, one.busy)
        self.iterations += 1
        self._plan = ("step", 1, [], [])
        self.last_start = now
        if self.trace is not None:
            self.trace.append(Iteration(now, one.duration, n, 0, 0))
        return now + one.duration

    def _next_finish(self) -> int:
        """The step at which the next decoding request finishes (stale heap entries dropped: a
        request that left decode since it was pushed)."""
        heap, r = self.finish_heap, self.req
        while heap and (r.epoch[heap[0][1]] != heap[0][2] or r.state[heap[0][1]] != DECODING):
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def _finishers(self, step: int, end: float, finished: list[tuple[int, float]]) -> None:
        """Take the requests that finish at ``step`` out of decode; their finish at ``end`` is
        recorded when the iteration completes."""
        heap, r = self.finish_heap, self.req
        while heap and heap[0][0] <= step:
            _, rid, ep = heapq.heappop(heap)
            if r.epoch[rid] == ep and r.state[rid] == DECODING:
                self._leave_decode(rid, step)
                finished.append((rid, end))

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
        self.seconds.add(1, (0.0, 0.0, seconds, 0.0, 0.0, 0.0), {})
        return now + seconds

    def _watermark(self) -> int:
        """Blocks kept free when admitting a prompt while others run (none when reserving)."""
        return int(ADMISSION_WATERMARK * self.cfg.capacity_blocks) if not self.cfg.reserve else 0

    def _admit_prefills(self, budget: int) -> list[tuple[int, int]]:
        """Prompt chunks for this iteration: continue partial prefills, then admit new prompts
        (FCFS) while the token budget, the batch limit and the free blocks allow."""
        cfg, r = self.cfg, self.req
        chunks: list[tuple[int, int]] = []
        chunked = cfg.batching == "chunked"
        if budget <= 0 or not (self.prefilling or self.waiting):
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
        _, decode_steps, chunks, finished = plan
        r = self.req
        if decode_steps:
            self.D += decode_steps
            self._finishers(self.D, end, finished)
            for rid, t in finished:
                self._finish(rid, t)
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

    def _account(self, gemm, ew, comm, attention, host, wait=0.0, busy=None) -> None:
        """Log one iteration's seconds by part (in IterationCost.PARTS order) and resource."""
        self.seconds.add_one((gemm, ew, comm, attention, wait, host), busy or {})

    @property
    def parts(self) -> dict[str, float]:
        """Seconds per part of an iteration, over every iteration so far."""
        return self.seconds.totals()[0]

    @property
    def resource_busy(self) -> dict[str, float]:
        """Seconds each resource was busy, over every iteration so far."""
        return self.seconds.totals()[1]
