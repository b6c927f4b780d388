"""Serving simulations across arrival rates, timed: how the cost follows traffic.

    python benchmarks/bench_serve_rates.py [--requests N] [--million]
    PYTHONPATH=/tmp/old/src python benchmarks/bench_serve_rates.py   # another commit, side by side

Llama 3.1 8B on one H100, ShareGPT-like lengths (lognormal, mean 256 input / 192 output tokens),
Poisson arrivals from 1 to 100 requests per second and offline. Prints per rate the CPU and wall
seconds of the whole prediction and the iterations simulated. Issue 31's targets on a 2-core
machine: 100k requests at any rate from 1 to 100 requests/s in under 3 s; with --million, a
million requests at 5 requests/s in under 20 s of CPU.

A shared VM's speed drifts by a third within an hour; for a comparison it cannot move,
benchmarks/bench_serve_instructions.py counts the instructions per request of the same scenario
under valgrind (deterministic to about 1%), beside another commit's tree with --vs.
"""

from __future__ import annotations

import argparse
import time

from sextant.serve.predict import predict_serve
from sextant.spec.serving import ServeScenario


def scenario(n: int, rate: float | None) -> ServeScenario:
    workload = {"input_len": {"distribution": "lognormal", "mean": 256, "stdev": 200, "min": 64, "max": 4096},
                "output_len": {"distribution": "lognormal", "mean": 192, "stdev": 150, "max": 2048},
                "num_requests": n, "seed": 1, **({"rate": rate} if rate is not None else {})}
    return ServeScenario.model_validate({"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 1},
                                         "workload": workload})


def timed(n: int, rate: float | None) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    r = predict_serve(scenario(n, rate))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    label = "offline" if rate is None else f"{rate:g} req/s"
    print(f"  {label:>10}: {cpu:6.2f} s CPU, {wall:6.2f} s wall, {r.iterations:>11,} iterations, "
          f"TTFT p50 {r.ttft_ms.p50:.1f} ms, TPOT p50 {r.tpot_ms.p50:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--million", action="store_true", help="also a million requests at 5 requests/s")
    args = ap.parse_args()
    predict_serve(scenario(500, 5.0))  # warm imports and catalog caches
    print(f"Llama 3.1 8B on 1 H100, {args.requests:,} requests, continuous batching")
    for rate in (None, 100.0, 40.0, 20.0, 5.0, 1.0):
        timed(args.requests, rate)
    if args.million:
        print("Llama 3.1 8B on 1 H100, 1,000,000 requests")
        timed(1_000_000, 5.0)


if __name__ == "__main__":
    main()
