"""The planner: one cost model with predict, rules shared with predict, search bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sextant.cli.app import main
from sextant.cli.plan_cmds import parse_gpu_counts
from sextant.errors import InfeasibleError, SpecError
from sextant.plan.search import plan_train
from sextant.plan.space import SearchSpace, enumerate_space
from sextant.resolve.layout import check_training, training_masks
from sextant.resolve.train import resolve_train
from sextant.spec.scenario import TrainScenario
from sextant.spec.strategy import RECOMPUTE_CODES
from sextant.train.candidates import Candidates
from sextant.train.predict import build_context, predict_train
from sextant.train.step import evaluate

RECOMPUTE_NAMES = {v: k for k, v in RECOMPUTE_CODES.items()}


def scenario(model="gpt3-1.3b", gpu="a100-80gb", gpus=64, batch=256, seq=2048, **extra):
    return TrainScenario.model_validate({"model": model, "hardware": {"gpu": gpu, "gpus": gpus},
                                         "workload": {"global_batch": batch, "seq_len": seq}, **extra})


def strategy_of(row: dict) -> dict:
    return {"dp": row["dp"], "tp": row["tp"], "pp": row["pp"], "cp": row["cp"], "ep": row["ep"], "etp": row["etp"],
            "vpp": row["vpp"],
            "zero": row["zero"], "micro_batch": row["micro_batch"], "recompute": RECOMPUTE_NAMES[row["recompute"]],
            "sequence_parallel": bool(row["sequence_parallel"]),
            "schedule": "interleaved" if row["vpp"] > 1 else "1f1b"}


@pytest.mark.parametrize("model, gpu, gpus, batch", [("gpt3-1.3b", "a100-80gb", 64, 256),
                                                     ("mixtral-8x7b", "h100-sxm", 32, 128),
                                                     ("llama-3.1-70b", "h100-sxm", 128, 256)])
def test_planner_table_equals_predict_row_by_row(model, gpu, gpus, batch):
    """The issue's check: the vectorised search and ``predict train`` agree to 1e-9 relative."""
    sc = scenario(model, gpu, gpus, batch)
    ctx = resolve_train(sc)[1]
    table = enumerate_space(ctx.model, gpus, ctx.cluster.gpus_per_node, ctx.workload, SearchSpace()).candidates
    ev = evaluate(ctx, table, detail=False)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(table), size=min(25, len(table)), replace=False):
        data = sc.model_dump(exclude_unset=True)
        data["strategy"] = strategy_of(table.row(int(i)))
        result = predict_train(TrainScenario.model_validate(data))
        assert result.step_time_s == pytest.approx(float(ev.step_time_s[i]), rel=1e-9)
        assert result.memory_gb_per_gpu["total"] * 2**30 == pytest.approx(float(ev.memory_bytes[i]), rel=1e-9)


