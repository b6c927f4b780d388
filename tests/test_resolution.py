"""Resolution in one room: a scenario becomes its context once, the derived objects are values,
the layout rules are one set for training and serving, and the planner explains its rows from the
context it searched with."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sextant.catalog import get_model
from sextant.cost.precision import KV_BYTES, PRECISION_BYTES, weight_bytes
from sextant.errors import SpecError
from sextant.plan.search import plan_train, rank_rows, tie_breaks
from sextant.plan.space import SearchSpace, enumerate_space
from sextant.resolve.hardware import load_profile_file
from sextant.resolve.layout import TRAINING_RULES, LayoutCase, check_serving, first_failures, rule_masks
from sextant.resolve.serve import resolve_serve
from sextant.resolve.train import resolve_train
from sextant.serve.predict import predict_serve
from sextant.spec.scenario import TrainScenario
from sextant.spec.serving import ServeScenario
from sextant.spec.strategy import OFFLOAD_NAMES, RECOMPUTE_NAMES, SCHEDULE_NAMES
from sextant.train.candidates import Candidates
from sextant.train.predict import build_context, predict_train
from sextant.train.step import evaluate


def train_scenario(**extra) -> TrainScenario:
    return TrainScenario.model_validate({"model": "llama-3.1-8b", "hardware": {"gpu": "a100-80gb", "gpus": 16},
                                         "workload": {"global_batch": 64, "seq_len": 4096}, **extra})


def test_a_context_derives_its_objects_once_and_again_when_replaced():
    _, ctx = resolve_train(train_scenario(framework="megatron-core-2024"))
    assert ctx.device is ctx.device and ctx.tiers is ctx.tiers and ctx.method is ctx.method
    assert ctx.device.profile is ctx.profile and ctx.precision_bytes == PRECISION_BYTES["bf16"]
    slower = ctx.profile.model_copy(update={"intra_node_bw_efficiency": 0.1})
    other = dataclasses.replace(ctx, profile=slower, precision="fp32")
    assert other.device.profile is slower and other.fabric.intra_bw < ctx.fabric.intra_bw
    assert other.precision_bytes == PRECISION_BYTES["fp32"] and other.device.gemm_bytes == 4.0


def test_the_preset_is_applied_once_and_filling_again_changes_nothing():
    filled, ctx = resolve_train(train_scenario(framework="megatron-lm-2021"))
    assert ctx.framework == "megatron-lm-2021" and ctx.attention_kernel == "unfused" and ctx.dropout
    again, ctx2 = resolve_train(filled)
    assert again == filled and ctx2.overlap == ctx.overlap and ctx2.profile == ctx.profile


def test_a_profile_file_is_read_once_per_version(tmp_path):
    _, ctx = resolve_train(train_scenario())
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"profile": ctx.profile.model_dump()}))
    first = load_profile_file(str(path))
    assert load_profile_file(str(path)) is first
    changed = ctx.profile.model_copy(update={"memory_bw_efficiency": 0.5}).model_dump()
    path.write_text(json.dumps({"profile": changed}) + "\n")
    assert load_profile_file(str(path)).profile.memory_bw_efficiency == 0.5
    path.write_text("{not json")
    with pytest.raises(SpecError, match="is not a valid hardware profile"):
        load_profile_file(str(path))


def test_one_precision_table_serves_training_and_serving():
    assert KV_BYTES["fp8"] == PRECISION_BYTES["fp8"].gemm_operand == 1.0
    assert weight_bytes("bf16") == PRECISION_BYTES["bf16"].weight == 2.0
    assert KV_BYTES["int4"] == pytest.approx(0.5 + 2 / 64)
    ctx = resolve_serve(ServeScenario.model_validate({"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm",
                                                                                            "gpus": 1},
                                                      "deployment": {"precision": "fp8"}}))
    assert ctx.layout.kv_bytes == KV_BYTES["fp8"] and ctx.layout.dev.gemm_bytes == 1.0
    assert ctx.layout.head_dev.gemm_bytes == 2.0


def test_zero_gathers_parameters_at_the_training_precision():
    """The ZeRO parameter all-gather and ZeRO-3's buffers move weights at their own width: fp32
    training gathers 4 bytes per parameter (it was priced at 2)."""
    def run(precision: str):
        sc = train_scenario(strategy={"zero": 3, "precision": precision,
                                      "overlap": {"dp_param_gather": False, "dp_grad_reduce": False}})
        ctx, cand = build_context(sc)
        return ctx, evaluate(ctx, cand)

    bf16_ctx, bf16 = run("bf16")
    fp32_ctx, fp32 = run("fp32")
    assert fp32.memory_parts_bytes["comm_buffers"][0] == pytest.approx(2 * bf16.memory_parts_bytes["comm_buffers"][0])
    # bf16 reduce-scatters 4-byte gradients and gathers 2-byte weights; fp32 moves 4 bytes both ways.
    assert fp32.time_parts_s["dp_comm"][0] > bf16.time_parts_s["dp_comm"][0]


def test_serving_and_training_refuse_the_same_shapes_with_the_same_words():
    model = get_model("llama-2-13b")  # 40 heads, 40 KV heads
    _, ctx = resolve_train(TrainScenario.model_validate({"model": "llama-2-13b", "hardware": {"gpus": 8}}))
    with pytest.raises(SpecError) as serving:
        check_serving(model, 3, 1, 1, ctx.cluster)
    with pytest.raises(SpecError) as training:
        predict_train(TrainScenario.model_validate({"model": "llama-2-13b", "hardware": {"gpus": 6},
                                                    "strategy": {"tp": 3}}))
    assert str(serving.value) == str(training.value) and "tp=3 does not divide the 40 attention heads" in str(
        serving.value)
    # Grouped-query attention: 8 KV heads and tp 16 replicate each twice in both (vLLM, Megatron);
    # tp 6 with 4 KV heads divides neither way.
    gqa = get_model("llama-3.1-70b").model_copy(update={"num_kv_heads": 4, "num_heads": 48})
    with pytest.raises(SpecError, match="KV heads"):
        check_serving(gqa, 6, 1, 1, ctx.cluster)


def test_first_failures_attributes_rows_as_masks_over_the_whole_table_do():
    """Dropping failed rows as the rules go changes nothing: each rejected row counts under the
    first rule it breaks, and the rows kept are those every mask passes, in order."""
    sc = TrainScenario.model_validate({"model": "mixtral-8x7b", "hardware": {"gpu": "h100-sxm", "gpus": 64},
                                       "workload": {"global_batch": 96, "seq_len": 4096}})
    _, ctx = resolve_train(sc)
    rng = np.random.default_rng(3)
    n = 5000
    pick = lambda values: rng.choice(values, n)  # noqa: E731
    vpp = pick([1, 2, 4, 16])
    table = Candidates(dp=pick([1, 2, 4, 8, 16]), tp=pick([1, 2, 3, 4, 8]), pp=pick([1, 2, 4, 5, 8, 32, 40]),
                       cp=pick([1, 2, 4]), ep=pick([1, 2, 3, 8]), vpp=vpp, zero=pick([0, 1, 2, 3]),
                       micro_batch=pick([1, 2, 3, 4]), recompute=pick([0, 1, 2]),
                       sequence_parallel=pick([False, True]), schedule=np.where(vpp > 1, 2, 1))
    case = LayoutCase(ctx.model, table, ctx.workload, 64)
    masks = rule_masks(TRAINING_RULES, case)
    ok = np.ones(n, bool)
    expected: dict[str, int] = {}
    for reason, passes in masks.items():
        if (ok & ~passes).any():
            expected[reason] = int((ok & ~passes).sum())
        ok &= passes
    kept, rejected = first_failures(TRAINING_RULES, table, lambda t: LayoutCase(ctx.model, t, ctx.workload, 64))
    assert rejected == expected
    assert all((getattr(kept, k) == getattr(table, k)[ok]).all() for k in Candidates.__dataclass_fields__)


def test_the_planner_explains_its_rows_as_predict_does():
    """The top rows are explained from the searched context and their own row; the scalar path
    (a scenario with that strategy, resolved and checked again) gives the same report."""
    sc = train_scenario()
    plan = plan_train(sc, [16], top_k=3)
    for row in plan.top:
        strategy = {k: getattr(row, k) for k in ("tp", "pp", "cp", "ep", "vpp", "zero", "micro_batch", "recompute",
                                                 "sequence_parallel", "schedule", "offload_optimizer", "offload_params",
                                                 "offload_activations")}
        again = predict_train(sc.model_copy(update={"strategy": sc.strategy.model_copy(update=strategy)}))
        assert again == row


def test_one_ranking_order_within_and_across_gpu_counts():
    """Equal scores rank by memory, then the tie-breaks, whether one count is ranked or several
    merged: the planner's best among counts is a row its own count also ranks first."""
    sc = train_scenario()
    plan = plan_train(sc, [8, 16], top_k=4)
    _, ctx = resolve_train(sc.model_copy(update={"hardware": sc.hardware.model_copy(update={"gpus": plan.best.gpus})}))
    table = enumerate_space(ctx.model, plan.best.gpus, ctx.cluster.gpus_per_node, ctx.workload, SearchSpace(),
                            has_nvme=ctx.cluster.node.nvme is not None).candidates
    ev = evaluate(ctx, table, detail=False)
    score = np.where(ev.fits, ev.tokens_per_s, -np.inf)
    first = table.row(int(rank_rows(score, ev.memory_bytes, table)[0]))
    assert (first["tp"], first["pp"], first["cp"], first["zero"], first["micro_batch"]) == (
        plan.best.tp, plan.best.pp, plan.best.cp, plan.best.zero, plan.best.micro_batch)
    assert RECOMPUTE_NAMES[first["recompute"]] == plan.best.recompute
    assert len(tie_breaks(table)) == 5


