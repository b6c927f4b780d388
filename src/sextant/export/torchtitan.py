"""A ``torchtitan.train`` command line for a training scenario.

torchtitan 0.3 names a model by a registered config (``--module llama3 --config llama3_8b``,
torchtitan/models/*/config_registry.py) and takes every other setting as a CLI override parsed
by its ``ConfigManager`` (tyro); the TOML files of torchtitan 0.1-0.2 are gone. Semantics from
torchtitan/config/configs.py: ``training.local_batch_size`` is one data-parallel rank's batch per
gradient-accumulation step, split into ``pipeline_parallel_microbatch_size`` micro-batches under
pipeline parallelism; forward and backward replay one CUDA graph (``training.disable_cuda_graphs``
off) except with pipeline or expert parallelism; ``data_parallel_shard_degree`` is FSDP2 (ZeRO-3),
``data_parallel_replicate_degree`` DDP; expert parallelism borrows the FSDP and TP ranks, so an
expert is never split by tensor parallelism (etp 1).
"""

from __future__ import annotations

from sextant.export.job import TrainJob
from sextant.export.launch import ExportError, LaunchConfig, flag, torchrun

FRAMEWORK = "torchtitan 0.3.0"
NAME = "torchtitan"

#: GPU generations of torchao's Float8 training (SM89+ or MI300+) and of MXFP8 (SM100+), as the
#: converters check them (torchtitan/components/quantization/float8.py, mx.py).
_FLOAT8_GPUS = frozenset({"ada", "hopper", "blackwell", "cdna3", "cdna4"})
_MXFP8_GPUS = frozenset({"blackwell"})
#: Catalog model -> (torchtitan module, its 16-bit config, its FP8 config and the GPUs that run it).
#: None where the registry has no such config: llama3_405b trains in Float8 (with torch.compile and
#: async TP) and has no bf16 config.
CONFIGS: dict[str, tuple[str, str | None, tuple[str, frozenset[str]] | None]] = {
    "llama-3.1-8b": ("llama3", "llama3_8b", ("llama3_8b_mxfp8", _MXFP8_GPUS)),
    "llama-3.1-70b": ("llama3", "llama3_70b", None),
    "llama-3.1-405b": ("llama3", None, ("llama3_405b", _FLOAT8_GPUS)),
    "qwen3-0.6b": ("qwen3", "qwen3_0_6b", None),
    "qwen3-14b": ("qwen3", "qwen3_14b", None),
    "qwen3-32b": ("qwen3", "qwen3_32b", None),
    "qwen3-30b-a3b": ("qwen3", "qwen3_30b_a3b", None),
    "deepseek-v3": ("deepseek_v3", "deepseek_v3_671b", ("deepseek_v3_671b_float8", _FLOAT8_GPUS)),
}
_SCHEDULES = {"1f1b": "1F1B", "gpipe": "GPipe", "interleaved": "Interleaved1F1B"}


