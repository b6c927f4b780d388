"""Decode runs: an engine plans its decode-only iterations up to the next finish, arrival or
block shortage at once. Forced back to one iteration at a time, every simulation must give the
same numbers to the last bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_strategies import tight_schedulers

from sextant.serve.engine import Engine, _summed
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


@settings(max_examples=40, deadline=None)
@given(start=st.floats(0.0, 1e3), values=st.lists(st.floats(1e-9, 1.0), min_size=1, max_size=300),
       count=st.integers(1, 300))
def test_summed_adds_in_order(start, values, count):
    """The run's accumulators add per-iteration seconds one at a time, as single iterations do."""
    count = min(count, len(values))
    expected = start
    for v in values[:count]:
        expected += v
    constant = start
    for _ in range(count):
        constant += values[0]
    assert _summed([start, start], [np.asarray(values), values[0]], count) == [expected, constant]


@settings(max_examples=12, deadline=None)
@given(tree=tight_schedulers(("continuous", "chunked")))
def test_decode_runs_match_single_iterations_on_random_schedulers(tree):
    """Small KV caches (preemption, queueing), random lengths and arrivals, several replicas."""
    out, result = _simulated(tree)
    with pytest.MonkeyPatch.context() as mp:
        _one_at_a_time(mp)
        alone, expected = _simulated(tree)
    assert out.table.finish == alone.table.finish and result == expected
