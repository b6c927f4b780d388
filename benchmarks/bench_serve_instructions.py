"""Instructions per simulated request at each arrival rate, counted by valgrind: a figure that a
shared VM's drifting speed does not move (deterministic to about 1%).

    python benchmarks/bench_serve_instructions.py [--rates 1,5,20,40,100] [--vs OTHER/src]

Each rate runs benchmarks/bench_serve_rates.py's scenario (Llama 3.1 8B on one H100, ShareGPT-like
lengths, Poisson arrivals) at two request counts under ``valgrind --tool=callgrind`` with
``PYTHONHASHSEED=0``; the difference of the instructions over the difference of the requests is
the cost of one request, start-up excluded. ``--vs`` counts another source tree the same way, in
turn (``git worktree add /tmp/old <commit>`` then ``--vs /tmp/old/src``). Needs valgrind; takes a
few minutes (the runs at 1 request/s are the longest).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL, LARGE = 500, 5500

RUN = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from bench_serve_rates import scenario
from sextant.serve.predict import predict_serve
predict_serve(scenario(int(sys.argv[1]), float(sys.argv[2])))
"""


def instructions(src: Path, requests: int, rate: float) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(src))
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", RUN,
                          str(requests), str(rate)], env=env, capture_output=True, text=True, check=True).stderr
    return int(next(line for line in out.splitlines() if "Collected" in line).split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="1,5,20,40,100", help="arrival rates, requests/s, comma-separated")
    ap.add_argument("--vs", type=Path, help="another source tree (its src/ folder) to count beside this one")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    rates = [float(r) for r in args.rates.split(",")]
    trees = {"this": HERE.parent / "src", **({"vs": args.vs.resolve()} if args.vs else {})}
    jobs = [(tree, n, rate) for rate in rates for tree in trees for n in (SMALL, LARGE)]
    with ThreadPoolExecutor(max(1, min(len(jobs), (os.cpu_count() or 1)))) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: instructions(trees[job[0]], job[1], job[2]), jobs)))
    print(f"Instructions per request (valgrind, {LARGE:,} minus {SMALL:,} requests)")
    for rate in rates:
        per = {tree: (counts[(tree, LARGE, rate)] - counts[(tree, SMALL, rate)]) / (LARGE - SMALL) for tree in trees}
        line = f"  {rate:>6g} req/s: this tree {per['this'] / 1e3:8.1f}k"
        if "vs" in per:
            line += f", {args.vs} {per['vs'] / 1e3:8.1f}k ({(per['this'] / per['vs'] - 1) * 100:+.1f}%)"
        print(line)


if __name__ == "__main__":
    main()
