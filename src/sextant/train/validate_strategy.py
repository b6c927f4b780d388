"""Checks that a strategy can run this model on this cluster, with one-line errors that name the
field and the fix. The planner applies the same rules as vectorised masks (kept beside them)."""

from __future__ import annotations

from sextant.errors import SpecError
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.strategy import Strategy
from sextant.spec.workload import TrainWorkload


def resolve_dp(strategy: Strategy, num_gpus: int) -> int:
    model_parallel = strategy.tp * strategy.pp * strategy.cp
    if num_gpus % model_parallel:
        raise SpecError(
            f"gpus={num_gpus} is not divisible by tp*pp*cp={model_parallel}; "
            "change --gpus or the parallel degrees",
            field="gpus",
        )
    dp = num_gpus // model_parallel
    if strategy.dp is not None and strategy.dp != dp:
        raise SpecError(
            f"dp={strategy.dp} but gpus/(tp*pp*cp) = {num_gpus}/{model_parallel} = {dp}; "
            "leave --dp out or make dp*tp*pp*cp equal --gpus",
            field="dp",
        )
    return dp


def check_strategy(model: ModelSpec, cluster: ClusterSpec, strategy: Strategy, workload: TrainWorkload) -> int:  # noqa: C901
    """Raise :class:`SpecError` for a strategy that cannot run; return the data-parallel degree."""
    s = strategy
    if model.num_heads % s.tp:
        raise SpecError(f"tp={s.tp} does not divide the {model.num_heads} attention heads of {model.name}", field="tp")
    if model.mla is None and model.num_kv_heads % s.tp and s.tp % model.num_kv_heads:
        raise SpecError(
            f"tp={s.tp} and the {model.num_kv_heads} KV heads of {model.name} must divide one another",
            field="tp",
        )
    dp = resolve_dp(s, cluster.num_gpus)
    if s.pp > model.num_layers:
        raise SpecError(f"pp={s.pp} exceeds the {model.num_layers} layers of {model.name}", field="pp")
    schedule = s.resolved_schedule
    if s.vpp > 1:
        if s.pp == 1:
            raise SpecError("vpp > 1 needs pipeline parallelism (pp > 1)", field="vpp")
        if schedule != "interleaved":
            raise SpecError(f"vpp={s.vpp} needs the interleaved schedule, not {schedule}", field="vpp")
        # Uneven chunks are allowed (Megatron-Core --account-for-embedding-in-pipeline-split:
        # Llama 3 405B ran 126 layers as 16 x 8 chunks, the first holding only the embedding and
        # the last only the loss), but every other chunk needs a layer.
        if s.pp * s.vpp > model.num_layers + 2:
            raise SpecError(
                f"pp*vpp={s.pp * s.vpp} virtual stages exceed the {model.num_layers} layers of {model.name}",
                field="vpp",
            )
    elif schedule == "interleaved" and s.pp > 1:
        raise SpecError("the interleaved schedule needs vpp > 1", field="schedule")
    if workload.seq_len % s.cp or (s.cp > 1 and (workload.seq_len // s.cp) % 2):
        raise SpecError(
            f"cp={s.cp} must split seq_len={workload.seq_len} into chunks of even length "
            "(load-balanced causal ring attention)",
            field="cp",
        )
    if s.ep > 1:
        if model.moe is None:
            raise SpecError(f"ep={s.ep} needs a mixture-of-experts model; {model.name} is dense", field="ep")
        if model.moe.num_experts % s.ep:
            raise SpecError(f"ep={s.ep} does not divide the {model.moe.num_experts} experts", field="ep")
        if (dp * s.cp) % s.ep:
            raise SpecError(f"ep={s.ep} must divide dp*cp={dp * s.cp} (experts are sharded across data-parallel ranks)",
                            field="ep")
    if s.sequence_parallel and s.tp == 1:
        raise SpecError("sequence parallelism splits work across tensor-parallel ranks; it needs tp > 1", field="sequence_parallel")
    per_replica = workload.global_batch / dp
    if workload.global_batch % dp:
        raise SpecError(f"global_batch={workload.global_batch} is not divisible by dp={dp}", field="global_batch")
    if (workload.global_batch // dp) % s.micro_batch:
        raise SpecError(
            f"micro_batch={s.micro_batch} does not divide the {int(per_replica)} sequences per data-parallel replica "
            f"(global_batch {workload.global_batch} / dp {dp})",
            field="micro_batch",
        )
    microbatches = workload.global_batch // dp // s.micro_batch
    if s.vpp > 1 and microbatches % s.pp:
        raise SpecError(
            f"the interleaved schedule needs the {microbatches} micro-batches per step to be a multiple of "
            f"pp={s.pp} (Megatron-LM's rule; with fewer, the bubble cannot shrink); use more micro-batches or vpp=1",
            field="vpp",
        )
    if s.offloads and s.pp > 1:
        raise SpecError("offloading is modelled for pipeline-free training (pp=1), as ZeRO-Offload and "
                        "ZeRO-Infinity run; use pp=1", field="pp")
    if s.offload_params != "none" and s.zero != 3:
        raise SpecError("offloading parameters needs ZeRO-3 (ZeRO-Infinity fetches each layer's shard); "
                        "set --zero 3", field="offload_params")
    if s.offload_params != "none" and s.offload_optimizer == "none" and workload.method != "zo":
        raise SpecError("offloading parameters needs the optimizer offloaded too (the update runs where the "
                        "master weights are); set --offload-optimizer cpu or nvme", field="offload_params")
    if s.offload_optimizer != "none" and s.zero == 0:
        raise SpecError("optimizer offloading runs on ZeRO (DeepSpeed's offload_optimizer); set --zero 1, 2 or 3",
                        field="offload_optimizer")
    if "nvme" in (s.offload_optimizer, s.offload_params, s.offload_activations) and cluster.node.nvme is None:
        raise SpecError(f"node {cluster.node.name} has no NVMe drives to offload to", field="offload")
    if workload.seq_len > 10_000_000:
        raise SpecError(f"seq_len={workload.seq_len} is beyond any model's context", field="seq_len")
    return dp


def rule_masks(model: ModelSpec, num_gpus: int, workload: TrainWorkload, c) -> dict:
    """The rules of :func:`check_strategy` as boolean masks over a :class:`Candidates` table
    (True: the row passes), keyed by the reason a planner reports. Kept beside the scalar checks
    above; tests/test_plan.py holds the two in agreement."""
    import numpy as np

    tp, pp, cp, ep, dp, vpp = c.tp, c.pp, c.cp, c.ep, c.dp, c.vpp
    kv_ok = np.ones(len(c), bool) if model.mla is not None else (
        (model.num_kv_heads % tp == 0) | (tp % model.num_kv_heads == 0))
    experts = model.moe.num_experts if model.moe is not None else 1
    per_replica = np.where(workload.global_batch % dp == 0, workload.global_batch // dp, 0)
    local_seq = workload.seq_len // cp
    return {
        "tp does not divide the attention heads": model.num_heads % tp == 0,
        "tp and the KV heads do not divide one another": kv_ok,
        "dp*tp*pp*cp is not the GPU count": dp * tp * pp * cp == num_gpus,
        "pp exceeds the layers": pp <= model.num_layers,
        "virtual stages exceed the layers": (vpp == 1) | ((pp > 1) & (pp * vpp <= model.num_layers + 2)),
        "cp does not split the sequence evenly": (workload.seq_len % cp == 0) & ((cp == 1) | (local_seq % 2 == 0)),
        "ep does not divide the experts or dp*cp": (ep == 1) | ((model.moe is not None) & (experts % ep == 0)
                                                               & ((dp * cp) % ep == 0)),
        "sequence parallelism without tp": ~c.sequence_parallel | (tp > 1),
        "batch does not divide into micro-batches": (per_replica > 0) & (per_replica % c.micro_batch == 0),
        "interleaving needs a multiple of pp micro-batches": (vpp == 1) | ((per_replica // c.micro_batch) % pp == 0),
        "offloading with pipeline parallelism": ~c.offloads | (pp == 1),
        "parameter offload without ZeRO-3": (c.offload_params == 0) | (c.zero == 3),
        "parameter offload without optimizer offload": (c.offload_params == 0) | (c.offload_optimizer > 0)
        | (workload.method == "zo"),
        "optimizer offload without ZeRO": (c.offload_optimizer == 0) | (c.zero > 0),
    }