def export_torchtitan(job: TrainJob) -> LaunchConfig:
    s, w, m = job.strategy, job.workload, job.model
    module, config = _registered_config(job)
    _refuse_unsupported(job)
    o = ["--module", module, "--config", config]
    if s.zero == 3:
        o += ["--parallelism.data-parallel-shard-degree", str(job.dp), "--parallelism.data-parallel-replicate-degree", "1"]
    else:  # ZeRO 0: every rank holds everything (DDP)
        o += ["--parallelism.data-parallel-replicate-degree", str(job.dp), "--parallelism.data-parallel-shard-degree", "1"]
    o += ["--parallelism.tensor-parallel-degree", str(s.tp)]
    if s.tp > 1:
        o.append("--parallelism.enable-sequence-parallel" if s.sequence_parallel
                 else "--parallelism.no-enable-sequence-parallel")
    flag(o, "--parallelism.context-parallel-degree", s.cp, when=s.cp > 1)
    flag(o, "--parallelism.expert-parallel-degree", s.ep, when=m.is_moe and s.ep > 1)
    o += ["--training.seq-len", str(w.seq_len), "--training.global-batch-size", str(w.global_batch)]
    if s.pp > 1:
        o += ["--parallelism.pipeline-parallel-degree", str(s.pp),
              "--parallelism.pipeline-parallel-schedule", _SCHEDULES[s.resolved_schedule],
              "--parallelism.pipeline-parallel-layers-per-stage", str(m.num_layers // (s.pp * s.vpp)),
              "--parallelism.pipeline-parallel-microbatch-size", str(s.micro_batch),
              "--training.local-batch-size", str(w.global_batch // job.dp)]
    else:
        o += ["--training.local-batch-size", str(s.micro_batch)]
    o += ["--training.mixed-precision-param", "float32" if s.precision in ("fp32", "tf32") else "bfloat16"]
    flag(o, "--training.enable-cpu-offload", when=s.offload_params == "cpu")
    # torchtitan 0.3 captures forward and backward in one CUDA graph unless told not to; its config
    # check (trainer.py _validate_cuda_graphs) refuses graphs with pipeline parallelism and with
    # the expert-parallel dispatchers that synchronize with the host (the registered configs').
    flag(o, "--training.disable-cuda-graphs", when=s.pp > 1 or (m.is_moe and s.ep > 1))
    flag(o, "--compile.enable", when=s.loss_kernel == "compiled")
    o += ["--optimizer.implementation", "foreach" if s.optimizer_kernel == "foreach" else "fused",
          "--training.steps", "100", "--checkpoint.no-enable", "--metrics.log-freq", "1"]
    o.append({"none": "activation-checkpoint:none", "full": "activation-checkpoint:full",
              "selective": "activation-checkpoint:selective"}[s.recompute])
    notes = ["100 steps on the config's dataset (c4 by default); torchtitan reads the tokenizer from "
             "--hf-assets-path (download it with scripts/download_hf_assets.py)",
             *job.preset_note(NAME, "torchtitan")]
    if s.recompute == "selective" and s.selective_recompute != "alternate_matmuls":
        notes.append("torchtitan's selective checkpointing is per-op (every second matmul), not the attention "
                     "core the scenario predicted; predict with --framework torchtitan-2024 for its memory")
    return LaunchConfig(format="torchtitan", framework=FRAMEWORK,
                        argv=[*torchrun(job.gpus_per_node, job.nodes), "-m", "torchtitan.train", *o], notes=notes)


def _registered_config(job: TrainJob) -> tuple[str, str]:
    name = job.model.name.lower()
    if name not in CONFIGS:
        raise ExportError(NAME, f"torchtitan registers no config for {job.model.name}; it has "
                                f"{', '.join(sorted(CONFIGS))} (torchtitan/models/*/config_registry.py)")
    module, half, fp8 = CONFIGS[name]
    if job.strategy.precision != "fp8":
        if half is None:
            raise ExportError(NAME, f"torchtitan's only {job.model.name} config trains in FP8 ({fp8[0] if fp8 else ''}); "
                                    "predict with precision fp8")
        return module, half
    if fp8 is None:
        raise ExportError(NAME, f"torchtitan registers no FP8 config for {job.model.name}")
    config, gpus = fp8
    if job.cluster.gpu.architecture not in gpus:
        raise ExportError(NAME, f"{config} needs a {' or '.join(sorted(gpus))} GPU, not {job.cluster.gpu.name} "
                                f"({job.cluster.gpu.architecture})")
    return module, config


def _refuse_unsupported(job: TrainJob) -> None:
    s, w = job.strategy, job.workload
    reasons = (  # (refused?, why): the first that applies is reported
        (s.zero in (1, 2), f"ZeRO-{s.zero}: torchtitan shards everything with FSDP2 (ZeRO-3) or replicates with "
                           "DDP (ZeRO-0)"),
        (w.method != "full", f"method {w.method}: torchtitan's trainer trains all parameters"),
        (w.optimizer not in ("adamw", "adam"), f"optimizer {w.optimizer}: torchtitan's configs use AdamW"),
        (s.precision == "fp16", "fp16 training: torchtitan trains in bf16 or fp32 mixed precision"),
        (s.offload_optimizer != "none" or s.offload_activations != "none" or s.offload_params == "nvme",
         "torchtitan offloads only FSDP2's parameters, gradients and optimizer state together, to host memory "
         "(training.enable_cpu_offload, with ZeRO-3)"),
        (s.offload_params == "cpu" and s.zero != 3, "FSDP2's CPU offload needs ZeRO-3"),
        (job.model.is_moe and s.ep > 1 and s.resolved_etp != 1,
         f"expert parallelism borrows the tp ranks in torchtitan (experts are not split): set etp 1, not "
         f"{s.resolved_etp}"),
    )
    for refused, why in reasons:
        if refused:
            raise ExportError(NAME, why)
