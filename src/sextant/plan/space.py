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
    folding) and ep over the divisors of tp*cp*dp / etp. Read-only: cached, so that sizing a
    search (:func:`space_size`) and enumerating it build the layouts once."""
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


def space_size(model: ModelSpec, num_gpus: int, gpus_per_node: int, workload: TrainWorkload,
               space: SearchSpace) -> int:
    """Rows :func:`enumerate_space` builds before its rules (offload rows aside), counted without
    building them: the check that a search fits in time and memory before it starts."""
    return (len(_layouts(model, num_gpus, space, gpus_per_node)) * len(_micro_batches(workload, space))
            * len(space.recompute) * len(space.sequence_parallel) * len(space.zero) * space.max_vpp)


def _micro_batches(workload: TrainWorkload, space: SearchSpace) -> list[int]:
    return space.micro_batches or [d for d in divisors(workload.global_batch) if d <= space.max_micro_batch]


def enumerate_space(model: ModelSpec, num_gpus: int, gpus_per_node: int, workload: TrainWorkload,
                    space: SearchSpace, *, has_nvme: bool = False) -> Space:
    layouts = _layouts(model, num_gpus, space, gpus_per_node)
    mbs = np.array(_micro_batches(workload, space))
    rcs = np.array([RECOMPUTE_CODES[r] for r in space.recompute])
    sps = np.array(space.sequence_parallel, dtype=bool)
    zeros = np.array(space.zero)
    vpps = np.arange(1, space.max_vpp + 1)
    grid = np.meshgrid(np.arange(len(layouts)), mbs, rcs, sps, zeros, vpps, indexing="ij")
    li, mb, rc, sp, zero, vpp = (g.ravel() for g in grid)
    none = np.zeros(li.shape, np.int64)
    offload = (none, none, none)
    search_offload = space.offload if space.offload is not None else num_gpus <= gpus_per_node
    if search_offload:
        # Offloading is modelled without pipeline parallelism: cross the combinations with the
        # pp = 1 rows only.
        flat = np.flatnonzero((layouts[li, 2] == 1) & (vpp == 1))
        combos = offload_combos(has_nvme, workload.method == "zo")
        base = np.repeat(flat, len(combos))
        codes = np.tile(combos, (len(flat), 1))
        # Pair each choice only with the ZeRO stages it runs on (parameter offload: ZeRO-3;
        # optimizer offload: ZeRO >= 1), as the rules below would demand anyway.
        keep = ((codes[:, 1] == 0) | (zero[base] == 3)) & ((codes[:, 0] == 0) | (zero[base] > 0))
        base, codes = base[keep], codes[keep]
        li, mb, rc, sp, zero, vpp = (np.concatenate([x, x[base]]) for x in (li, mb, rc, sp, zero, vpp))
        offload = tuple(np.concatenate([none, codes[:, k]]) for k in range(3))
    lay = layouts[li]
    table = Candidates(dp=lay[:, 0], tp=lay[:, 1], pp=lay[:, 2], cp=lay[:, 3], ep=lay[:, 4], etp=lay[:, 5],
                       vpp=vpp, zero=zero,
                       micro_batch=mb, recompute=rc, sequence_parallel=sp,
                       schedule=np.where(vpp > 1, SCHEDULE_CODES["interleaved"], SCHEDULE_CODES["1f1b"]),
                       offload_optimizer=offload[0], offload_params=offload[1], offload_activations=offload[2])
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
    kept, rejected = first_failures((*TRAINING_RULES, *conventional), table,
                                    lambda t: LayoutCase(model, t, workload, num_gpus))
    return Space(candidates=kept, total=len(table), rejected=rejected)
