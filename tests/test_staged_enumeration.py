"""plan train's staged enumeration (plan/space.py) keeps exactly the rows the whole cross product
would keep, in the same order, and counts every rejected row once, whatever the chunk size."""

from __future__ import annotations

import numpy as np
import pytest

from sextant.plan import space as space_module
from sextant.plan.space import SearchSpace, _layouts, _micro_batches, enumerate_space, offload_combos
from sextant.resolve.layout import TRAINING_RULES, LayoutCase, Rule, first_failures
from sextant.resolve.train import resolve_train
from sextant.spec.scenario import parse_scenario
from sextant.spec.strategy import RECOMPUTE_CODES, SCHEDULE_CODES
from sextant.train.candidates import Candidates

COLUMNS = ("dp", "tp", "pp", "cp", "ep", "etp", "vpp", "zero", "micro_batch", "recompute", "sequence_parallel",
           "schedule", "offload_optimizer", "offload_params", "offload_activations")


def whole_cross_product(model, num_gpus, gpus_per_node, workload, space, has_nvme):
    """The enumeration as it was: every row of the cross product built, then the rules applied."""
    layouts = _layouts(model, num_gpus, space, gpus_per_node)
    grid = np.meshgrid(np.arange(len(layouts)), np.array(_micro_batches(workload, space)),
                       np.array([RECOMPUTE_CODES[r] for r in space.recompute]),
                       np.array(space.sequence_parallel, dtype=bool), np.array(space.zero),
                       np.arange(1, space.max_vpp + 1), indexing="ij")
    li, mb, rc, sp, zero, vpp = (g.ravel() for g in grid)
    none = np.zeros(li.shape, np.int64)
    offload = (none, none, none)
    if space.offload if space.offload is not None else num_gpus <= gpus_per_node:
        flat = np.flatnonzero((layouts[li, 2] == 1) & (vpp == 1))
        combos = offload_combos(has_nvme, workload.method == "zo")
        base = np.repeat(flat, len(combos))
        codes = np.tile(combos, (len(flat), 1))
        keep = ((codes[:, 1] == 0) | (zero[base] == 3)) & ((codes[:, 0] == 0) | (zero[base] > 0))
        base, codes = base[keep], codes[keep]
        li, mb, rc, sp, zero, vpp = (np.concatenate([x, x[base]]) for x in (li, mb, rc, sp, zero, vpp))
        offload = tuple(np.concatenate([none, codes[:, k]]) for k in range(3))
    lay = layouts[li]
    table = Candidates(dp=lay[:, 0], tp=lay[:, 1], pp=lay[:, 2], cp=lay[:, 3], ep=lay[:, 4], etp=lay[:, 5],
                       vpp=vpp, zero=zero, micro_batch=mb, recompute=rc, sequence_parallel=sp,
                       schedule=np.where(vpp > 1, SCHEDULE_CODES["interleaved"], SCHEDULE_CODES["1f1b"]),
                       offload_optimizer=offload[0], offload_params=offload[1], offload_activations=offload[2])
    layers = model.num_layers
    rules = (*TRAINING_RULES,
             Rule("layers do not split evenly over pp*vpp stages", "vpp",
                  lambda x: (layers % (x.pp * x.vpp) == 0) | ((layers + 2) % (x.pp * x.vpp) == 0), str),
             Rule("tp spans nodes", "tp", lambda x: x.tp <= gpus_per_node, str))
    kept, rejected = first_failures(rules, table, lambda t: LayoutCase(model, t, workload, num_gpus))
    return kept, len(table), rejected


CASES = [("llama-3.1-8b", 8, {}), ("gpt3-175b", 1024, {}), ("mixtral-8x7b", 64, {}), ("deepseek-v3", 2048, {}),
         ("llama-3.1-8b", 1, {"offload": True}), ("qwen3-30b-a3b", 16, {"offload": True}),
         ("llama-3.1-70b", 96, {"zero": [1, 3], "max_vpp": 4})]


@pytest.mark.parametrize("model,gpus,options", CASES, ids=[f"{m}-{g}" for m, g, _ in CASES])
@pytest.mark.parametrize("chunk", [space_module.CHUNK_ROWS, 97])
def test_staged_enumeration_keeps_what_the_whole_cross_product_keeps(model, gpus, options, chunk, monkeypatch):
    monkeypatch.setattr(space_module, "CHUNK_ROWS", chunk)
    _, ctx = resolve_train(parse_scenario({"model": model, "hardware": {"gpus": gpus},
                                           "workload": {"global_batch": 192}}))
    search = SearchSpace(**options)
    has_nvme = ctx.cluster.node.nvme is not None
    staged = enumerate_space(ctx.model, gpus, ctx.cluster.gpus_per_node, ctx.workload, search, has_nvme=has_nvme)
    kept, total, rejected = whole_cross_product(ctx.model, gpus, ctx.cluster.gpus_per_node, ctx.workload, search,
                                                has_nvme)
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(staged.candidates, name), getattr(kept, name), err_msg=name)
    assert staged.total == total
    assert sum(staged.rejected.values()) == sum(rejected.values()) == total - len(kept)
    # A reason counts only rows that fail it (it may take rows another rule would also refuse).
    assert set(staged.rejected) <= {r.reason for r in TRAINING_RULES} | {
        "layers do not split evenly over pp*vpp stages", "tp spans nodes"}


@pytest.mark.parametrize("moe", [False, True])
@pytest.mark.parametrize("gpus", [1, 12, 96, 360, 1024, 5040])
@pytest.mark.parametrize("cp,fold", [(True, True), (False, True), (True, False)])
def test_the_size_check_counts_the_layouts_it_would_build(moe, gpus, cp, fold):
    from sextant.plan.space import _layout_table, layout_count

    assert layout_count(moe, gpus, SearchSpace(cp=cp, fold_experts=fold)) == len(_layout_table(moe, gpus, cp, fold))
