"""Full ``plan train`` searches, timed: the two scenarios issue 3 sets as targets.

    python benchmarks/bench_plan.py

For each search it prints the configurations enumerated, evaluated and feasible, the
evaluation rate (configurations through the cost model per second) and the wall time of the
whole search (enumeration, evaluation, ranking and the top-5 reports). Targets on a 2-core
machine: each search within 2 s, at least 1,000,000 configurations evaluated per second.
"""

from __future__ import annotations

import time

from sextant.plan.search import plan_train
from sextant.spec.scenario import TrainScenario

SEARCHES = {
    "GPT-3 175B on 1,024 A100-80GB (batch 1536, seq 2048)": (
        {"model": "gpt3-175b", "hardware": {"gpu": "a100-80gb"}, "workload": {"global_batch": 1536, "seq_len": 2048}},
        1024),
    "Llama 3.1 405B on 16,384 H100 (batch 2048, seq 8192)": (
        {"model": "llama-3.1-405b", "hardware": {"gpu": "h100-sxm"}, "workload": {"global_batch": 2048, "seq_len": 8192}},
        16384),
}


def main() -> None:
    for title, (scenario, gpus) in SEARCHES.items():
        plan_train(TrainScenario.model_validate(scenario), [gpus], top_k=1)  # warm caches (catalog, imports)
        start = time.perf_counter()
        result = plan_train(TrainScenario.model_validate(scenario), [gpus])
        wall = time.perf_counter() - start
        b = result.best
        print(title)
        print(f"  enumerated {result.configs_total:,}, evaluated {result.configs_evaluated:,}, "
              f"feasible {result.configs_feasible:,}")
        print(f"  evaluation rate {result.evaluations_per_second:,.0f} configurations/s; "
              f"whole search {wall:.2f} s")
        print(f"  best: dp={b.dp} tp={b.tp} pp={b.pp} cp={b.cp} vpp={b.vpp} zero={b.zero} mb={b.micro_batch} "
              f"recompute={b.recompute} sp={b.sequence_parallel}: {b.step_time_s:.2f} s/step, MFU {b.mfu:.1%}")


if __name__ == "__main__":
    main()
