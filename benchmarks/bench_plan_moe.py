"""Mixture-of-experts ``plan train`` searches at scale, timed, with their peak memory.

    python benchmarks/bench_plan_moe.py            # this checkout
    PYTHONPATH=/tmp/old/src python benchmarks/bench_plan_moe.py   # another commit, side by side

Each search runs in a fresh interpreter (so that its peak resident memory is its own) and prints
the configurations enumerated, evaluated and feasible, the wall and CPU seconds of the search,
and the process's peak resident memory. Issue 31's targets on a 2-core machine: DeepSeek-V3 over
64-262,144 GPUs in under 2 s with a peak under 400 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SEARCHES = {
    "DeepSeek-V3 on 65,536 H100": ("deepseek-v3", "65536", 16384),
    "DeepSeek-V3 on 262,144 H100": ("deepseek-v3", "262144", 16384),
    "DeepSeek-V3 over 64-262,144 H100": ("deepseek-v3", "64-262144", 16384),
    "Mixtral 8x7B on 1,024 H100": ("mixtral-8x7b", "1024", 1024),
}

_CHILD = """
import json, resource, sys, time
from sextant.cli.plan_cmds import parse_gpu_counts
from sextant.plan.search import plan_train
from sextant.spec.scenario import TrainScenario
model, gpus, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
scenario = TrainScenario.model_validate({"model": model, "hardware": {"gpu": "h100-sxm"},
                                         "workload": {"global_batch": batch, "seq_len": 4096}})
counts = parse_gpu_counts(gpus)
plan_train(TrainScenario.model_validate({"model": "mixtral-8x7b"}), [8], top_k=1)  # warm imports and caches
cpu, wall = time.process_time(), time.perf_counter()
r = plan_train(scenario, counts, top_k=5)
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "total": r.configs_total, "evaluated": r.configs_evaluated, "feasible": r.configs_feasible,
                  "best": f"{r.best.gpus} GPUs {r.best.layout} mb{r.best.micro_batch} {r.best.recompute}"}))
"""


def main() -> None:
    for title, (model, gpus, batch) in SEARCHES.items():
        done = subprocess.run([sys.executable, "-c", _CHILD, model, gpus, str(batch)], capture_output=True,
                              text=True, env=os.environ, check=False)
        if done.returncode:
            print(f"{title}: failed\n{done.stderr[-2000:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(title)
        print(f"  enumerated {r['total']:,}, evaluated {r['evaluated']:,}, feasible {r['feasible']:,}")
        print(f"  search {r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU; peak resident memory {r['peak_mb']:,.0f} MB")
        print(f"  best: {r['best']}")


if __name__ == "__main__":
    main()
