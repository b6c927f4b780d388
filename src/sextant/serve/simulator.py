"""The discrete-event loop: arrivals, a router, engines, and KV transfers between instances.

Events are (time, sequence number, kind, payload) in one heap, so equal times resolve in the
order they were scheduled and a run is deterministic. An engine is either busy until the end of
its current iteration or idle; new work wakes an idle engine at once.

Identical engines given identical work are simulated once: when every request has the same
prompt and output length and arrives at the same time, and the engines divide them evenly, both
routers deal them out in turn (round-robin by construction; least-loaded because each enqueue
raises an engine's load before the next pick), so every engine runs the same timeline. One engine
then replays its share and the result is repeated, exactly what the full loop would produce, in
1/engines of the time (``plan serve`` scores hundreds of multi-replica candidates this way).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

from sextant.serve.engine import Engine, EngineConfig, Iteration
from sextant.serve.iteration import IterationCost
from sextant.serve.request_table import RequestTable
from sextant.serve.requests import Requests
from sextant.serve.static_engine import StaticEngine

ARRIVAL, ENGINE_DONE, KV_READY = 0, 1, 2


@dataclass
class SimulationOutput:
    table: RequestTable
    engines: list[Engine]
    prefill_engines: list[Engine]
    makespan_s: float
    traces: dict[str, list[Iteration]]
    kv_transfers: list[tuple[int, float, float]]  # (request, start, end)


class Router:
    """Round-robin, or least-loaded (fewest outstanding requests; ties to the lowest index)."""

    def __init__(self, engines: list[Engine], policy: str) -> None:
        self.engines, self.policy, self.next = engines, policy, 0

    def pick(self) -> Engine:
        if self.policy == "round_robin" or len(self.engines) == 1:
            e = self.engines[self.next % len(self.engines)]
            self.next += 1
            return e
        return min(self.engines, key=Engine.load)


def _alike(requests: Requests, engines: int) -> bool:
    """Every request the same and at the same time, in a number the engines divide evenly."""
    n = len(requests)
    return (engines > 1 and n > 0 and n % engines == 0 and requests.prefix_group is None
            and requests.concurrency is None
            and all(bool((a == a[0]).all()) for a in (requests.arrival_s, requests.input_tokens,
                                                       requests.output_tokens)))


def _repeated(requests: Requests, one: SimulationOutput, engines: int) -> SimulationOutput:
    """The output of ``engines`` engines that each ran ``one``'s timeline on their share: request
    ``i`` went to engine ``i % engines`` as its ``i // engines``-th request, as the routers deal."""
    n = len(requests)
    table = RequestTable(requests.arrival_s.tolist(), requests.input_tokens.tolist(),
                         requests.output_tokens.tolist())
    share = n // engines
    for f in fields(RequestTable):
        values = getattr(one.table, f.name)
        if isinstance(values, list) and len(values) == share:
            setattr(table, f.name, [values[i // engines] for i in range(n)])
    table.preemptions = one.table.preemptions * engines
    return SimulationOutput(table=table, engines=one.engines * engines, prefill_engines=[],
                            makespan_s=one.makespan_s, traces={}, kv_transfers=[])


def simulate(requests: Requests, *, cost: IterationCost, config: EngineConfig, engines: int, router: str,
             prefill_config: EngineConfig | None = None, prefill_engines: int = 0,
             kv_transfer_s: Callable[[int], float] | None = None, trace: bool = False,
             progress: Callable[[int, int], None] | None = None, fold_alike: bool = True) -> SimulationOutput:
    """Replay ``requests`` on ``engines`` engines (plus ``prefill_engines`` prefill-only ones
    when disaggregated, whose finished prompts move to the decode engines after
    ``kv_transfer_s(tokens)``). With ``fold_alike``, identical engines given identical requests
    are simulated once (see the module docstring); a trace always shows every engine."""
    if fold_alike and not trace and prefill_engines == 0 and _alike(requests, engines):
        share = len(requests) // engines
        tick = (lambda done, total: progress(done * engines, total * engines)) if progress else None
        one = simulate(requests.head(share), cost=cost, config=config, engines=1, router=router, progress=tick)
        return _repeated(requests, one, engines)
    table = RequestTable(requests.arrival_s.tolist(), requests.input_tokens.tolist(),
                         requests.output_tokens.tolist(),
                         group=[] if requests.prefix_group is None else requests.prefix_group.tolist(),
                         prefix_tokens=requests.prefix_tokens,
                         prompt=[] if requests.prompt_id is None else requests.prompt_id.tolist())
    traces: dict[str, list[Iteration]] = {}

    def make(name: str, cfg: EngineConfig) -> Engine:
        buf = traces.setdefault(name, []) if trace else None
        return (StaticEngine if cfg.batching == "static" else Engine)(name, cost, cfg, table, buf)

    decoders = [make(f"replica{i}" if prefill_engines == 0 else f"decode{i}", config) for i in range(engines)]
    prefillers = [make(f"prefill{i}", prefill_config) for i in range(prefill_engines)] if prefill_config else []
    # A decode run may go on past a finish when nothing outside its engine looks at that finish
    # before the run completes: no closed loop sending the next request at the finish, and no
    # router choosing by outstanding requests (prefill instances already cut runs to one step).
    through = requests.concurrency is None and (router == "round_robin" or len(decoders) == 1)
    for e in decoders:
        e.through_finishes = through
    end, transfers = _run(table, decoders, prefillers, router, kv_transfer_s, progress, requests.concurrency)
    return SimulationOutput(table=table, engines=decoders, prefill_engines=prefillers, makespan_s=end,
                            traces=traces, kv_transfers=transfers)


def _run_ahead(e: Engine, t: float, horizon: float, ahead: bool) -> tuple[float | None, int, float]:
    """Plan ``e``'s next iteration at ``t``; while it ends before ``horizon`` (the next arrival)
    and ``ahead``, complete it and plan the next at once. Until that arrival nothing reaches the
    engine and nothing reads its state (other engines' events are their own), so this is the
    event loop's own order of events, without a round through the event heap per iteration.
    Not in a closed loop, where each finish sends the next request, nor when disaggregated,
    where a prefill instance's completion hands its prompts on (the event loop does both).
    Returns (end of the iteration left planned, or None when the engine is idle; requests
    finished; the last completion, or 0)."""
    end = e.start(t, horizon)
    finished, completed = 0, 0.0
    while ahead and end is not None and end < horizon:
        before = e.outstanding
        e.complete(end)
        finished += before - e.outstanding
        completed = end
        end = e.start(end, horizon)
    return end, finished, completed


def _run(table: RequestTable, decoders: list[Engine], prefillers: list[Engine], router: str,  # noqa: C901
         kv_transfer_s: Callable[[int], float] | None,
         progress: Callable[[int, int], None] | None,
         concurrency: int | None = None) -> tuple[float, list[tuple[int, float, float]]]:
    """The event loop: arrivals routed to the front engines (prefill-only ones when
    disaggregated), engines planning and completing iterations, KV transfers to the back ones.
    Returns the time of the last event and the KV transfers (request, start, end). Closures over
    locals, not methods: this loop runs once per iteration of every engine.

    Closed loop (``concurrency``): the first ``concurrency`` requests arrive at time 0 and each
    finish sends the next request at once; ``table.arrival`` records when each was sent."""
    front = Router(prefillers or decoders, router)
    back = Router(decoders, router)
    events: list[tuple[float, int, int, object]] = []
    seq = 0
    n = len(table.arrival)
    arrivals = table.arrival
    transfers: list[tuple[int, float, float]] = []
    now, done, next_arrival = 0.0, 0, 0
    if concurrency is not None:
        for i in range(concurrency, n):
            arrivals[i] = math.inf  # sent when an earlier request finishes
    released = min(concurrency or n, n)
    latest = 0.0  # the last iteration an engine completed within kick (see there)

    def kick(e: Engine, t: float) -> None:
        nonlocal seq, done, latest
        if e.busy:
            return
        # An engine may plan decode-only iterations up to the next arrival; with prefill
        # instances, handed-off prompts can reach it at any time, so it plans one at a time.
        horizon = t if prefillers else arrivals[next_arrival] if next_arrival < n else math.inf
        end, finished, completed = _run_ahead(e, t, horizon, concurrency is None and not prefillers)
        latest, done = max(latest, completed), done + finished
        if progress is not None and finished:
            progress(done, n)
        if end is not None:
            e.busy = True
            seq += 1
            heapq.heappush(events, (end, seq, ENGINE_DONE, e))

    while next_arrival < n or events:
        # Admit every arrival due before the next engine event (arrivals at equal times first).
        if next_arrival < n and (not events or arrivals[next_arrival] <= events[0][0]):
            now = arrivals[next_arrival]
            woken = []
            while next_arrival < n and arrivals[next_arrival] == now:
                e = front.pick()
                e.enqueue(next_arrival)
                next_arrival += 1
                if not e.busy and e not in woken:  # (a kick may run an engine until it is idle)
                    woken.append(e)
            for e in woken:
                kick(e, now)
            continue
        now, _, kind, payload = heapq.heappop(events)
        if kind == ENGINE_DONE:
            e = payload
            e.busy = False
            before = e.outstanding
            handoff = e.complete(now)
            finished = before - e.outstanding - len(handoff)
            done += finished
            if concurrency is not None:
                for rid in range(released, min(released + finished, n)):
                    arrivals[rid] = now
                released = min(released + finished, n)
            for rid in handoff:
                seq += 1
                t = now + kv_transfer_s(table.inp[rid]) if kv_transfer_s else now
                transfers.append((rid, now, t))
                heapq.heappush(events, (t, seq, KV_READY, rid))
            kick(e, now)
            if progress is not None and finished:
                progress(done, n)
        else:  # KV_READY
            e = back.pick()
            e.enqueue(payload)
            kick(e, now)
    return max(now, latest), transfers
