"""Start-up of the command line, as a user pays it: each command a fresh process.

    python benchmarks/bench_startup.py [--runs 7]

Prints, per command, the median and minimum CPU time (user + system, children included) and
wall time over the runs. Targets (issue 31) on a 2-core machine: ``sextant --help`` under 0.3 s
of CPU; ``sextant predict train`` with no arguments under 0.6 s wall. To compare two commits,
run it with ``PYTHONPATH=<other checkout>/src`` beside this one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "sextant --help": ["--help"],
    "sextant predict train": ["predict", "train"],
    "sextant predict serve (64 requests)": ["predict", "serve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm",
                                            "--num-requests", "64"],
}


#: What the ``sextant`` script runs (its console entry point), in a fresh interpreter.
LAUNCH = "import sys; from sextant.cli.app import main; sys.exit(main(sys.argv[1:]))"


def run_once(args: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fresh process."""
    before = os.times()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", LAUNCH, *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    print(f"{'command':40s} {'CPU median':>11s} {'CPU min':>9s} {'wall median':>12s} {'wall min':>9s}")
    for title, args in COMMANDS.items():
        samples = [run_once(args) for _ in range(runs)]
        cpu, wall = [s[0] for s in samples], [s[1] for s in samples]
        print(f"{title:40s} {statistics.median(cpu):10.3f}s {min(cpu):8.3f}s {statistics.median(wall):11.3f}s "
              f"{min(wall):8.3f}s")


if __name__ == "__main__":
    main()
