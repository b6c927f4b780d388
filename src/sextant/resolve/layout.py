"""Which parallel layouts can run a model: one rule set for training and serving.

Each :class:`Rule` is written once, as a mask over columns of degrees (NumPy arrays for the
planner's table, one-element arrays for a single configuration), with the one-line error a user
sees when a configuration breaks it and the reason the planner reports for the rows it rejects.

Shared by training and serving (the same constraint of the model's shapes):
- tensor parallelism splits the attention heads evenly (Shoeybi et al. 2019, section 3);
- tensor parallelism and the KV heads divide one another: with fewer KV heads than ranks each is
  replicated ``tp / kv`` times, with more each rank holds ``kv / tp`` (Megatron-Core's GQA
  split; vLLM's ``QKVParallelLinear`` asserts the same); multi-head latent attention has no KV
  heads to split;
- expert parallelism needs a mixture-of-experts model and splits its experts evenly.

Training only: the layout multiplies to the GPU count; ``pp`` at most the layers and virtual
stages at most the layers plus the embedding and loss (Megatron-Core splits unevenly); context
parallelism in even chunks; the expert layers' ``etp x ep`` a divisor of the ``tp x cp x dp``
ranks of a pipeline stage (Megatron-Core's MoE parallel folding; with ``etp = tp``, the classic
rule that ``ep`` divides ``dp x cp``) and ``etp`` of the expert FFN; sequence parallelism needs
``tp``; the batch divides into micro-batches (a multiple of ``pp`` of them when interleaved);
offloading as ZeRO-Offload and ZeRO-Infinity run it.

Serving only, each with its reason:
- ``pp`` divides the layers: a replica's stages are alike, each running its own batch as a vLLM
  virtual engine, and the simulator replays one timeline for them all (training instead gives
  the first and last stage the remainder);
- ``tp`` within one node: the serving cost model prices every decode step's tensor-parallel
  all-reduces on the intra-node link (vLLM and TensorRT-LLM deployments span nodes with ``pp``);
  training allows ``tp`` across nodes and its planner only prefers it within one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace
from typing import Any

import numpy as np

from sextant.errors import SpecError
from sextant.spec.hardware import ClusterSpec
from sextant.spec.model import ModelSpec
from sextant.spec.strategy import OFFLOAD_CODES, SCHEDULE_CODES, Strategy
from sextant.spec.workload import TrainWorkload

INTERLEAVED = SCHEDULE_CODES["interleaved"]


@dataclass(frozen=True)
class LayoutCase:
    """A model and its parallel degrees: ``columns`` has the degrees as attributes (arrays over the
    planner's rows, or plain numbers to word an error), beside the workload and the GPUs."""

    model: ModelSpec
    columns: Any
    workload: TrainWorkload | None = None
    num_gpus: int = 0
    gpus_per_node: int = 0

    def __getattr__(self, name: str) -> Any:
        if name == "columns" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.columns, name)

    @cached_property
    def per_replica(self) -> Any:
        """Sequences per data-parallel replica (0 where the batch does not divide over dp)."""
        gb = self.workload.global_batch
        return np.where(gb % self.dp == 0, gb // self.dp, 0)


@dataclass(frozen=True)
class Rule:
    """One constraint: ``passes`` (a mask over the case's rows), the reason the planner reports
    for rows that fail it, and the field and one-line error of a configuration that fails it."""

    reason: str
    field: str | Callable[[LayoutCase], str]
    passes: Callable[[LayoutCase], Any]
    message: Callable[[LayoutCase], str]

    def field_of(self, x: LayoutCase) -> str:
        return self.field if isinstance(self.field, str) else self.field(x)


def _kv_heads_divide(x: LayoutCase) -> Any:
    m = x.model
    if m.mla is not None:
        return np.ones(np.shape(x.tp), bool)
    return (m.num_kv_heads % x.tp == 0) | (x.tp % m.num_kv_heads == 0)


def _experts_divide(x: LayoutCase) -> Any:
    moe = x.model.moe
    return x.ep == 1 if moe is None else moe.num_experts % x.ep == 0


def _experts_message(x: LayoutCase) -> str:
    if x.model.moe is None:
        return f"ep={x.ep} needs a mixture-of-experts model; {x.model.name} is dense"
    return f"ep={x.ep} does not divide the {x.model.moe.num_experts} experts"


def _expert_ffn_divides(x: LayoutCase) -> Any:
    moe = x.model.moe
    if moe is None:
        return x.etp == x.tp
    return moe.expert_ffn_hidden_size % x.etp == 0


def _expert_ffn_message(x: LayoutCase) -> str:
    if x.model.moe is None:
        return f"etp={x.etp} needs a mixture-of-experts model; {x.model.name} is dense"
    return f"etp={x.etp} does not divide the expert FFN width {x.model.moe.expert_ffn_hidden_size}"


HEADS = Rule("tp does not divide the attention heads", "tp", lambda x: x.model.num_heads % x.tp == 0,
             lambda x: f"tp={x.tp} does not divide the {x.model.num_heads} attention heads of {x.model.name}")
KV_HEADS = Rule("tp and the KV heads do not divide one another", "tp", _kv_heads_divide,
                lambda x: f"tp={x.tp} and the {x.model.num_kv_heads} KV heads of {x.model.name} must divide one another")
EXPERTS = Rule("ep does not divide the experts", "ep", _experts_divide, _experts_message)


def _batch_message(x: LayoutCase) -> str:
    gb = x.workload.global_batch
    if gb % x.dp:
        return f"global_batch={gb} is not divisible by dp={x.dp}"
    return (f"micro_batch={x.micro_batch} does not divide the {gb // x.dp} sequences per data-parallel replica "
            f"(global_batch {gb} / dp {x.dp})")


def _vpp_message(x: LayoutCase) -> str:
    if x.pp == 1:
        return "vpp > 1 needs pipeline parallelism (pp > 1)"
    return f"pp*vpp={x.pp * x.vpp} virtual stages exceed the {x.model.num_layers} layers of {x.model.name}"


def _local_seq_even(x: LayoutCase) -> Any:
    seq = x.workload.seq_len
    return (seq % x.cp == 0) & ((x.cp == 1) | ((seq // x.cp) % 2 == 0))


#: The model's shapes, checked before anything else of a training configuration.
SHAPE_RULES: tuple[Rule, ...] = (HEADS, KV_HEADS)
#: Training rules, in the order a configuration is checked (and the planner attributes a row
#: failing several to the first). Uneven virtual stages are allowed (Megatron-Core
#: --account-for-embedding-in-pipeline-split: Llama 3 405B ran 126 layers as 16 x 8 chunks, the
#: first holding only the embedding and the last only the loss), but every other chunk needs a layer.
TRAINING_RULES: tuple[Rule, ...] = (
    *SHAPE_RULES,
    Rule("dp*tp*pp*cp is not the GPU count", "gpus", lambda x: x.dp * x.tp * x.pp * x.cp == x.num_gpus,
         lambda x: f"gpus={x.num_gpus} is not dp*tp*pp*cp={x.dp * x.tp * x.pp * x.cp}"),
    Rule("pp exceeds the layers", "pp", lambda x: x.pp <= x.model.num_layers,
         lambda x: f"pp={x.pp} exceeds the {x.model.num_layers} layers of {x.model.name}"),
    Rule("virtual stages exceed the layers", "vpp",
         lambda x: (x.vpp == 1) | ((x.pp > 1) & (x.pp * x.vpp <= x.model.num_layers + 2)), _vpp_message),
    Rule("vpp > 1 without the interleaved schedule", "vpp", lambda x: (x.vpp == 1) | (x.schedule == INTERLEAVED),
         lambda x: f"vpp={x.vpp} needs the interleaved schedule, not {x.schedule_name}"),
    Rule("the interleaved schedule without vpp > 1", "schedule",
         lambda x: (x.schedule != INTERLEAVED) | (x.vpp > 1) | (x.pp == 1),
         lambda x: "the interleaved schedule needs vpp > 1"),
    Rule("cp does not split the sequence evenly", "cp", _local_seq_even,
         lambda x: f"cp={x.cp} must split seq_len={x.workload.seq_len} into chunks of even length "
                   "(load-balanced causal ring attention)"),
    EXPERTS,
    Rule("etp*ep does not divide tp*cp*dp", "ep", lambda x: (x.tp * x.cp * x.dp) % (x.etp * x.ep) == 0,
         lambda x: f"etp*ep={x.etp * x.ep} must divide tp*cp*dp={x.tp * x.cp * x.dp} (the expert layers fold their "
                   "tensor and expert parallelism over the ranks of one pipeline stage)"),
    Rule("etp does not divide the expert FFN", "etp", _expert_ffn_divides, _expert_ffn_message),
    Rule("sequence parallelism without tp", "sequence_parallel",
         lambda x: np.logical_not(x.sequence_parallel) | (x.tp > 1),
         lambda x: "sequence parallelism splits work across tensor-parallel ranks; it needs tp > 1"),
    Rule("batch does not divide into micro-batches",
         lambda x: "global_batch" if x.workload.global_batch % x.dp else "micro_batch",
         lambda x: (x.per_replica > 0) & (x.per_replica % x.micro_batch == 0), _batch_message),
    Rule("interleaving needs a multiple of pp micro-batches", "vpp",
         lambda x: (x.vpp == 1) | ((x.per_replica // x.micro_batch) % x.pp == 0),
         lambda x: f"the interleaved schedule needs the {x.workload.global_batch // x.dp // x.micro_batch} "
                   f"micro-batches per step to be a multiple of pp={x.pp} (Megatron-LM's rule; with fewer, the "
                   "bubble cannot shrink); use more micro-batches or vpp=1"),
    Rule("offloading with pipeline parallelism", "pp", lambda x: np.logical_not(x.offloads) | (x.pp == 1),
         lambda x: "offloading is modelled for pipeline-free training (pp=1), as ZeRO-Offload and "
                   "ZeRO-Infinity run; use pp=1"),
    Rule("parameter offload without ZeRO-3", "offload_params", lambda x: (x.offload_params == 0) | (x.zero == 3),
         lambda x: "offloading parameters needs ZeRO-3 (ZeRO-Infinity fetches each layer's shard); set --zero 3"),
    Rule("parameter offload without optimizer offload", "offload_params",
         lambda x: (x.offload_params == 0) | (x.offload_optimizer > 0) | (x.workload.method == "zo"),
         lambda x: "offloading parameters needs the optimizer offloaded too (the update runs where the master "
                   "weights are); set --offload-optimizer cpu or nvme"),
    Rule("optimizer offload without ZeRO", "offload_optimizer", lambda x: (x.offload_optimizer == 0) | (x.zero > 0),
         lambda x: "optimizer offloading runs on ZeRO (DeepSpeed's offload_optimizer); set --zero 1, 2 or 3"),
)

#: Serving rules, in the order a deployment is checked (see the module docstring).
SERVING_RULES: tuple[Rule, ...] = (
    HEADS,
    KV_HEADS,
    Rule("pp does not divide the layers", "pp", lambda x: x.model.num_layers % x.pp == 0,
         lambda x: f"pp={x.pp} does not divide the {x.model.num_layers} layers of {x.model.name}"),
    Rule("tp spans nodes", "tp", lambda x: x.tp <= x.gpus_per_node,
         lambda x: f"tp={x.tp} exceeds the {x.gpus_per_node} GPUs of one {x.node_name}"),
    EXPERTS,
)


def rule_masks(rules: tuple[Rule, ...], case: LayoutCase) -> dict[str, np.ndarray]:
    """Each rule's mask over the case's rows (True: the row passes), keyed by its reason."""
    return {rule.reason: np.asarray(rule.passes(case), bool) for rule in rules}


class _Subset:
    """The rows ``index`` of a column table, each column gathered the first time it is read."""

    def __init__(self, table: Any, index: np.ndarray) -> None:
        self._table, self._index, self._columns = table, index, {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._columns:
            self._columns[name] = getattr(self._table, name)[self._index]
        return self._columns[name]


def first_failures(rules: tuple[Rule, ...], table: Any, case_of: Callable[[Any], LayoutCase], *,
                   weight: Any = 1, rejected: dict[str, int] | None = None) -> tuple[Any, dict]:
    """The rows of ``table`` (a column table with ``take``) that pass every rule, and per reason
    the rows that fail it first (a row failing several counts under the first), each counting
    ``weight`` rows (an array over the table's rows where a row stands for several), added to
    ``rejected`` when given. Once a quarter of the rows still in play have failed, the rest are
    gathered (only the columns later rules read), so later rules see fewer rows."""
    rejected = {} if rejected is None else rejected
    index = np.arange(len(table))
    weight = np.broadcast_to(np.asarray(weight), index.shape)
    case = case_of(table)
    ok = np.ones(len(table), bool)
    for rule in rules:
        passes = np.asarray(rule.passes(case), bool)
        fails = ok & ~passes
        if not fails.any():
            continue
        rejected[rule.reason] = rejected.get(rule.reason, 0) + int(weight[index[fails]].sum())
        ok &= passes
        if np.count_nonzero(ok) < 0.75 * ok.size:
            index = index[ok]
            case = case_of(_Subset(table, index))
            ok = np.ones(index.size, bool)
    return table.take(index[ok]), rejected


def check(rules: tuple[Rule, ...], case: LayoutCase) -> None:
    """Raise the :class:`SpecError` of the first rule that ``case`` (plain numbers) breaks."""
    arrays = LayoutCase(case.model, SimpleNamespace(**{k: np.asarray(v) for k, v in vars(case.columns).items()}),
                        case.workload, case.num_gpus, case.gpus_per_node)
    for rule in rules:
        if not bool(np.all(rule.passes(arrays))):
            raise SpecError(rule.message(case), field=rule.field_of(case))


def training_masks(model: ModelSpec, num_gpus: int, workload: TrainWorkload, table: Any) -> dict[str, np.ndarray]:
    """The training rules as masks over a :class:`~sextant.train.candidates.Candidates` table."""
    return rule_masks(TRAINING_RULES, LayoutCase(model, table, workload, num_gpus))


def resolve_dp(strategy: Strategy, num_gpus: int) -> int:
    """The data-parallel degree: ``num_gpus / (tp pp cp)``, which must divide, and agree with a
    ``dp`` the strategy states."""
    model_parallel = strategy.tp * strategy.pp * strategy.cp
    if num_gpus % model_parallel:
        raise SpecError(f"gpus={num_gpus} is not divisible by tp*pp*cp={model_parallel}; "
                        "change --gpus or the parallel degrees", field="gpus")
    dp = num_gpus // model_parallel
    if strategy.dp is not None and strategy.dp != dp:
        raise SpecError(f"dp={strategy.dp} but gpus/(tp*pp*cp) = {num_gpus}/{model_parallel} = {dp}; "
                        "leave --dp out or make dp*tp*pp*cp equal --gpus", field="dp")
    return dp


def check_training(model: ModelSpec, cluster: ClusterSpec, strategy: Strategy, workload: TrainWorkload) -> int:
    """Raise :class:`SpecError` for a training strategy that cannot run; return its data-parallel
    degree."""
    s = strategy
    columns = SimpleNamespace(
        tp=s.tp, pp=s.pp, cp=s.cp, ep=s.ep, etp=s.resolved_etp, vpp=s.vpp, zero=s.zero, micro_batch=s.micro_batch,
        sequence_parallel=s.sequence_parallel, schedule=SCHEDULE_CODES[s.resolved_schedule],
        schedule_name=s.resolved_schedule, offloads=s.offloads,
        **{k: OFFLOAD_CODES[getattr(s, k)] for k in ("offload_optimizer", "offload_params", "offload_activations")})
    case = LayoutCase(model, columns, workload, cluster.num_gpus)
    check(SHAPE_RULES, case)
    columns.dp = dp = resolve_dp(s, cluster.num_gpus)
    check(TRAINING_RULES[len(SHAPE_RULES):], case)
    to_nvme = [k for k in ("offload_optimizer", "offload_params", "offload_activations") if getattr(s, k) == "nvme"]
    if to_nvme and cluster.node.nvme is None:
        raise SpecError(f"node {cluster.node.name} has no NVMe drives to offload to; offload to cpu or pick a node "
                        "with NVMe (--node)", field=to_nvme[0])
    return dp


def check_serving(model: ModelSpec, tp: int, pp: int, ep: int, cluster: ClusterSpec) -> None:
    """Raise :class:`SpecError` for a serving replica layout that cannot run this model here."""
    node = cluster.node
    columns = SimpleNamespace(tp=tp, pp=pp, ep=ep, node_name=node.name)
    check(SERVING_RULES, LayoutCase(model, columns, gpus_per_node=node.gpus_per_node))