def test_strategy_codes_have_one_inverse():
    cand = Candidates.from_strategy(train_scenario(strategy={"offload_optimizer": "interleaved", "zero": 1,
                                                             "recompute": "selective"}).strategy, 16)
    row = cand.row(0)
    assert OFFLOAD_NAMES[row["offload_optimizer"]] == "interleaved"
    assert RECOMPUTE_NAMES[row["recompute"]] == "selective" and SCHEDULE_NAMES[row["schedule"]] == "1f1b"


def test_serving_resolves_without_training_and_speculation_costs_in_the_iteration():
    base = {"model": "llama-3.1-70b", "hardware": {"gpu": "h100-sxm", "gpus": 4}, "deployment": {"tp": 4},
            "workload": {"input_len": 256, "output_len": 64, "num_requests": 32}}
    plain = predict_serve(ServeScenario.model_validate(base))
    spec = predict_serve(ServeScenario.model_validate({**base, "speculative": {
        "draft_model": "llama-3.1-8b", "num_tokens": 4, "acceptance_rate": 0.7}}))
    assert spec.tpot_ms.p50 < plain.tpot_ms.p50
    ctx = resolve_serve(ServeScenario.model_validate({**base, "speculative": {"draft_model": "llama-3.1-8b"}}))
    assert ctx.draft_model.name == "llama-3.1-8b" and ctx.draft_layout.tp == 4
    assert ctx.used.num_gpus == 4 and ctx.tiers.host_capacity > 0



def test_an_unfitted_profile_says_so_in_every_report():
    fitted = predict_train(train_scenario())
    assert fitted.profile_fitted and not any("not fitted" in a for a in fitted.assumptions)
    unfitted = predict_train(train_scenario(hardware={"gpu": "b200", "gpus": 8}))
    assert not unfitted.profile_fitted
    assert any(a.startswith("profile b200-fp8-fitted is not fully fitted") for a in unfitted.assumptions)
    serve = predict_serve(ServeScenario.model_validate({"model": "llama-3.1-8b", "hardware": {"gpu": "h200", "gpus": 1},
                                                        "workload": {"num_requests": 8}}))
    assert serve.profile_fitted is False and serve.profile == "h200-from-h100-fit"
