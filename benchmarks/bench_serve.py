"""A 100,000-request continuous-batching trace for Llama 3.1 8B on one H100, timed.

    python benchmarks/bench_serve.py [--requests N]

Prints the simulated requests per wall-second and the wall time of the whole prediction (trace
generation, simulation, percentiles). Issue 4's target on a 2-core machine: at most 10 s.
The workload is ShareGPT-like (lognormal lengths, mean 256 input / 192 output tokens) arriving
as a Poisson stream at 90% of what the engine sustains, so batches stay large and the queue
stays bounded; a second run replays the same requests offline (all at time 0); a third runs them
through the vllm-v1-0.15 preset (CUDA graphs, async scheduling, prefix caching of shared system
prompts).
"""

from __future__ import annotations

import argparse
import time

from sextant.serve.predict import predict_serve
from sextant.spec.serving import ServeScenario


def scenario(n: int, rate: float | None, batching: str = "continuous", engine: str | None = None) -> ServeScenario:
    workload = {"input_len": {"distribution": "lognormal", "mean": 256, "stdev": 200, "min": 64, "max": 4096},
                "output_len": {"distribution": "lognormal", "mean": 192, "stdev": 150, "max": 2048},
                "num_requests": n, "seed": 1}
    if rate is not None:
        workload["rate"] = rate
    if engine is not None:  # today's engine: CUDA graphs, async scheduling, prompts sharing system prompts
        workload["shared_prefix"] = {"tokens": 48, "groups": 20}
        return ServeScenario.model_validate({"model": "llama-3.1-8b", "framework": engine,
                                             "hardware": {"gpu": "h100-sxm", "gpus": 1}, "workload": workload})
    return ServeScenario.model_validate({"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 1},
                                         "scheduler": {"batching": batching}, "workload": workload})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    n = ap.parse_args().requests
    predict_serve(scenario(1000, None))  # warm imports and catalog caches
    start = time.perf_counter()
    offline = predict_serve(scenario(n, None))
    wall_off = time.perf_counter() - start
    capacity = offline.requests_per_s
    for title, sc in (("offline (all at t=0)", None), (f"Poisson at {0.9 * capacity:.1f} req/s", 0.9 * capacity)):
        start = time.perf_counter()
        r = offline if sc is None else predict_serve(scenario(n, sc))
        wall = wall_off if sc is None else time.perf_counter() - start
        print(f"Llama 3.1 8B on 1 H100, {n:,} requests, continuous batching, {title}")
        print(f"  simulated {r.iterations:,} iterations; {n / wall:,.0f} requests per wall-second; wall {wall:.2f} s")
        print(f"  predicted {r.output_tokens_per_s:,.0f} output tokens/s, TTFT p50 {r.ttft_ms.p50:.0f} ms, "
              f"TPOT p50 {r.tpot_ms.p50:.1f} ms, KV peak {r.kv_cache_peak_fraction:.0%}, "
              f"{r.preemptions} preemptions")
    from sextant.catalog.frameworks import get_serving_framework
    from sextant.errors import SextantError
    try:
        get_serving_framework("vllm-v1-0.15")
    except SextantError:
        return  # an older checkout without the preset
    start = time.perf_counter()
    r = predict_serve(scenario(n, 0.9 * capacity, engine="vllm-v1-0.15"))
    wall = time.perf_counter() - start
    print(f"Llama 3.1 8B on 1 H100, {n:,} requests, vllm-v1-0.15 (CUDA graphs, async scheduling, prefix caching), "
          f"Poisson at {0.9 * capacity:.1f} req/s")
    print(f"  simulated {r.iterations:,} iterations; {n / wall:,.0f} requests per wall-second; wall {wall:.2f} s")


if __name__ == "__main__":
    main()
