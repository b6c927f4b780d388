"""``plan serve`` timed on four single-GPU searches and one over eight GPUs.

    python benchmarks/bench_plan_serve.py

Prints, per case, the candidates simulated, the wall time and the rate. Two offload cases
(OPT-30B on FlexGen's T4 machine, Llama-3.1-70B on one H200 with eight striped NVMe drives), a
mixture-of-experts model, whose search adds expert streaming and caching (Mixtral-8x7B in 4-bit
on an RTX 4090, Zipf routing), and one model that fits on the GPU (Llama-3.1-8B on one H100
under continuous batching, 128-token outputs), which costs more per candidate; then Llama-3.1-70B in
fp16 on an 8x A10G node (AWS g5.48xlarge), where the tensor-parallel degree of the replicas (1, 2,
4 or 8) and their pipeline stages are searched too.
"""

from __future__ import annotations

import time

from sextant.plan.serve_search import plan_serve
from sextant.spec.serving import parse_serve_scenario

CASES = {
    "OPT-30B, T4, FlexGen (256 requests, 512 in / 32 out)": {
        "model": "opt-30b", "framework": "flexgen-2023", "deployment": {"precision": "fp16"},
        "hardware": {"gpu": "t4", "gpus": 1, "node": "gcp-n1-highmem-32-t4"},
        "workload": {"input_len": 512, "output_len": 32, "num_requests": 256}},
    "Llama-3.1-70B, H200 + 8 NVMe, ZeRO-Inference (128 requests)": {
        "model": "llama-3.1-70b", "framework": "zero-inference-2023", "deployment": {"precision": "fp16"},
        "hardware": {"gpu": "h200", "gpus": 1, "node": "azure-nd-h200-v5"},
        "workload": {"input_len": 512, "output_len": 32, "num_requests": 128}},
    "Mixtral-8x7B 4-bit, RTX 4090, Zipf routing, continuous batching (64 requests, 512 in / 32 out)": {
        "model": "mixtral-8x7b", "deployment": {"precision": "w4a16"},
        "hardware": {"gpu": "rtx-4090", "gpus": 1, "node": "fuyou-rtx4090-server"},
        "workload": {"input_len": 512, "output_len": 32, "num_requests": 64},
        "offload": {"expert_popularity": "zipf"}},
    "Llama-3.1-8B, H100, continuous batching (256 requests, 512 in / 128 out)": {
        "model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 1},
        "workload": {"input_len": 512, "output_len": 128, "num_requests": 256}},
    "Llama-3.1-70B, 8x A10G, tp, pp and replicas searched (256 requests, 512 in / 64 out)": {
        "model": "llama-3.1-70b", "deployment": {"precision": "fp16"},
        "hardware": {"gpu": "a10g", "gpus": 8, "node": "aws-g5"},
        "workload": {"input_len": 512, "output_len": 64, "num_requests": 256}},
}


def main() -> None:
    plan_serve(parse_serve_scenario(CASES[next(iter(CASES))] | {"workload": {"input_len": 64, "output_len": 4,
                                                                              "num_requests": 4}}))  # warm caches
    for name, tree in CASES.items():
        start = time.perf_counter()
        plan = plan_serve(parse_serve_scenario(tree))
        wall = time.perf_counter() - start
        p = plan.best_policy
        print(f"{name}: {plan.configs_evaluated} candidates in {wall:.2f} s ({plan.configs_evaluated / wall:,.0f}/s); "
              f"best {p.strategy}, batch {p.max_batch} x {p.micro_batches}: {plan.best.output_tokens_per_s:,.1f} tok/s")


if __name__ == "__main__":
    main()
