"""A DeepSpeed JSON config and ``deepspeed`` launcher arguments for a training scenario.

Keys from DeepSpeed's config schema (deepspeed/runtime/config.py, runtime/zero/config.py,
runtime/zero/offload_config.py, runtime/tensor_parallel/config.py at v0.19.8):
``train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x dp``;
``zero_optimization.stage`` 0-3 with ``offload_optimizer`` / ``offload_param`` to ``cpu`` or
``nvme`` (ZeRO-Offload, ZeRO-Infinity); ``tensor_parallel.autotp_size`` for AutoTP training. The
model and its data loader are the training script's: DeepSpeed wraps what the script builds.
"""

from __future__ import annotations

import json

from sextant.export.job import TrainJob
from sextant.export.launch import ExportError, LaunchConfig

FRAMEWORK = "DeepSpeed 0.19.8"
NAME = "DeepSpeed"
CONFIG_FILE = "ds_config.json"
HOSTFILE = "hostfile"
#: Where ZeRO-Infinity's NVMe swap files go; the user's node decides.
NVME_PATH = "/local_nvme"


def export_deepspeed(job: TrainJob) -> LaunchConfig:
    _refuse_unsupported(job)
    s, w = job.strategy, job.workload
    config: dict = {
        "train_batch_size": w.global_batch,
        "train_micro_batch_size_per_gpu": s.micro_batch,
        "gradient_accumulation_steps": job.grad_accumulation,
        "gradient_clipping": 1.0,
        "steps_per_print": 1,
        "zero_optimization": _zero_section(job),
    }
    if s.precision in ("bf16", "fp16"):
        config[s.precision] = {"enabled": True}
    if w.optimizer in ("adamw", "adam"):
        config["optimizer"] = {"type": "AdamW" if w.optimizer == "adamw" else "Adam",
                               "params": {"lr": 3.0e-4, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.1}}
    if s.tp > 1:
        config["tensor_parallel"] = {"autotp_size": s.tp}
    if s.recompute != "none" or s.offload_activations != "none":
        config["activation_checkpointing"] = {"partition_activations": s.partition_activations,
                                              "cpu_checkpointing": s.offload_activations == "cpu",
                                              "contiguous_memory_optimization": False}
    argv = ["deepspeed", "--num_nodes", str(job.nodes), "--num_gpus", str(job.gpus_per_node)]
    files = {CONFIG_FILE: json.dumps(config, indent=2) + "\n"}
    if job.nodes > 1:
        argv += ["--hostfile", HOSTFILE]
        files[HOSTFILE] = "".join(f"node-{i} slots={job.gpus_per_node}\n" for i in range(job.nodes))
    argv += ["train.py", "--deepspeed", "--deepspeed_config", CONFIG_FILE]
    return LaunchConfig(format="deepspeed", framework=FRAMEWORK, argv=argv, files=files, notes=_notes(job))


def _zero_section(job: TrainJob) -> dict:
    s = job.strategy
    zero: dict = {"stage": s.zero, "overlap_comm": s.overlap.dp_grad_reduce, "contiguous_gradients": True}
    if s.offload_optimizer in ("cpu", "nvme"):
        zero["offload_optimizer"] = {"device": s.offload_optimizer, "pin_memory": True,
                                     **({"nvme_path": NVME_PATH} if s.offload_optimizer == "nvme" else {})}
    if s.offload_params in ("cpu", "nvme"):
        zero["offload_param"] = {"device": s.offload_params, "pin_memory": True,
                                 **({"nvme_path": NVME_PATH} if s.offload_params == "nvme" else {})}
    return zero


def _notes(job: TrainJob) -> list[str]:
    s, w = job.strategy, job.workload
    notes = ["train.py is your training script: it builds the model and data loader, calls "
             "deepspeed.initialize(args=args, model=model, model_parameters=model.parameters()) and runs the steps"]
    if job.nodes > 1:
        notes.append(f"{HOSTFILE}: replace node-0 ... node-{job.nodes - 1} with the hosts' names (reachable by ssh)")
    if "nvme" in (s.offload_optimizer, s.offload_params):
        notes.append(f"ZeRO-Infinity swaps to {NVME_PATH}: point nvme_path at a local NVMe mount")
    if s.recompute != "none":
        notes.append("activation_checkpointing applies to layers the script wraps with "
                     "deepspeed.checkpointing.checkpoint; recomputation is the script's choice")
    if w.optimizer not in ("adamw", "adam"):
        notes.append(f"no optimizer section: pass the {w.optimizer} optimizer to deepspeed.initialize(optimizer=...)")
    if s.precision in ("fp32", "tf32"):
        notes.append("no bf16/fp16 section: DeepSpeed trains in fp32 (TF32 matmuls are torch's setting)")
    return notes + job.preset_note(NAME, "deepspeed")


def _refuse_unsupported(job: TrainJob) -> None:
    s, w = job.strategy, job.workload
    reasons = (  # (refused?, why): the first that applies is reported
        (s.pp > 1, "pipeline parallelism needs the model written as a deepspeed.pipe.PipelineModule; export "
                   "--format megatron for a pipelined job"),
        (s.cp > 1, "context parallelism: DeepSpeed splits sequences with Ulysses all-to-all, not ring attention"),
        (job.model.is_moe and s.ep > 1, "expert parallelism needs DeepSpeed-MoE layers in the model code"),
        (s.precision == "fp8", "FP8 training is not a DeepSpeed config option (Transformer Engine in the model code)"),
        (s.offload_optimizer == "interleaved", "interleaved CPU/GPU optimizer updates (Deep Optimizer States) are "
                                               "not in DeepSpeed"),
        (s.offload_params != "none" and s.zero != 3, "parameter offloading needs ZeRO stage 3"),
        (s.offload_activations == "nvme", "activation checkpoints go to host memory at most (cpu_checkpointing)"),
        (w.method != "full", f"method {w.method}: adapters and projections are the training script's, not "
                             "DeepSpeed's"),
        (s.sequence_parallel, "Megatron-style sequence parallelism is not DeepSpeed AutoTP's (export --format "
                              "megatron)"),
    )
    for refused, why in reasons:
        if refused:
            raise ExportError(NAME, why)
