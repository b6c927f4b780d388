"""The CPU loop's timing agreement: calibrate this machine (quick), then measure the tiny reference
Llama for real, training steps and decode steps, and print predicted against measured.

    python benchmarks/bench_measure_cpu.py [--runs N] [--profile FILE]

Needs PyTorch (``pip install -e '.[torch]'``). Issue 5's target on a 2-core CPU: within 30%. The
figure depends on the machine and its load: a decode step of the tiny model is about 5 ms, mostly
host overhead, which other jobs on a shared machine move by half, and the quick calibration
measures that overhead under the same load. The median of ``--runs`` measured runs is compared
(the prediction is deterministic for a profile); each run's error is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sextant.calibrate.runner import calibrate, write
from sextant.measure.runner import measure_serve, measure_train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", help="A CPU profile to use instead of calibrating now.")
    args = ap.parse_args()
    profile = args.profile
    if profile is None:
        start = time.perf_counter()
        profile = str(Path(tempfile.mkdtemp()) / "cpu.json")
        write(calibrate("cpu", quick=True), profile)
        print(f"calibrated this CPU (quick) in {time.perf_counter() - start:.0f} s: {profile}")
    for kind, run in (("training step", lambda: measure_train("cpu", profile=profile, steps=5)),
                      ("decode step", lambda: measure_serve("cpu", profile=profile))):
        results = [run() for _ in range(args.runs)]
        predicted = results[0].predicted_step_time_s
        measured = statistics.median(r.measured_step_time_s for r in results)
        print(f"{kind}: predicted {predicted * 1e3:.2f} ms, measured median {measured * 1e3:.2f} ms over {args.runs} "
              f"runs: error {(predicted - measured) / measured:+.1%} (target within 30%); per run "
              + ", ".join(f"{r.error:+.0%}" for r in results))


if __name__ == "__main__":
    main()
