"""DeepSpeed's partitioned activation checkpoints, and ledger rows whose unstated knobs are searched."""

from __future__ import annotations

import pytest

from sextant.spec.scenario import TrainScenario
from sextant.train.predict import build_context, predict_train
from sextant.validate.ledger import LedgerRow, load_ledger
from sextant.validate.train import best_prediction, metric_of


def trillion(tp: int, micro_batch: int, **strategy) -> TrainScenario:
    return TrainScenario.model_validate({
        "model": "gpt-sc21-1008b", "framework": "deepspeed-offload-2021",
        "hardware": {"gpu": "v100-32gb", "gpus": 512, "node": "dgx-2"},
        "strategy": {"tp": tp, "zero": 3, "micro_batch": micro_batch, "recompute": "full", "precision": "fp16",
                     "offload_optimizer": "cpu", "offload_params": "cpu", **strategy},
        "workload": {"global_batch": 512 // tp * micro_batch, "seq_len": 1024, "optimizer": "adam"}})


def test_partitioned_checkpoints_keep_one_tp_share_and_gather_it_back():
    whole = predict_train(trillion(4, 8, partition_activations=False))
    split = predict_train(trillion(4, 8, partition_activations=True))
    kept_whole = whole.memory_gb_per_gpu["activations"]
    kept_split = split.memory_gb_per_gpu["activations"]
    assert kept_split < kept_whole
    # The gather before each recomputation is tensor-parallel traffic: a little more, never less.
    assert split.time_breakdown_s["tp_comm"] > whole.time_breakdown_s["tp_comm"]
    assert split.time_breakdown_s["gemm"] == pytest.approx(whole.time_breakdown_s["gemm"], rel=1e-12)


@pytest.mark.parametrize("strategy", [{"tp": 1}, {"sequence_parallel": True}, {"recompute": "selective"}])
def test_partitioning_changes_nothing_where_it_does_not_apply(strategy):
    tp = strategy.pop("tp", 4)
    extra = {k: v for k, v in strategy.items()}
    on = predict_train(trillion(tp, 2, partition_activations=True, **extra))
    off = predict_train(trillion(tp, 2, partition_activations=False, **extra))
    assert on.step_time_s == pytest.approx(off.step_time_s, rel=1e-12)
    assert on.memory_gb_per_gpu == pytest.approx(off.memory_gb_per_gpu, rel=1e-12)


def test_offloaded_checkpoints_take_one_tp_share_of_host_memory():
    whole = predict_train(trillion(4, 16, partition_activations=False, offload_activations="cpu"))
    split = predict_train(trillion(4, 16, partition_activations=True, offload_activations="cpu"))
    assert split.memory_gb_per_tier["host"] < whole.memory_gb_per_tier["host"]
    assert split.fits and not whole.fits  # 1T at micro-batch 16 fits the DGX-2 host only partitioned


def test_searched_row_predicts_its_best_fitting_combination():
    row = next(r for r in load_ledger(None, "offload.yaml") if r.id == "I2")
    chosen, (value, _, fits) = best_prediction(row)
    assert set(chosen) == {"tp", "micro_batch"}
    assert fits
    for knobs, variant in row.searched():
        ctx, cand = build_context(variant.scenario())
        other, _, other_fits = metric_of(row.metric, ctx, cand)
        assert variant.workload["global_batch"] == 512 // knobs["tp"] * knobs["micro_batch"]
        if other_fits:
            assert other <= value * (1 + 1e-12)
        if knobs == chosen:
            assert other == pytest.approx(value, rel=1e-12)


def test_search_needs_a_throughput_metric_and_no_fixed_dp():
    base = {"id": "X", "source": "s", "model": "gpt3-13b", "gpu": "a100-80gb", "gpus": 8, "framework": "torchtitan-2024",
            "strategy": {}, "workload": {"seq_len": 1024}, "published": 1, "search": {"tp": [1, 2]}}
    with pytest.raises(ValueError, match="throughput metric"):
        LedgerRow.model_validate({**base, "metric": "fits"})
    with pytest.raises(ValueError, match="leaves dp out"):
        LedgerRow.model_validate({**base, "metric": "mfu", "strategy": {"dp": 8}})
    row = LedgerRow.model_validate({**base, "metric": "mfu", "search": {"tp": [1, 2], "micro_batch": [1, 4]}})
    combos = row.searched()
    assert [k for k, _ in combos] == [{"tp": 1, "micro_batch": 1}, {"tp": 1, "micro_batch": 4},
                                      {"tp": 2, "micro_batch": 1}, {"tp": 2, "micro_batch": 4}]
    assert [v.workload["global_batch"] for _, v in combos] == [8, 32, 4, 16]
