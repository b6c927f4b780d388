"""Run the whole test suite N times in a row while a CPU-heavy process runs beside it, and report
each run's result and time: the check of issue 26 that no test depends on the machine's speed or
load (a test that passes only on an idle machine fails here).

    python scripts/tests_under_load.py --runs 10 [--hogs 1] [-- extra pytest args]

The load is ``--hogs`` processes each spinning on arithmetic (default one, on this 2-core
machine half of it). Exit code 0 when every run passed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spin() -> None:
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2**31


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--hogs", type=int, default=1, help="CPU-bound processes running beside the tests")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    results = []
    try:
        for run in range(1, args.runs + 1):
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
                                  cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
            results.append((proc.returncode, seconds))
            print(f"run {run:2d}/{args.runs}: {'passed' if proc.returncode == 0 else 'FAILED'} in {seconds:5.0f} s"
                  + "".join(f"\n    {line}" for line in failed), flush=True)
            if proc.returncode != 0 and not failed:
                print(proc.stdout[-3000:] + proc.stderr[-3000:], flush=True)
    finally:
        for hog in hogs:
            hog.terminate()
    passed = sum(rc == 0 for rc, _ in results)
    times = sorted(s for _, s in results)
    print(f"{passed}/{len(results)} runs passed beside {args.hogs} CPU-bound process(es); "
          f"time per run {times[0]:.0f}-{times[-1]:.0f} s (median {times[len(times) // 2]:.0f} s)")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
