"""Run Megatron-LM's own ``parse_args`` and ``validate_args`` on ``sextant export --format megatron``
of a set of scenarios, and record the command lines it accepted.

CI cannot import Megatron-LM's training arguments (no package ships them), so this runs where a
checkout is at hand; tests/test_export.py then checks that the exporter still writes exactly the
recorded, accepted arguments (a change to the exporter means running this again). Megatron's
checks need the world size, the environment the export sets, and a GPU generation, which is
stubbed (``get_device_arch_version``, ``torch.cuda.get_device_capability``) to the scenario's GPU: 9 for Hopper, 10 for Blackwell.

    PYTHONPATH=/tmp/Megatron-LM /tmp/mlmvenv/bin/python scripts/check_megatron_exports.py \\
        --commit "$(git -C /tmp/Megatron-LM rev-parse HEAD)"
(with sextant installed in that environment: ``pip install -e .``; see
scripts/dump_framework_options.py for the environment.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from sextant.export import export_train
from sextant.spec.scenario import parse_scenario

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "framework_options" / "megatron-lm-validated.json"

#: Scenarios covering the exporter's branches: dense and MoE, MLA, FP8 on Hopper and Blackwell,
#: each ZeRO stage, recomputation, interleaving, context and expert parallelism, optimizer offload.
SCENARIOS: dict[str, dict] = {
    "llama8b-1node": {"model": "llama-3.1-8b", "framework": "megatron-core-2024", "hardware": {"gpus": 8},
                      "strategy": {"tp": 1, "zero": 1}, "workload": {"global_batch": 128, "seq_len": 8192}},
    "llama70b-fp8-vpp": {"model": "llama-3.1-70b", "framework": "megatron-core-2024", "hardware": {"gpus": 64},
                         "strategy": {"tp": 4, "pp": 4, "vpp": 2, "zero": 1, "recompute": "selective",
                                      "sequence_parallel": True, "precision": "fp8"},
                         "workload": {"global_batch": 256, "seq_len": 8192}},
    "llama405b-cp-full": {"model": "llama-3.1-405b", "framework": "megatron-core-2024", "hardware": {"gpus": 1024},
                          "strategy": {"tp": 8, "pp": 8, "cp": 2, "zero": 1, "recompute": "full",
                                       "sequence_parallel": True},
                          "workload": {"global_batch": 512, "seq_len": 16384}},
    "llama8b-b200-mxfp8-fsdp": {"model": "llama-3.1-8b", "framework": "megatron-core-2024",
                                "hardware": {"gpu": "b200", "gpus": 16},
                                "strategy": {"zero": 3, "precision": "fp8"},
                                "workload": {"global_batch": 128, "seq_len": 8192}},
    "gpt3-zero0-fp16": {"model": "gpt3-175b", "hardware": {"gpu": "a100-80gb", "gpus": 1024},
                        "strategy": {"tp": 8, "pp": 16, "zero": 0, "precision": "fp16", "recompute": "full"},
                        "workload": {"global_batch": 1536, "seq_len": 2048, "dropout": True}},
    "mixtral-ep": {"model": "mixtral-8x7b", "framework": "megatron-core-2024", "hardware": {"gpus": 64},
                   "strategy": {"tp": 2, "pp": 4, "ep": 8, "zero": 1, "sequence_parallel": True},
                   "workload": {"global_batch": 256, "seq_len": 4096}},
    "deepseek-v3": {"model": "deepseek-v3", "framework": "megatron-core-2024", "hardware": {"gpus": 1024},
                    "strategy": {"tp": 2, "pp": 16, "ep": 64, "etp": 1, "zero": 1, "sequence_parallel": True,
                                 "precision": "fp8", "recompute": "selective", "selective_recompute": "mla_up_proj",
                                 "moe_dispatcher": "deepep", "overlap": {"ep_comm": True}},
                    "workload": {"global_batch": 4096, "seq_len": 4096}},
    "qwen3-offload": {"model": "qwen3-8b", "hardware": {"gpus": 8},
                      "strategy": {"zero": 1, "offload_optimizer": "cpu"},
                      "workload": {"global_batch": 64, "seq_len": 4096}},
}

_VALIDATE = """
import json, sys
import megatron.training.arguments as A
import torch
A.get_device_arch_version = lambda: {arch}
torch.cuda.get_device_capability = lambda *device: ({arch}, 0)
sys.argv = ["pretrain_gpt.py"] + json.loads(sys.stdin.read())
args = A.parse_args()
A.validate_args(args)
print(json.dumps({{"dp": args.data_parallel_size, "micro_batches": args.global_batch_size //
                  (args.micro_batch_size * args.data_parallel_size)}}))
"""


def validate(argv: list[str], env: dict[str, str], gpus: int, blackwell: bool) -> dict:
    options = argv[argv.index("pretrain_gpt.py") + 1:]
    run_env = {**os.environ, **env, "WORLD_SIZE": str(gpus), "RANK": "0"}
    if "CUDA_DEVICE_MAX_CONNECTIONS" not in env:
        run_env.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    done = subprocess.run([sys.executable, "-c", _VALIDATE.format(arch=10 if blackwell else 9)],
                          input=json.dumps(options), capture_output=True, text=True, env=run_env, check=False)
    if done.returncode:
        raise SystemExit(f"Megatron-LM refused the export:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--commit", required=True, help="the Megatron-LM commit on PYTHONPATH, recorded as provenance")
    args = cli.parse_args()
    records = {}
    for name, tree in SCENARIOS.items():
        launch = export_train(parse_scenario(tree), "megatron")
        gpus = tree["hardware"]["gpus"]
        checked = validate(launch.argv, launch.env, gpus, tree["hardware"].get("gpu") == "b200")
        records[name] = {"scenario": tree, "env": launch.env, "argv": launch.argv, "megatron": checked}
        print(f"{name}: accepted (dp {checked['dp']}, {checked['micro_batches']} micro-batches)")
    OUT.write_text(json.dumps({"megatron_commit": args.commit, "checked_by": "scripts/check_megatron_exports.py "
                               "(megatron.training.arguments parse_args + validate_args)", "exports": records},
                              indent=1) + "\n", encoding="utf-8")
    print(f"{len(records)} exports accepted -> {OUT}")


if __name__ == "__main__":
    main()
