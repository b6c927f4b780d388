"""Megatron-Core's MoE parallel folding (Liu et al. 2025): the expert layers lay their own
etp x ep x expert-dp over the tp x cp x dp ranks of a pipeline stage, so that DeepSeek-V3's
published layout (tp 2, dp 32, ep 64, etp 1) runs as written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sextant.catalog import get_model
from sextant.cost.layer import moe_layer_cost, routed_rows
from sextant.cost.params import count_params, stage_params
from sextant.errors import SpecError
from sextant.plan.space import SearchSpace, enumerate_space
from sextant.resolve.train import resolve_train
from sextant.spec.scenario import TrainScenario
from sextant.train.candidates import Candidates
from sextant.train.predict import build_context, predict_train
from sextant.train.step import evaluate

MODELS = Path(__file__).resolve().parents[1] / "src" / "sextant" / "catalog" / "data" / "models"


def deepseek(**strategy) -> TrainScenario:
    base = {"tp": 2, "pp": 8, "ep": 64, "etp": 1, "zero": 1, "micro_batch": 1, "sequence_parallel": True}
    return TrainScenario.model_validate({
        "model": "deepseek-v3", "framework": "megatron-core-2024",
        "hardware": {"gpu": "h100-sxm", "gpus": 512},
        "strategy": {**base, **strategy},
        "workload": {"global_batch": 4096, "seq_len": 4096},
    })


def test_the_published_deepseek_layout_is_expressible_only_folded():
    result = predict_train(deepseek())
    assert (result.tp, result.dp, result.ep, result.etp) == (2, 32, 64, 1)
    assert "etp1" in result.layout
    with pytest.raises(SpecError, match="etp\\*ep=128 must divide tp\\*cp\\*dp=64"):
        predict_train(deepseek(etp=2))


def test_etp_defaults_to_tp_and_changes_nothing_then():
    explicit = predict_train(deepseek(ep=16, etp=2))
    default = predict_train(deepseek(ep=16, etp=None))
    assert default.etp == 2
    assert default.step_time_s == explicit.step_time_s
    assert default.memory_gb_per_gpu == explicit.memory_gb_per_gpu


def test_folding_keeps_each_gpus_expert_work_and_reshapes_it():
    model = get_model("deepseek-v3")
    ctx = resolve_train(deepseek())[1]
    dev = ctx.device
    kw = dict(flash=True, dropout=False, imbalance=1.0)
    tokens = 4096.0
    # tp 2: etp 2 splits each expert's FFN over two ranks that both see all tokens; etp 1 gives
    # each rank half the tokens and whole experts. Same FLOPs per GPU, other GEMM shapes.
    split = moe_layer_cost(model, 1, tokens, tokens, 2, True, 32, dev, etp=2, **kw)
    folded = moe_layer_cost(model, 1, tokens, tokens, 2, True, 64, dev, etp=1, **kw)
    assert float(folded.flops_fwd) == pytest.approx(float(split.flops_fwd))
    assert float(routed_rows(tokens, model, 2, 1)) == pytest.approx(tokens * model.moe.top_k / 2)
    # Expert parameters are split over etp x ep ranks.
    layers = (np.array(8.0), np.array(8.0), np.array(8.0))
    ex = stage_params(model, layers, 2, 64, np.array(False), etp=1).expert[0]
    counts = count_params(model)
    per_layer = counts.num_moe_layers * counts.num_experts * counts.moe_expert / model.num_layers
    assert float(ex) == pytest.approx(8 * per_layer / 64)


def test_expert_tensor_parallelism_adds_a_gather_of_the_dispatched_tokens():
    """With etp > 1 the tokens each rank receives are all-gathered over the etp ranks and the
    expert outputs reduce-scattered back; with etp 1 there is none."""
    ctx, cand = build_context(deepseek(ep=16, etp=2))
    two = evaluate(ctx, cand).time_parts_s["ep_comm"][0]
    ctx1, cand1 = build_context(deepseek(ep=16, etp=1))
    one = evaluate(ctx1, cand1).time_parts_s["ep_comm"][0]
    assert two > one > 0


def test_the_planner_searches_folded_layouts_where_the_framework_folds():
    ctx = resolve_train(TrainScenario.model_validate({
        "model": "mixtral-8x7b", "hardware": {"gpu": "h100-sxm", "gpus": 16},
        "workload": {"global_batch": 64, "seq_len": 4096}}))[1]
    space = enumerate_space(ctx.model, 16, 8, ctx.workload, SearchSpace()).candidates
    folded = space.take(np.flatnonzero(space.etp != space.tp))
    assert len(folded) and set(np.unique(folded.etp)) == {1}
    assert np.all((folded.tp * folded.cp * folded.dp) % (folded.etp * folded.ep) == 0)
    assert np.any(folded.ep > folded.dp * folded.cp)  # beyond what the classic rule allows
    classic = enumerate_space(ctx.model, 16, 8, ctx.workload, SearchSpace(fold_experts=False)).candidates
    assert np.all(classic.etp == classic.tp)


def test_dense_models_keep_etp_equal_to_tp():
    sc = TrainScenario.model_validate({"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 8},
                                       "strategy": {"tp": 2, "etp": 1}})
    with pytest.raises(SpecError, match="etp=1 needs a mixture-of-experts model"):
        predict_train(sc)
    assert Candidates.from_strategy(sc.strategy.model_copy(update={"etp": None}), 4).etp[0] == 2


# ---- dispatch: NCCL all-to-all against DeepEP's node-deduplicated kernels --------------------------

def test_remote_copy_share_counts_distinct_nodes():
    from sextant.cost.parallel import remote_copy_share

    qwen = get_model("qwen3-235b-a22b").moe  # top-8 of 128 experts, no group limit
    # Four nodes: a token's 8 copies reach 4 (1 - 0.75^8) = 3.6 distinct nodes on average.
    assert float(remote_copy_share(qwen, 4)) == pytest.approx(4 * (1 - 0.75**8) / 8)
    # DeepSeek-V3: 8 groups, 4 per token; over 8 nodes (one group each) it reaches at most 4.
    ds = get_model("deepseek-v3").moe
    assert (ds.expert_groups, ds.groups_per_token) == (8, 4)
    assert float(remote_copy_share(ds, 8)) == pytest.approx(4 * (1 - 0.75**8) / 8)
    assert float(remote_copy_share(ds, 4)) == pytest.approx(4 * (1 - 0.75**8) / 8)  # 2 groups a node: no limit
    assert float(remote_copy_share(ds, 16)) == pytest.approx(8 * (1 - (7 / 8) ** 8) / 8)  # a group spans 2 nodes


def _ep_comm(**strategy) -> float:
    ctx, cand = build_context(deepseek(**strategy))
    return float(evaluate(ctx, cand).time_parts_s["ep_comm"][0])


def test_deepep_sends_fewer_bytes_across_nodes_and_overlap_hides_them():
    nccl = _ep_comm()
    deepep = _ep_comm(moe_dispatcher="deepep")
    assert 0 < deepep < 0.75 * nccl
    overlapped = _ep_comm(moe_dispatcher="deepep", overlap={"ep_comm": True, "tp_comm": True})
    assert overlapped < deepep
    # Within one node there is nothing to deduplicate: the two dispatchers cost the same.
    assert _ep_comm(ep=8) == pytest.approx(_ep_comm(ep=8, moe_dispatcher="deepep"), rel=0.05)


def test_hf_config_reads_group_limited_routing():
    from sextant.catalog.hf_config import model_from_hf_config

    cfg = json.loads((MODELS / "deepseek-v3.json").read_text())
    moe = model_from_hf_config(cfg).moe
    assert (moe.expert_groups, moe.groups_per_token) == (8, 4)
    del cfg["n_group"], cfg["topk_group"]
    moe = model_from_hf_config(cfg).moe
    assert (moe.expert_groups, moe.groups_per_token) == (1, 0)
