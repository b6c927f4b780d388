"""Evaluation rate of the vectorised training step model (the planner's inner loop).

    python benchmarks/bench_evaluate.py [--rows N]

Prints configurations evaluated per second for a table of N candidate strategies of GPT-3 175B
on 1,024 A100s, and the same rate for one-row calls (the ``predict`` path) for comparison.
Figures are for this machine; compare ratios within one run, not across machines.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sextant.spec.scenario import TrainScenario
from sextant.train.candidates import Candidates
from sextant.train.predict import build_context
from sextant.train.step import evaluate


def random_candidates(n: int, rng: np.random.Generator) -> Candidates:
    tp = rng.choice([1, 2, 4, 8], n)
    pp = rng.choice([1, 2, 4, 8, 16], n)
    dp = 1024 // (tp * pp)
    return Candidates(
        dp=dp, tp=tp, pp=pp, cp=np.ones(n, int), ep=np.ones(n, int),
        vpp=np.ones(n, int), zero=rng.integers(0, 4, n), micro_batch=rng.choice([1, 2, 4], n),
        recompute=rng.integers(0, 3, n), sequence_parallel=tp > 1, schedule=np.ones(n, int),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    ctx, _ = build_context(TrainScenario.model_validate({
        "model": "gpt3-175b", "hardware": {"gpu": "a100-80gb", "gpus": 1024}, "strategy": {"tp": 8, "pp": 8},
        "workload": {"global_batch": 1536, "seq_len": 2048}}))
    cand = random_candidates(args.rows, np.random.default_rng(0))
    evaluate(ctx, random_candidates(1000, np.random.default_rng(1)))  # warm up
    start = time.perf_counter()
    ev = evaluate(ctx, cand)
    table_s = time.perf_counter() - start
    one = random_candidates(1, np.random.default_rng(2))
    start = time.perf_counter()
    for _ in range(200):
        evaluate(ctx, one)
    single_s = (time.perf_counter() - start) / 200
    print(f"table of {args.rows:,} candidates: {table_s:.3f} s, {args.rows / table_s:,.0f} configurations/s")
    print(f"one candidate per call:        {single_s * 1e3:.2f} ms, {1 / single_s:,.0f} configurations/s")
    print(f"vectorised speed-up:           {single_s * args.rows / table_s:,.0f}x")
    print(f"(feasible in memory: {int(ev.fits.sum()):,} of {args.rows:,})")


if __name__ == "__main__":
    main()
