"""Decode runs: an engine plans its decode-only iterations up to the next finish, arrival or
block shortage at once. Forced back to one iteration at a time, every simulation must give the
same numbers to the last bit."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_strategies import tight_schedulers

from sextant.serve.accounting import SecondsLog
from sextant.serve.engine import Engine
from sextant.serve.predict import run, summarise
from sextant.spec.serving import ServeScenario

BASE = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 1},
        "workload": {"input_len": 256, "output_len": 64, "num_requests": 64}}


def _tree(**kw) -> dict:
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in kw.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return tree


CASES = {
    "continuous, all at once": _tree(scheduler={"max_batch": 32}),
    "chunked, Poisson arrivals, mixed lengths": _tree(
        scheduler={"batching": "chunked", "token_budget": 1024},
        workload={"rate": 40.0, "num_requests": 150, "seed": 5,
                  "input_len": {"distribution": "exponential", "mean": 300, "max": 2000},
                  "output_len": {"distribution": "uniform", "mean": 200, "stdev": 100, "max": 600}}),
    "tight cache, recompute preemption": _tree(
        scheduler={"gpu_memory_utilization": 0.215, "max_batch": 256, "preemption": "recompute"},
        workload={"input_len": 200, "output_len": 1500, "num_requests": 200}),
    "tight cache, swap preemption": _tree(
        scheduler={"gpu_memory_utilization": 0.215, "max_batch": 256, "preemption": "swap"},
        workload={"input_len": 200, "output_len": 1500, "num_requests": 200}),
    "low rate: runs go on past finishes, prefix caching": _tree(
        scheduler={"prefix_caching": True, "cuda_graphs": True},
        workload={"rate": 3.0, "num_requests": 150, "seed": 4, "shared_prefix": {"tokens": 128, "groups": 3},
                  "input_len": {"distribution": "lognormal", "mean": 300, "stdev": 200, "min": 160, "max": 2000},
                  "output_len": {"distribution": "lognormal", "mean": 150, "stdev": 120, "max": 900}}),
    "chunked, tight cache: a prefill waits for the blocks a finish frees": _tree(
        scheduler={"batching": "chunked", "token_budget": 512, "gpu_memory_utilization": 0.215, "max_batch": 64},
        workload={"rate": 4.0, "num_requests": 80, "seed": 3, "input_len": {"distribution": "uniform", "mean": 6000,
                                                                             "stdev": 2500, "max": 12000},
                  "output_len": {"distribution": "uniform", "mean": 400, "stdev": 300, "max": 900}}),
    "reserved blocks": _tree(scheduler={"kv_allocation": "reserve", "max_batch": 48},
                             workload={"rate": 15.0, "num_requests": 120, "seed": 2}),
    "pipeline engines, least-loaded": _tree(hardware={"gpus": 2}, deployment={"pp": 2},
                                            scheduler={"router": "least_loaded", "max_batch": 16},
                                            workload={"rate": 25.0, "num_requests": 100, "seed": 9}),
    "offloaded weights and KV, CPU attention": {
        "model": "opt-30b", "framework": "flexgen-2023", "deployment": {"precision": "fp16"},
        "hardware": {"gpu": "t4", "gpus": 1, "node": "gcp-n1-highmem-32-t4"},
        "scheduler": {"max_batch": 24},
        "offload": {"weights": "cpu", "kv_cache": "cpu", "kv_attention": "cpu", "micro_batches": 2},
        "workload": {"input_len": 512, "output_len": 32, "num_requests": 48}},
    "KV cache on NVMe, attention on the GPU": {
        "model": "llama-3.1-70b", "framework": "zero-inference-2023", "deployment": {"precision": "fp16"},
        "hardware": {"gpu": "h200", "gpus": 1, "node": "azure-nd-h200-v5"},
        "scheduler": {"max_batch": 16},
        "offload": {"weights": "nvme", "kv_cache": "nvme", "kv_attention": "gpu"},
        "workload": {"input_len": 512, "output_len": 40, "num_requests": 40, "rate": 0.5, "seed": 1}},
}


def _one_at_a_time(monkeypatch) -> None:
    """Every decode-only iteration planned alone: the run's horizon is the iteration's start."""
    planned = Engine._decode_run
    monkeypatch.setattr(Engine, "_decode_run", lambda self, now, horizon: planned(self, now, now))


def _simulated(tree: dict):
    res, requests, out = run(ServeScenario.model_validate(tree))
    return out, summarise(res, requests, out).model_dump()


@pytest.mark.parametrize("name", list(CASES))
def test_decode_runs_are_bit_identical_to_single_iterations(name, monkeypatch):
    out, result = _simulated(CASES[name])
    _one_at_a_time(monkeypatch)
    alone, expected = _simulated(CASES[name])
    assert out.table.first == alone.table.first and out.table.finish == alone.table.finish
    assert out.table.preemptions == alone.table.preemptions
    for mine, theirs in zip(out.engines, alone.engines, strict=True):
        assert mine.parts == theirs.parts and mine.resource_busy == theirs.resource_busy
        assert (mine.iterations, mine.peak_used, mine.free) == (theirs.iterations, theirs.peak_used, theirs.free)
    assert result == expected


def _every_iteration_through_the_heap(monkeypatch) -> None:
    """The event loop completes every iteration itself: no engine runs ahead to the next arrival."""
    from sextant.serve import simulator

    ahead = simulator._run_ahead
    monkeypatch.setattr(simulator, "_run_ahead", lambda e, t, horizon, _: ahead(e, t, horizon, False))


def _simulated_with_progress(tree: dict):
    ticks: list[tuple[int, int]] = []
    res, requests, out = run(ServeScenario.model_validate(tree), progress=lambda done, total: ticks.append(done))
    return out, summarise(res, requests, out).model_dump(), ticks


@pytest.mark.parametrize("name", list(CASES))
def test_running_ahead_to_the_next_arrival_changes_nothing(name, monkeypatch):
    """An engine whose iteration ends before the next arrival completes it and plans the next at
    once, without a round through the event heap: every time, total, the makespan and the count
    the progress bar ends at are those of the loop that completes each iteration itself."""
    out, result, ticks = _simulated_with_progress(CASES[name])
    _every_iteration_through_the_heap(monkeypatch)
    alone, expected, alone_ticks = _simulated_with_progress(CASES[name])
    assert (out.table.first, out.table.finish) == (alone.table.first, alone.table.finish)
    assert out.makespan_s == alone.makespan_s
    for mine, theirs in zip(out.engines, alone.engines, strict=True):
        assert (mine.parts, mine.iterations, mine.peak_used) == (theirs.parts, theirs.iterations, theirs.peak_used)
    assert result == expected
    assert ticks[-1] == alone_ticks[-1] == len(out.table.finish)
    assert ticks == sorted(ticks)


class _Forgetful(dict):
    """A memo that keeps nothing."""

    def __setitem__(self, key, value) -> None:
        pass


LONE_CHUNKS = _tree(scheduler={"batching": "chunked", "token_budget": 512},
                    workload={"rate": 0.5, "num_requests": 40, "seed": 6, "output_len": 8,
                              "input_len": {"distribution": "uniform", "mean": 768, "stdev": 256, "min": 512,
                                            "max": 1024}})


@pytest.mark.parametrize("name", ["low rate: runs go on past finishes, prefix caching", "lone chunks",
                                  "KV cache on NVMe, attention on the GPU"])
def test_a_lone_prefill_costed_once_is_the_one_costed_each_time(name, monkeypatch):
    """An iteration that prefills one prompt chunk alone is costed once per (chunk, cached
    tokens, prompt); recomputed every time, every number is the same to the bit. In "lone
    chunks" a 512-token chunk is a whole prompt, the first half of one or its second half
    (a different head and attention), at a rate where each is prefilled alone."""
    tree = LONE_CHUNKS if name == "lone chunks" else CASES[name]
    out, result = _simulated(tree)
    assert any(e._lone_prefills for e in out.engines) == (name != "KV cache on NVMe, attention on the GPU")
    planned = Engine.__init__

    def forgetful(self, *args, **kwargs):
        planned(self, *args, **kwargs)
        self._lone_prefills = _Forgetful()
    monkeypatch.setattr(Engine, "__init__", forgetful)
    alone, expected = _simulated(tree)
    assert (out.table.first, out.table.finish) == (alone.table.first, alone.table.finish)
    assert [e.parts for e in out.engines] == [e.parts for e in alone.engines]
    assert result == expected


@pytest.mark.parametrize("name", ["low rate: runs go on past finishes, prefix caching", "pipeline engines, least-loaded"])
def test_running_ahead_traces_every_iteration_in_order(name, monkeypatch):
    """With --trace-out every iteration is planned alone; running ahead records them in the
    same order, at the same times, as the loop that completes each through the event heap."""
    scenario = ServeScenario.model_validate(CASES[name])
    out = run(scenario, trace=True)[2]
    _every_iteration_through_the_heap(monkeypatch)
    alone = run(scenario, trace=True)[2]
    assert out.traces == alone.traces and sum(len(t) for t in out.traces.values()) > 1000
    assert out.makespan_s == alone.makespan_s


def test_tight_cache_cases_do_preempt():
    """The preemption cases above test what they claim to: blocks run out mid-run."""
    for name in ("tight cache, recompute preemption", "tight cache, swap preemption"):
        out, _ = _simulated(CASES[name])
        assert out.table.preemptions > 0, name


def test_a_run_plans_many_iterations_at_once(monkeypatch):
    """64 requests at once, 32 at a time: two prefills, then decode runs between the finishes.
    Planned one at a time the engine starts once per iteration."""
    starts = []
    planned = Engine.start
    monkeypatch.setattr(Engine, "start", lambda self, now, horizon=np.inf: starts.append(now) or
                        planned(self, now, horizon))
    out, _ = _simulated(CASES["continuous, all at once"])
    iterations = out.engines[0].iterations
    assert iterations > 120  # 2 waves of 63 decode steps, plus the prefills
    assert len(starts) < 12
    starts.clear()
    _one_at_a_time(monkeypatch)
    _simulated(CASES["continuous, all at once"])
    assert len(starts) == iterations + 1  # the last start finds no work


def test_at_low_rates_a_run_goes_on_past_finishes(monkeypatch):
    """One engine, nothing waiting: a finish frees blocks nobody can use before the next arrival,
    so a run decodes on with the smaller batch. The engine starts about twice per request (a
    prefill, then a run up to the next arrival), not once more per finish; with a closed loop,
    where a finish sends the next request, runs stop at finishes again."""
    starts = []
    planned = Engine.start
    monkeypatch.setattr(Engine, "start", lambda self, now, horizon=np.inf: starts.append(now) or
                        planned(self, now, horizon))
    tree = CASES["low rate: runs go on past finishes, prefix caching"]
    out, _ = _simulated(tree)
    requests = len(out.table.finish)
    assert len(starts) < 2.3 * requests
    finishes_inside = sum(1 for f in out.table.finish if f not in set(starts))
    assert finishes_inside > requests // 4  # finishes that no plan started from
    starts.clear()
    closed = _tree(workload={"concurrency": 4, "num_requests": 60, "output_len": {"distribution": "uniform",
                                                                                  "mean": 64, "stdev": 30}})
    out, _ = _simulated(closed)
    assert set(out.table.finish) <= set(starts) | {out.makespan_s}


def test_a_run_stops_before_an_arrival():
    """With arrivals spread out, runs end at each arrival, so that the engine can admit it."""
    out, _ = _simulated(CASES["chunked, Poisson arrivals, mixed lengths"])
    first = np.asarray(out.table.first)
    arrival = np.asarray(out.table.arrival)
    assert (first > arrival).all()
    # An arrival while the engine decodes starts its prefill within about one iteration: the
    # engine did not decode on past it.
    waits = first - arrival
    step = out.makespan_s / out.engines[0].iterations
    assert np.median(waits) < 20 * step


@settings(max_examples=60, deadline=None)
@given(groups=st.lists(st.tuples(st.integers(1, 40), st.sampled_from(["float", "list", "array"]), st.booleans(),
                                 st.floats(0.0, 1.0)), min_size=1, max_size=60))
def test_seconds_log_adds_in_iteration_order(groups):
    """The log's totals are a running ``total += seconds`` per iteration, to the last bit, whether
    a group of iterations adds one float each, a list or an array of one per iteration."""
    log = SecondsLog(("a", "b"), ("gpu",))
    rng = np.random.default_rng(len(groups))
    expected = {"a": 0.0, "b": 0.0, "gpu": 0.0}
    for count, kind, busy, value in groups:
        per_iteration = rng.uniform(1e-6, 1e-2, count)
        a = {"float": value, "list": per_iteration.tolist(), "array": per_iteration}[kind]
        log.add(count, (a, value * 3), {"gpu": a} if busy else {})
        for i in range(count):
            seconds = value if kind == "float" else float(per_iteration[i])
            expected["a"] += seconds
            expected["b"] += value * 3
            if busy:
                expected["gpu"] += seconds
    parts, resources = log.totals()
    assert parts == {"a": expected["a"], "b": expected["b"]} and resources == {"gpu": expected["gpu"]}


@settings(max_examples=12, deadline=None)
@given(tree=tight_schedulers(("continuous", "chunked")))
def test_decode_runs_match_single_iterations_on_random_schedulers(tree):
    """Small KV caches (preemption, queueing), random lengths and arrivals, several replicas."""
    out, result = _simulated(tree)
    with pytest.MonkeyPatch.context() as mp:
        _one_at_a_time(mp)
        alone, expected = _simulated(tree)
    assert out.table.finish == alone.table.finish and result == expected
    with pytest.MonkeyPatch.context() as mp:
        _every_iteration_through_the_heap(mp)
        through_heap, expected = _simulated(tree)
    assert out.table.finish == through_heap.table.finish and result == expected
    assert out.makespan_s == through_heap.makespan_s


@settings(max_examples=400, deadline=None)
@given(total=st.one_of(st.just(0.0), st.floats(0.0, 1e6), st.integers(0, 64).map(float)),
       value=st.one_of(st.floats(1e-15, 10.0), st.integers(-60, 3).map(lambda e: 2.0 ** e),
                       st.integers(1, 40).map(lambda i: 0.125 * i), st.just(0.1)),
       count=st.integers(1, 3000))
def test_repeated_sum_is_one_addition_at_a_time(total, value, count):
    """The closed form of a float added many times is the loop's result to the last bit,
    including the additions that tie (round half to even) and those that cross a binade."""
    from sextant.serve.accounting import repeated_sum

    expected = total
    for _ in range(count):
        expected += value
    assert repeated_sum(total, value, count) == expected


@functools.cache
def _cost(host: str):
    """An iteration cost of Llama 3.1 8B on one H100, its host seconds as ``host`` says."""
    tree = _tree(scheduler={"cuda_graphs": host == "graphed"})
    cost = run(ServeScenario.model_validate(tree))[2].engines[0].cost
    if host in ("lagging", "synchronous"):  # a calibrated profile's per-layer launch cost
        cost.host_s, cost.host_sync = 0.004, host == "synchronous"
        cost._lines, cost._context_tables = {}, {}
    return cost


@pytest.mark.parametrize("host", ["none", "lagging", "synchronous", "graphed"])
@settings(max_examples=60, deadline=None)
@given(seqs=st.integers(1, 12), s0=st.one_of(st.integers(0, 30000), st.floats(0.0, 30000.0)),
       first=st.integers(1, 4000), length=st.integers(1, 300), cut=st.one_of(st.none(), st.floats(0.0, 1.2)),
       tokens_per_step=st.sampled_from([1.0, 2.0, 1.7]))
def test_decode_run_is_decode_steps_one_at_a_time(host, seqs, s0, first, length, cut, tokens_per_step):
    """Every way a run is evaluated (plain Python stepping whole contexts or computing each,
    the context table, NumPy over the run, each with the host's seconds fixed or per iteration)
    gives the iterations decode_steps gives one at a time: the same count before the horizon,
    the same ends and the same totals, to the bit (contexts are fractional with speculative
    decoding's expected tokens per step)."""
    from sextant.serve.iteration import IterationCost

    cost = _cost(host)
    start, per_step = 12.5, tokens_per_step * seqs
    estimate = length * cost.decode_steps(seqs, s0 + per_step * first).duration
    horizon = np.inf if cut is None else start + cut * estimate
    seconds = SecondsLog(IterationCost.PARTS, IterationCost.RESOURCES)
    seconds.store(("gemm", "attention", "gpu", "host_overhead"), [3.0] * 4)
    k, end, last = cost.decode_run(seqs, float(s0), per_step, first, length, start, horizon, seconds)

    expected = dict.fromkeys((*IterationCost.PARTS, *IterationCost.RESOURCES), 0.0)
    expected.update(dict.fromkeys(("gemm", "attention", "gpu", "host_overhead"), 3.0))
    t = previous = start
    steps = 0
    for j in range(first, first + length):
        if steps and t >= horizon:
            break
        one = cost.decode_steps(seqs, s0 + per_step * j)
        for key, value in zip(IterationCost.PARTS, (one.gemm, one.elementwise, one.communication, one.attention,
                                                    one.wait, one.host)):
            expected[key] += value
        for key, value in one.busy.items():
            expected[key] += value
        previous, t = t, t + one.duration
        steps += 1
    parts, busy = seconds.totals()
    assert (k, end, last) == (steps, t, previous)
    assert {**parts, **busy} == expected


@settings(max_examples=200, deadline=None)
@given(phase=st.lists(st.integers(0, 5), min_size=16, max_size=16), first=st.integers(0, 10_000),
       steps=st.integers(0, 200))
def test_blocks_taken_counts_each_steps_blocks(phase, first, steps):
    """The blocks the steps after ``first`` take: the sequences whose phase is each step's
    residue, added up step by step, as the tabulated cycle counts them."""
    from sextant.serve.kv_blocks import BlockCycle, blocks_taken

    by_step = sum(phase[(first + i) % 16] for i in range(1, steps + 1))
    assert blocks_taken(phase, first, steps) == by_step == BlockCycle.after(phase, first).taken(steps)
    assert blocks_taken(phase, first, steps, sum(phase)) == by_step


@settings(max_examples=100, deadline=None)
@given(iterations=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.booleans()), min_size=1,
                           max_size=30))
def test_seconds_log_adds_one_iteration_as_add_does(iterations):
    """add_one is add(1, ...) for an iteration's real numbers (floats, ints, NumPy scalars)."""
    one, many = SecondsLog(("a", "b"), ("gpu",)), SecondsLog(("a", "b"), ("gpu",))
    for a, b, scalar in iterations:
        parts = (np.float64(a), 0) if scalar else (a, b)
        one.add_one(parts, {"gpu": a + b})
        many.add(1, parts, {"gpu": a + b})
    assert one.totals() == many.totals()
    assert all(type(v) is float for totals in one.totals() for v in totals.values())