def test_rule_masks_agree_with_check_training():
    """Random strategies, valid or not: check_training raises exactly when a mask rejects."""
    sc = scenario("mixtral-8x7b", "h100-sxm", 32, 96, 4096)
    ctx = resolve_train(sc)[1]
    rng = np.random.default_rng(1)
    n = 400
    choice = lambda values: rng.choice(values, n)  # noqa: E731
    tp, pp, cp = choice([1, 2, 3, 4, 8]), choice([1, 2, 4, 5, 8, 32, 40]), choice([1, 2, 3, 4])
    table = Candidates(dp=np.maximum(32 // (tp * pp * cp), 1), tp=tp, pp=pp, cp=cp, ep=choice([1, 2, 3, 4, 8]),
                       vpp=choice([1, 2, 4, 16]), zero=choice([0, 1, 2, 3]), micro_batch=choice([1, 2, 3, 4, 5]),
                       recompute=choice([0, 1, 2]), sequence_parallel=choice([False, True]),
                       schedule=np.ones(n, int))
    table = Candidates(**{**{k: getattr(table, k) for k in Candidates.__dataclass_fields__},
                          "schedule": np.where(table.vpp > 1, 2, 1)})
    masks = training_masks(ctx.model, 32, ctx.workload, table)
    passes = np.logical_and.reduce(list(masks.values()))
    from sextant.spec.strategy import Strategy

    for i in range(n):
        strat = Strategy.model_validate(strategy_of(table.row(i)))
        try:
            check_training(ctx.model, ctx.cluster, strat, ctx.workload)
            ok = True
        except SpecError:
            ok = False
        assert ok == bool(passes[i]), (table.row(i), {k: bool(v[i]) for k, v in masks.items()})


def test_space_bookkeeping_adds_up():
    sc = scenario()
    ctx = resolve_train(sc)[1]
    space = enumerate_space(ctx.model, 64, 8, ctx.workload, SearchSpace())
    assert space.total == len(space.candidates) + sum(space.rejected.values())
    assert (space.candidates.tp <= 8).all()
    result = plan_train(sc, [64])
    assert result.configs_evaluated == len(space.candidates)
    assert result.configs_feasible + result.rejected.get("does not fit in memory", 0) == result.configs_evaluated
    tight = plan_train(scenario("gpt3-175b", "a100-80gb", 64, 64), [64])
    assert tight.rejected["does not fit in memory"] > 0
    assert tight.configs_feasible + tight.rejected["does not fit in memory"] == tight.configs_evaluated


def test_best_is_the_fastest_feasible_and_reports_like_predict():
    sc = scenario()
    result = plan_train(sc, [64], top_k=3)
    ctx = resolve_train(sc)[1]
    table = enumerate_space(ctx.model, 64, 8, ctx.workload, SearchSpace()).candidates
    ev = evaluate(ctx, table, detail=False)
    fastest = ev.tokens_per_s[ev.fits].max()
    assert result.best.tokens_per_s == pytest.approx(fastest, rel=1e-9)
    assert [t.tokens_per_s for t in result.top] == sorted((t.tokens_per_s for t in result.top), reverse=True)
    data = json.loads(result.model_dump_json())
    for key in ("configs_evaluated", "configs_feasible", "rejected", "best", "top"):
        assert key in data
    for key in ("step_time_s", "tokens_per_s", "mfu", "memory_gb_per_gpu", "fits", "time_breakdown_s", "bottleneck",
                "dp", "tp", "pp", "cp", "ep", "vpp", "zero", "micro_batch", "recompute", "sequence_parallel"):
        assert key in data["best"]
    assert result.why_best


def test_framework_limits_the_search():
    result = plan_train(scenario(framework="megatron-lm-2021"), [64], top_k=5)
    assert all(t.zero == 0 and t.cp == 1 and not t.sequence_parallel and t.recompute != "selective"
               for t in result.top)


def test_several_gpu_counts_pareto_and_budget():
    result = plan_train(scenario(), [32, 64, 128], tokens=1e10, price_per_gpu_hour=2.0)
    by = {s.gpus: s for s in result.by_gpu_count}
    assert by[32].on_pareto_front
    for s in result.by_gpu_count:
        assert s.days == pytest.approx(1e10 / s.best_tokens_per_s / 86400)
        assert s.dollars == pytest.approx(s.days * 24 * s.gpus * 2.0)
    assert result.days == pytest.approx(1e10 / result.best.tokens_per_s / 86400)


def test_cost_objective_prefers_efficiency_over_speed():
    fast = plan_train(scenario(), [32, 256], objective="throughput", top_k=1)
    cheap = plan_train(scenario(), [32, 256], objective="cost", top_k=1)
    assert fast.best.gpus == 256
    assert cheap.best.tokens_per_s / cheap.best.gpus >= fast.best.tokens_per_s / fast.best.gpus


def test_infeasible_says_by_how_much_and_what_would_help():
    with pytest.raises(InfeasibleError) as err:
        plan_train(scenario("llama-3.1-405b", "h100-sxm", 8, 16, 8192), [8], space=SearchSpace(offload=False))
    text = str(err.value)
    assert "GiB per GPU short" in text and "more GPUs" in text and "offload" in text


def test_offloading_makes_the_infeasible_feasible_in_one_node():
    result = plan_train(scenario("llama-3.1-405b", "h100-sxm", 8, 16, 8192), [8], top_k=2)
    best = result.best
    assert best.fits and (best.offload_optimizer != "none" or best.offload_params != "none")
    assert result.offload_options and all(o.binding_resource for o in result.offload_options)


@pytest.mark.parametrize("text, counts", [("512", [512]), ("8,16", [8, 16]), ("256-4096", [256, 512, 1024, 2048, 4096]),
                                          ("64,8-16", [8, 16, 64])])
def test_parse_gpu_counts(text, counts):
    assert parse_gpu_counts(text) == counts


@pytest.mark.parametrize("text", ["abc", "0", "16-8", "", "-4"])
def test_parse_gpu_counts_rejects(text):
    with pytest.raises(SpecError):
        parse_gpu_counts(text)


def test_cli_plan_default_and_json(capsys):
    assert main(["plan", "train"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b" in out and "top" in out
    assert main(["plan", "train", "--model", "gpt3-1.3b", "--gpu", "a100-80gb", "--gpus", "32,64",
                 "--global-batch", "256", "--seq-len", "2048", "--top", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["top"]) == 2 and data["configs_evaluated"] > 0 and len(data["by_gpu_count"]) == 2


def test_cli_plan_bad_input_is_one_line(capsys):
    assert main(["plan", "train", "--gpus", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--gpus" in err[0]
    assert main(["plan", "train", "--model", "llama-3.1-405b", "--gpus", "8", "--no-offload"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "short" in err[0]


def test_published_configuration_is_in_the_search_space():
    """Every published configuration passes the planner's structural rules (it can be found)."""
    from sextant.plan.space import restrict_to_framework
    from sextant.validate.ledger import load_ledger

    for row in load_ledger():
        sc = row.scenario()
        ctx, cand = build_context(sc)
        space = restrict_to_framework(SearchSpace(), sc.framework)
        table = enumerate_space(ctx.model, row.gpus, ctx.cluster.gpus_per_node, ctx.workload, space).candidates
        match = np.ones(len(table), bool)
        for key in Candidates.__dataclass_fields__:
            match &= getattr(table, key) == getattr(cand, key)[0]
        assert match.any(), f"{row.id}: published configuration not in the planner's space"


def test_a_token_budget_is_costed_at_the_catalogs_list_price_unless_a_price_is_given():
    from sextant.catalog.prices import gpu_price
    from sextant.plan.search import plan_train
    from sextant.spec.scenario import parse_scenario

    job = parse_scenario({"model": "llama-3.2-1b", "hardware": {"gpu": "h100-sxm", "gpus": 8},
                          "workload": {"global_batch": 64}})
    listed = plan_train(job, [8], top_k=1, tokens=1e10)
    assert listed.price_per_gpu_hour == gpu_price("h100-sxm").dollars_per_gpu_hour
    assert listed.price_source.startswith("catalog: AWS")
    given = plan_train(job, [8], top_k=1, tokens=1e10, price_per_gpu_hour=2.0)
    assert given.price_source == "--price-per-gpu-hour"
    assert given.dollars == pytest.approx(listed.dollars * 2.0 / listed.price_per_gpu_hour)
