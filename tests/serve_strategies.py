"""Helpers shared by the serving tests: a scenario from a base tree with sections overridden, and
Hypothesis schedulers over a small KV cache, so that queueing, preemption (recompute or swap) and
admission limits all happen."""

from __future__ import annotations

import copy

from hypothesis import strategies as st

from sextant.spec.serving import ServeScenario

BASE = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 1}}


def scenario_over(base: dict, **kw) -> ServeScenario:
    """``base`` with each keyword's section updated (a dict) or replaced (anything else)."""
    tree = copy.deepcopy(base)
    for key, value in kw.items():
        if isinstance(value, dict):
            tree.setdefault(key, {}).update(value)
        else:
            tree[key] = value
    return ServeScenario.model_validate(tree)


@st.composite
def tight_schedulers(draw, batchings=("static", "continuous", "chunked")) -> dict:
    """A scenario tree: one to three replicas of Llama 3.1 8B on H100s at 24.5-30% memory
    utilization, 120 requests of random lengths, all at once or a Poisson stream."""
    rate = draw(st.one_of(st.none(), st.floats(1.0, 500.0)))
    batching = draw(st.sampled_from(batchings))
    allocation = draw(st.sampled_from(["on_demand", "reserve"]))
    budget = draw(st.integers(600, 4096))
    if batching == "continuous" and allocation == "on_demand":
        budget = max(budget, 512 + 1000)  # a preempted request's prompt and output fit one prefill
    return {**BASE, "hardware": {**BASE["hardware"], "gpus": draw(st.integers(1, 3))},
            "scheduler": {"batching": batching, "kv_allocation": allocation,
                          "preemption": draw(st.sampled_from(["recompute", "swap"])),
                          "max_batch": draw(st.integers(1, 48)), "token_budget": budget,
                          "gpu_memory_utilization": draw(st.floats(0.245, 0.3))},
            "workload": {"input_len": {"distribution": "exponential", "mean": 200, "max": 512},
                         "output_len": {"distribution": "uniform", "mean": 300, "stdev": 150, "max": 1000},
                         "num_requests": 120, "seed": draw(st.integers(0, 10_000)),
                         **({"rate": rate} if rate else {})}}
