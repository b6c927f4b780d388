"""The search space of ``plan train``: every factorization of the GPU count into dp*tp*pp*cp
(and for MoE ep, with expert tensor parallelism tp or, folded, 1) crossed with micro-batch sizes, recomputation, sequence parallelism, ZeRO stage
and virtual pipeline stages, as one :class:`Candidates` table, with the reason each rejected row
fails.

The schedule follows from vpp (1F1B, or interleaved 1F1B when vpp > 1). GPipe is not searched:
in this cost model it has 1F1B's step time and strictly more activation memory, so it is never
the better choice.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from sextant.resolve.framework import search_limits
from sextant.resolve.layout import TRAINING_RULES, LayoutCase, Rule, first_failures
from sextant.spec.base import Spec
from sextant.spec.model import ModelSpec
from sextant.spec.strategy import RECOMPUTE_CODES, SCHEDULE_CODES, Recompute
from sextant.spec.workload import TrainWorkload
from sextant.train.candidates import Candidates


class SearchSpace(Spec):
    """What the planner may vary. Defaults search everything Megatron-LM and FSDP offer."""

    micro_batches: list[int] | None = Field(
        default=None, description="Default: the divisors of the global batch up to max_micro_batch.")
    max_micro_batch: int = Field(default=16, gt=0)
    recompute: list[Recompute] = ["none", "selective", "full"]
    zero: list[int] = [0, 1, 2, 3]
    sequence_parallel: list[bool] = [False, True]
    max_vpp: int = Field(default=8, gt=0)
    cp: bool = Field(default=True, description="Search context parallelism.")
    fold_experts: bool = Field(
        default=True, description="MoE: also search expert tensor parallelism 1 under tp > 1, the expert layers "
                                  "folded onto the attention's ranks (Megatron-Core MoE parallel folding).")
    tp_within_node: bool = Field(default=True, description="Keep tensor parallelism inside a node.")
    headroom: float = Field(default=0.0, ge=0.0, lt=1.0, description="Fraction of GPU memory left free.")
    memory_bound_ratio: float = Field(
        default=1.0, ge=1.0, description="A configuration fits when its predicted peak times this ratio fits: 1 "
                                         "trusts the estimate; plan train's default is the 90% upper bound's ratio "
                                         "(catalog/data/memory_bound.yaml).")
    offload: bool | None = Field(
        default=None, description="Search offloading (optimizer, parameters, activations to host memory or NVMe). "
                                  "Default: on when the job fits in one node, where offloading is the alternative "
                                  "to more GPUs.")


def restrict_to_framework(space: SearchSpace, framework: str | None) -> SearchSpace:
    """The part of ``space`` the framework can run (its preset's ``search`` limits)."""
    limits = search_limits(framework)
    update: dict = {}
    for key in ("zero", "recompute", "sequence_parallel"):
        if key in limits:
            update[key] = [v for v in getattr(space, key) if v in limits[key]]
    for key in ("cp", "fold_experts"):
        if limits.get(key) is False:
            update[key] = False
    if "max_vpp" in limits:
        update["max_vpp"] = min(space.max_vpp, int(limits["max_vpp"]))
    return space.model_copy(update=update)


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending (pairs d, n/d up to sqrt(n))."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


@dataclass
class Space:
    """The enumerated table and what was rejected before evaluation."""

    candidates: Candidates  # rows that pass every structural rule
    total: int  # rows enumerated
    rejected: dict[str, int]  # reason -> rows


def _layouts(model: ModelSpec, num_gpus: int, space: SearchSpace, gpus_per_node: int) -> np.ndarray:
    """(dp, tp, pp, cp, ep, etp) with dp*tp*pp*cp = num_gpus; for MoE, etp = tp (and 1 when
    folding) and ep over the divisors of tp*cp*dp / etp. Read-only: cached across searches."""
    return _layout_table(model.moe is not None, num_gpus, space.cp, space.fold_experts)


@functools.lru_cache(maxsize=64)
def _layout_table(moe: bool, num_gpus: int, cp_search: bool, fold_experts: bool) -> np.ndarray:
    rows = []
    for tp in divisors(num_gpus):
        for cp in divisors(num_gpus // tp) if cp_search else [1]:
            for pp in divisors(num_gpus // (tp * cp)):
                dp = num_gpus // (tp * cp * pp)
                if not moe:
                    rows.append((dp, tp, pp, cp, 1, tp))
                    continue
                for etp in sorted({tp, 1} if fold_experts else {tp}):
                    rows.extend((dp, tp, pp, cp, ep, etp) for ep in divisors(tp * cp * dp // etp))
    table = np.array(rows, dtype=np.int64)
    table.flags.writeable = False
    return table


def offload_combos(has_nvme: bool, zeroth_order: bool) -> np.ndarray:
    """(optimizer, parameters, activations) offload codes worth searching: anything but all-none,
    parameters only with the optimizer offloaded too (as ZeRO-Infinity runs; zeroth-order
    training has no optimizer), NVMe only where the node has drives."""
    targets = [1, 2] if has_nvme else [1]
    opt = [0, *targets, 3]
    rows = [(o, p, a) for o in opt for p in [0, *targets] for a in [0, *targets]
            if (o, p, a) != (0, 0, 0) and (p == 0 or o > 0 or zeroth_order)]
    return np.array(rows, dtype=np.int64)


def layout_count(moe: bool, num_gpus: int, space: SearchSpace) -> int:
    """Rows :func:`_layout_table` would build, counted without building them (the check that a
    search fits in time and memory before it starts): for each (tp, pp) the cp x dp splits of
    the rest, and for MoE each expert tensor parallelism times the ep dividing tp*cp*dp/etp,
    which does not depend on cp."""
    divs = divisors(num_gpus)
    count_of = {m: sum(1 for d in divs if d <= m and m % d == 0) for m in divs}  # divisors of each divisor
    total = 0
    for tp in divs:
        for pp in divisors(num_gpus // tp):
            splits = count_of[num_gpus // (tp * pp)] if space.cp else 1
            if not moe:
                total += splits
                continue
            etps = sorted({tp, 1} if space.fold_experts else {tp})
            total += splits * sum(count_of[num_gpus // (pp * etp)] for etp in etps)
    return total


def _micro_batches(workload: TrainWorkload, space: SearchSpace) -> list[int]:
    return space.micro_batches or [d for d in divisors(workload.global_batch) if d <= space.max_micro_batch]


#: The columns a row gains at each stage of the enumeration, in order: the layout first, then
#: the axes crossed with it one at a time. ``schedule`` follows from ``vpp``; the offload stage
#: adds offload variants of the rows that survived every other rule.
_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("layout", ("dp", "tp", "pp", "cp", "ep", "etp")),
    ("vpp", ("vpp", "schedule")),
    ("micro_batch", ("micro_batch",)),
    ("sequence_parallel", ("sequence_parallel",)),
    ("recompute", ("recompute",)),
    ("zero", ("zero",)),
    ("offload", ("offload_optimizer", "offload_params", "offload_activations", "offloads")),
)
#: Rows crossed at once: bounds the enumeration's memory whatever the space.
CHUNK_ROWS = 1 << 19


class _Columns:
    """A column table (NumPy arrays by name) with ``take`` and ``len``: a partial row set."""

    def __init__(self, **columns: np.ndarray) -> None:
        self.__dict__.update(columns)

    def __len__(self) -> int:
        return len(self.dp)

    def take(self, index: np.ndarray) -> _Columns:
        return _Columns(**{k: v[index] for k, v in self.__dict__.items()})

    @property
    def offloads(self) -> np.ndarray:
        return (self.offload_optimizer > 0) | (self.offload_params > 0) | (self.offload_activations > 0)


class _Reads:
    """Records which columns a rule reads (every column reads as ones)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_"):
            raise AttributeError(name)
        self.names.add(name)
        return np.ones(1, dtype=np.int64)


def _stage_of(rule: Rule, model: ModelSpec, workload: TrainWorkload, num_gpus: int) -> int:
    """The first stage at which every column ``rule`` reads exists."""
    reads = _Reads()
    rule.passes(LayoutCase(model, reads, workload, num_gpus))
    stage_of_column = {c: i for i, (_, columns) in enumerate(_STAGES) for c in columns}
    return max((stage_of_column[c] for c in reads.names), default=0)


def enumerate_space(model: ModelSpec, num_gpus: int, gpus_per_node: int, workload: TrainWorkload,
                    space: SearchSpace, *, has_nvme: bool = False) -> Space:
    """The rows that pass every layout rule, built stage by stage (:data:`_STAGES`): each rule is
    applied as soon as the columns it reads exist, so a layout that cannot run is never crossed
    with micro-batches, recomputation or ZeRO stages, and the space is crossed in chunks of at
    most :data:`CHUNK_ROWS` rows. A rejected partial row counts every row it stands for, under
    the first rule (in stage order, then rule order) it fails. The kept rows come out in the order
    of the full cross product (layout, micro-batch, recomputation, sequence parallelism, ZeRO,
    vpp; offload variants after), as if it had been built whole."""
    layers = model.num_layers
    # Search constraints beyond what can run at all: a planner proposes balanced, conventional
    # layouts (the layer count, or it plus the embedding and loss, splits evenly over the virtual
    # stages) and keeps tensor parallelism on the intra-node link unless told otherwise.
    conventional = [Rule("layers do not split evenly over pp*vpp stages", "vpp",
                         lambda x: (layers % (x.pp * x.vpp) == 0) | ((layers + 2) % (x.pp * x.vpp) == 0),
                         lambda x: f"pp*vpp={x.pp * x.vpp} does not split the {layers} layers evenly")]
    if space.tp_within_node:
        conventional.append(Rule("tp spans nodes", "tp", lambda x: x.tp <= gpus_per_node,
                                 lambda x: f"tp={x.tp} spans nodes of {gpus_per_node} GPUs"))
    rules = (*TRAINING_RULES, *conventional)
    by_stage: list[list[Rule]] = [[] for _ in _STAGES]
    for rule in rules:
        by_stage[_stage_of(rule, model, workload, num_gpus)].append(rule)
    grid = _Grid(model, num_gpus, workload, space, gpus_per_node, has_nvme)
    rejected: dict[str, int] = {}
    kept: list[_Columns] = []
    layouts = grid.layouts
    rows_per_layout = max(1, grid.rows_per_layout)
    step = max(1, CHUNK_ROWS // rows_per_layout)
    for lo in range(0, len(layouts), step):
        chunk = grid.layout_rows(np.arange(lo, min(lo + step, len(layouts))))
        for stage, stage_rules in enumerate(by_stage):
            if stage:
                chunk = grid.cross(chunk, _STAGES[stage][0])
            if stage_rules and len(chunk):
                chunk, _ = first_failures(tuple(stage_rules), chunk, lambda t: LayoutCase(model, t, workload, num_gpus),
                                          weight=grid.stands_for(chunk, stage), rejected=rejected)
            if not len(chunk):
                break
        if len(chunk):
            kept.append(chunk)
    table = grid.candidates(kept)
    return Space(candidates=table, total=grid.total, rejected=rejected)


class _Grid:
    """The axes of the space and how a partial row is crossed with the next one."""

    def __init__(self, model: ModelSpec, num_gpus: int, workload: TrainWorkload, space: SearchSpace,
                 gpus_per_node: int, has_nvme: bool) -> None:
        self.layouts = _layouts(model, num_gpus, space, gpus_per_node)
        self.axes = {"vpp": np.arange(1, space.max_vpp + 1), "micro_batch": np.array(_micro_batches(workload, space)),
                     "sequence_parallel": np.array(space.sequence_parallel, dtype=bool),
                     "recompute": np.array([RECOMPUTE_CODES[r] for r in space.recompute]),
                     "zero": np.array(space.zero)}
        search_offload = space.offload if space.offload is not None else num_gpus <= gpus_per_node
        combos = offload_combos(has_nvme, workload.method == "zo") if search_offload else np.zeros((0, 3), np.int64)
        # Each offload choice is paired only with the ZeRO stages it runs on (parameter offload:
        # ZeRO-3; optimizer offload: ZeRO >= 1), as the rules would demand anyway.
        self.combos_by_zero = {int(z): combos[((combos[:, 1] == 0) | (z == 3)) & ((combos[:, 0] == 0) | (z > 0))]
                               for z in self.axes["zero"]}
        self.offloads_by_zero = np.zeros(max(self.combos_by_zero, default=0) + 1, np.int64)
        for z, c in self.combos_by_zero.items():
            self.offloads_by_zero[z] = len(c)
        others = int(np.prod([len(a) for a in self.axes.values()]))
        self.rows_per_layout = others
        flat_rows = (len(self.axes["micro_batch"]) * len(self.axes["sequence_parallel"]) * len(self.axes["recompute"])
                     * int(self.offloads_by_zero[self.axes["zero"]].sum()))
        self.total = len(self.layouts) * others + int(np.count_nonzero(self.layouts[:, 2] == 1)) * flat_rows

    def layout_rows(self, index: np.ndarray) -> _Columns:
        lay = self.layouts[index]
        return _Columns(layout=index, dp=lay[:, 0], tp=lay[:, 1], pp=lay[:, 2], cp=lay[:, 3], ep=lay[:, 4],
                        etp=lay[:, 5])

    def cross(self, table: _Columns, axis: str) -> _Columns:
        n = len(table)
        if axis == "offload":
            return self._with_offloads(table)
        values = self.axes[axis]
        rows = table.take(np.repeat(np.arange(n), len(values)))
        setattr(rows, axis, np.tile(values, n))
        setattr(rows, f"{axis}_index", np.tile(np.arange(len(values)), n))
        if axis == "vpp":
            rows.schedule = np.where(rows.vpp > 1, SCHEDULE_CODES["interleaved"], SCHEDULE_CODES["1f1b"])
        return rows

    def _with_offloads(self, table: _Columns) -> _Columns:
        none = np.zeros(len(table), np.int64)
        base = _Columns(**vars(table), offload_optimizer=none, offload_params=none, offload_activations=none,
                        variant=np.full(len(table), -1))
        flat = np.flatnonzero((table.pp == 1) & (table.vpp == 1))
        parts = [base]
        for z, combos in self.combos_by_zero.items():
            rows = flat[table.zero[flat] == z]
            if not len(rows) or not len(combos):
                continue
            variant = table.take(np.repeat(rows, len(combos)))
            codes = np.tile(combos, (len(rows), 1))
            parts.append(_Columns(**vars(variant), offload_optimizer=codes[:, 0], offload_params=codes[:, 1],
                                  offload_activations=codes[:, 2], variant=np.tile(np.arange(len(combos)), len(rows))))
        return _Columns(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in vars(base)})

    def stands_for(self, table: _Columns, stage: int) -> np.ndarray | int:
        """The rows of the full space each partial row of ``table`` stands for at ``stage``."""
        name = _STAGES[stage][0]
        if name == "offload":
            return 1
        fixed = {s for s, _ in _STAGES[1:stage + 1]}
        rest = int(np.prod([len(self.axes[a]) for a in ("micro_batch", "sequence_parallel", "recompute")
                            if a not in fixed]))
        vpps = 1 if "vpp" in fixed else len(self.axes["vpp"])
        zeros = 1 if "zero" in fixed else len(self.axes["zero"])
        flat = (table.pp == 1) & ((table.vpp == 1) if "vpp" in fixed else True)
        offloads = self.offloads_by_zero[table.zero] if "zero" in fixed else int(self.offloads_by_zero[self.axes["zero"]].sum())
        return rest * (vpps * zeros + flat * offloads)

    def candidates(self, kept: list[_Columns]) -> Candidates:
        if not kept:
            empty = np.zeros(0, np.int64)
            return Candidates(dp=empty, tp=empty, pp=empty, cp=empty, ep=empty, etp=empty, vpp=empty, zero=empty,
                              micro_batch=empty, recompute=empty, sequence_parallel=empty.astype(bool),
                              schedule=empty)
        t = _Columns(**{k: np.concatenate([getattr(c, k) for c in kept]) for k in vars(kept[0])})
        # The order of the full cross product: base rows by (layout, micro-batch, recompute, sp, ZeRO,
        # vpp), then the offload variants by their base row and choice.
        order = np.lexsort((t.variant, t.vpp_index, t.zero_index, t.sequence_parallel_index, t.recompute_index,
                            t.micro_batch_index, t.layout, t.variant >= 0))
        t = t.take(order)
        return Candidates(dp=t.dp, tp=t.tp, pp=t.pp, cp=t.cp, ep=t.ep, etp=t.etp, vpp=t.vpp, zero=t.zero,
                          micro_batch=t.micro_batch, recompute=t.recompute, sequence_parallel=t.sequence_parallel,
                          schedule=t.schedule, offload_optimizer=t.offload_optimizer,
                          offload_params=t.offload_params, offload_activations=t.offload_activations)
