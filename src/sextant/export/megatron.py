"""Megatron-LM ``pretrain_gpt.py`` arguments for a training scenario.

Flag names and choices are those of Megatron-LM's parser (megatron/training/arguments.py, NVIDIA/
Megatron-LM main at d98e8a6, 2026-08; tests/data/framework_options/megatron-lm.json). The job runs
as a throughput benchmark on synthetic data (``--mock-data``, ``NullTokenizer``): the model, layout
and batch are the scenario's; data, tokenizer, learning rate schedule and checkpoints are the
user's to set.
"""

from __future__ import annotations

from sextant.export.job import TrainJob
from sextant.export.launch import ExportError, LaunchConfig, flag, torchrun
from sextant.spec.model import ModelSpec
from sextant.train.pipeline import stage_layers

FRAMEWORK = "Megatron-LM (pretrain_gpt.py, main 2026-08)"
NAME = "Megatron-LM"

#: ZeRO stage -> Megatron-Core's data-parallel sharding: the distributed optimizer shards the
#: optimizer state (ZeRO-1); Megatron FSDP shards gradients too (ZeRO-2) and the parameters (ZeRO-3).
#: Megatron FSDP checkpoints in its own format (docs/user-guide/features/megatron_fsdp.md).
_SHARDING = {1: ["--use-distributed-optimizer"],
             2: ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", "optim_grads", "--ckpt-format", "fsdp_dtensor"],
             3: ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", "optim_grads_params",
                 "--ckpt-format", "fsdp_dtensor"]}


def export_megatron(job: TrainJob) -> LaunchConfig:
    _refuse_unsupported(job)
    options: list[str] = []
    notes: list[str] = []
    options += _parallel_args(job, notes)
    options += _model_args(job.model, job)
    options += _execution_args(job, notes)
    options += ["--train-iters", "100", "--mock-data", "--tokenizer-type", "NullTokenizer",
                "--vocab-size", str(job.model.vocab_size), "--lr", "3.0e-4", "--min-lr", "3.0e-5",
                "--lr-decay-style", "cosine", "--weight-decay", "0.1", "--clip-grad", "1.0",
                "--log-interval", "1", "--log-throughput", "--eval-iters", "0"]
    notes += [
        "a 100-step throughput benchmark on synthetic data (--mock-data, NullTokenizer): set --data-path, "
        "the tokenizer, --train-iters and the learning-rate schedule for a real run",
        "Megatron pads the vocabulary to a multiple of --make-vocab-size-divisible-by (128) x tp",
        *job.preset_note(NAME, "megatron"),
    ]
    # Megatron's TP/SP communication overlap needs in-order kernel queues; Megatron FSDP's docs ask
    # for the variable unset, so that its prefetches run beside compute.
    env = {} if job.strategy.zero >= 2 else {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    return LaunchConfig(format="megatron", framework=FRAMEWORK, env=env,
                        argv=[*torchrun(job.gpus_per_node, job.nodes), "pretrain_gpt.py", *options], notes=notes)


def _refuse_unsupported(job: TrainJob) -> None:
    s, m, w = job.strategy, job.model, job.workload
    reasons = (  # (refused?, why): the first that applies is reported
        (w.method != "full", f"method {w.method}: pretrain_gpt.py trains all parameters (PEFT lives in NeMo / "
                            "Megatron-Bridge)"),
        (w.optimizer == "adam8bit", "8-bit Adam is not one of Megatron-LM's optimizers (--optimizer adam|sgd|...)"),
        (s.resolved_schedule == "gpipe", "Megatron-LM schedules pipelines with 1F1B or interleaved 1F1B, not GPipe"),
        (s.offload_params != "none", "parameter offloading (ZeRO-Infinity) has no Megatron-LM option"),
        (s.offload_activations != "none", "activation offloading to host or NVMe has no pretrain_gpt.py option"),
        (s.offload_optimizer in ("nvme", "interleaved"), f"optimizer offload to {s.offload_optimizer}: Megatron-LM "
                                                         "offloads the optimizer to host memory only"),
        (s.recompute == "selective" and s.selective_recompute == "alternate_matmuls",
            "per-op selective recomputation (TorchTitan's) has no Megatron-LM option; recompute the attention "
            "core (selective_recompute: attention_core) or whole layers"),
        (m.mlp in ("relu", "geglu"), f"a {m.mlp} MLP: pretrain_gpt.py builds GeLU or SwiGLU MLPs"),
        (m.position_embedding == "alibi", "ALiBi positions are not one of Megatron-LM's position embeddings"),
        (m.parallel_attention, "parallel attention and MLP blocks (GPT-J, Falcon) are not a Megatron-LM GPT layer"),
        (s.precision == "fp8" and s.offload_optimizer == "cpu", "FP8 with the optimizer on the CPU is untested in "
                                                               "Megatron-LM; export one or the other"),
    )
    for refused, why in reasons:
        if refused:
            raise ExportError(NAME, why)


def _parallel_args(job: TrainJob, notes: list[str]) -> list[str]:
    s, w = job.strategy, job.workload
    o: list[str] = ["--tensor-model-parallel-size", str(s.tp), "--pipeline-model-parallel-size", str(s.pp)]
    flag(o, "--num-virtual-stages-per-pipeline-rank", s.vpp, when=s.vpp > 1)
    split, fullest = pipeline_split(job.model.num_layers, s.pp, s.vpp)
    o += split
    predicted = int(max(stage_layers(job.model.num_layers, s.pp)))
    if s.vpp == 1 and fullest > predicted:
        notes.append(f"Megatron-LM's pipeline split puts {fullest} layers on its fullest stage; the prediction "
                     f"assumed {predicted} (uneven middle stages, which Megatron-LM does not make)")
    flag(o, "--context-parallel-size", s.cp, when=s.cp > 1)
    if job.model.is_moe:
        o += ["--expert-model-parallel-size", str(s.ep), "--expert-tensor-parallel-size", str(s.resolved_etp)]
    flag(o, "--sequence-parallel", when=s.sequence_parallel and s.tp > 1)
    o += ["--micro-batch-size", str(s.micro_batch), "--global-batch-size", str(w.global_batch),
          "--seq-length", str(w.seq_len)]
    o += _SHARDING.get(s.zero, [])
    return o


def pipeline_split(layers: int, pp: int, vpp: int) -> tuple[list[str], int]:
    """How Megatron-LM places layers that do not divide into ``pp x vpp`` chunks, and the layers on
    its fullest stage: counting the embedding and the loss as a layer each
    (``--account-for-*-in-pipeline-split``, as Llama 3 405B's 126 layers on 16 stages), or, without
    interleaving, other layer counts on the first and last stage
    (``--decoder-first/last-pipeline-num-layers``; Megatron splits the middle stages evenly), the
    split whose fullest stage holds the fewest layers."""
    chunks = pp * vpp
    if pp == 1 or layers % chunks == 0:
        return [], layers // pp
    if (layers + 2) % chunks == 0:
        return ["--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split"], (layers + 2) // pp
    best: tuple[int, int, int] | None = None  # (fullest stage, first, last)
    if vpp == 1:
        middles = pp - 2
        for middle in range(1, layers // middles + 1) if middles else [0]:
            edges = layers - middle * middles  # the first and last stage's layers, split as evenly as can be
            if edges >= 2:
                first, last = edges - edges // 2, edges // 2
                if best is None or max(first, middle) < best[0]:
                    best = (max(first, middle), first, last)
    if best is None:
        raise ExportError(NAME, f"{layers} layers do not split into {pp} pipeline stages"
                                + (f" of {vpp} virtual stages" if vpp > 1 else "")
                                + " the ways Megatron-LM allows (even stages, or other counts on the first and last)")
    return ["--decoder-first-pipeline-num-layers", str(best[1]), "--decoder-last-pipeline-num-layers", str(best[2])], best[0]


def _model_args(m: ModelSpec, job: TrainJob) -> list[str]:
    o = ["--num-layers", str(m.num_layers), "--hidden-size", str(m.hidden_size),
         "--ffn-hidden-size", str(m.ffn_hidden_size), "--num-attention-heads", str(m.num_heads),
         "--kv-channels", str(m.head_dim),
         "--max-position-embeddings", str(max(m.max_seq_len, job.workload.seq_len)),
         "--normalization", "RMSNorm" if m.norm == "rmsnorm" else "LayerNorm",
         "--position-embedding-type", "rope" if m.position_embedding == "rope" else "learned_absolute"]
    flag(o, "--group-query-attention", when=m.num_kv_heads < m.num_heads)
    flag(o, "--num-query-groups", m.num_kv_heads, when=m.num_kv_heads < m.num_heads)
    flag(o, "--swiglu", when=m.mlp == "swiglu")
    flag(o, "--untie-embeddings-and-output-weights", when=not m.tie_embeddings)
    flag(o, "--disable-bias-linear", when=not m.linear_bias)
    flag(o, "--add-qkv-bias", when=m.qkv_bias and not m.linear_bias)
    if m.mla is not None:
        a = m.mla
        o += ["--multi-latent-attention", "--kv-lora-rank", str(a.kv_lora_rank), "--qk-head-dim",
              str(a.qk_nope_head_dim), "--qk-pos-emb-head-dim", str(a.qk_rope_head_dim), "--v-head-dim", str(a.v_head_dim)]
        flag(o, "--q-lora-rank", a.q_lora_rank, when=a.q_lora_rank > 0)
    if m.moe is not None:
        o += _moe_args(m, job)
    return o


def _moe_args(m: ModelSpec, job: TrainJob) -> list[str]:
    e = m.moe
    assert e is not None
    o = ["--num-experts", str(e.num_experts), "--moe-router-topk", str(e.top_k),
         "--moe-ffn-hidden-size", str(e.expert_ffn_hidden_size)]
    # Megatron-LM's grouped-GEMM kernels need compute capability 8.0 or newer (validate_args).
    flag(o, "--moe-grouped-gemm", when=job.cluster.gpu.architecture not in ("volta", "turing"))
    flag(o, "--moe-shared-expert-intermediate-size", e.num_shared_experts * e.shared_expert_ffn_hidden_size,
         when=e.num_shared_experts > 0)
    if e.first_dense_layers or e.layer_freq > 1:
        o += ["--moe-layer-freq", moe_layer_pattern(m)]
    if e.groups_per_token:
        o += ["--moe-router-num-groups", str(e.expert_groups), "--moe-router-group-topk", str(e.groups_per_token)]
    if job.strategy.moe_dispatcher == "deepep":
        o += ["--moe-token-dispatcher-type", "flex", "--moe-flex-dispatcher-backend", "deepep"]
    else:
        o += ["--moe-token-dispatcher-type", "alltoall"]
    return o


def moe_layer_pattern(m: ModelSpec) -> str:
    """``--moe-layer-freq`` as the Python list expression Megatron-LM evaluates (1: an MoE layer),
    run-length coded: the layers :attr:`ModelSpec.moe_layer_indices` names."""
    moe = set(m.moe_layer_indices)
    runs: list[tuple[int, int]] = []
    for bit in (int(i in moe) for i in range(m.num_layers)):
        if runs and runs[-1][0] == bit:
            runs[-1] = (bit, runs[-1][1] + 1)
        else:
            runs.append((bit, 1))
    return "+".join(f"[{bit}]*{count}" for bit, count in runs)


def _execution_args(job: TrainJob, notes: list[str]) -> list[str]:
    s = job.strategy
    o: list[str] = []
    if s.precision == "fp16":
        o.append("--fp16")
    elif s.precision in ("bf16", "fp8"):
        o.append("--bf16")
    if s.precision == "fp8":
        blackwell = job.cluster.gpu.architecture == "blackwell"
        o += ["--fp8-format", "e4m3" if blackwell else "hybrid", "--fp8-recipe", "mxfp8" if blackwell else "delayed"]
    if s.recompute == "full":
        o += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    elif s.recompute == "selective":
        o += ["--recompute-granularity", "selective", "--recompute-modules",
              "mla_up_proj" if s.selective_recompute == "mla_up_proj" else "core_attn"]
    o += ["--attention-backend", "unfused" if s.attention_kernel == "unfused" else "auto"]
    if not job.workload.dropout:
        o += ["--attention-dropout", "0.0", "--hidden-dropout", "0.0"]
    o += ["--optimizer", "sgd" if job.workload.optimizer == "sgd" else "adam"]
    if s.offload_optimizer == "cpu":
        o += ["--optimizer-cpu-offload", "--optimizer-offload-fraction", "1.0", "--use-precision-aware-optimizer"]
        if s.zero == 0:
            o.append("--use-distributed-optimizer")
    ov = s.overlap
    flag(o, "--overlap-grad-reduce", when=ov.dp_grad_reduce and job.dp > 1)
    # Megatron-LM's validate_args: param-gather overlap needs the grad-reduce overlap and a sharded optimizer.
    flag(o, "--overlap-param-gather", when=ov.dp_param_gather and ov.dp_grad_reduce and job.dp > 1 and s.zero >= 1)
    flag(o, "--tp-comm-overlap", when=ov.tp_comm and s.sequence_parallel and s.tp > 1)
    flag(o, "--overlap-moe-expert-parallel-comm", when=ov.ep_comm and job.model.is_moe and s.ep > 1)
    flag(o, "--grad-reduce-in-bf16", when=s.grad_buffer == "bf16")
    flag(o, "--cross-entropy-loss-fusion", when=s.loss_kernel == "fused")
    if not s.fused_projections:
        notes.append("Megatron-Core always runs QKV and the MLP's gate/up projections as one GEMM each "
                     "(the scenario predicted them separate)")
    if s.loss_kernel in ("eager", "compiled"):
        notes.append("Megatron-LM computes the loss with its vocab-parallel cross-entropy (the scenario "
                     f"predicted the memory of a {s.loss_kernel} one)")
    return o
