"""ZeRO-Offload's one-step delayed parameter update on the offload timeline."""

from __future__ import annotations

import pytest

from sextant.spec.scenario import TrainScenario
from sextant.spec.strategy import Overlap
from sextant.train.predict import predict_train

PRESET_OVERLAP = {"dp_grad_reduce": True, "dp_param_gather": True, "tp_comm": False, "pp_p2p": False, "efficiency": 0.721}


def zero_offload(dpu: bool, global_batch: int = 10, **strategy) -> TrainScenario:
    return TrainScenario.model_validate({
        "model": "gpt-zero-offload-10b", "framework": "deepspeed-offload-2021",
        "hardware": {"gpu": "v100-32gb", "gpus": 1, "node": "dgx-2"},
        "strategy": {"zero": 2, "micro_batch": 10, "recompute": "full", "precision": "fp16", "offload_optimizer": "cpu",
                     "overlap": {**PRESET_OVERLAP, "delayed_parameter_update": dpu}, **strategy},
        "workload": {"global_batch": global_batch, "seq_len": 1024, "optimizer": "adam"}})


def test_delayed_update_hides_the_cpu_step_behind_the_next_one():
    sync, dpu = predict_train(zero_offload(False)), predict_train(zero_offload(True))
    assert sync.time_breakdown_s["optimizer"] > 1.0  # CPU-Adam of 10B parameters takes seconds
    assert dpu.step_time_s < sync.step_time_s
    # The step still lasts at least its GPU work and the CPU's update (each resource's total).
    assert dpu.step_time_s >= max(dpu.resource_busy_s["gpu"], dpu.resource_busy_s["cpu"]) * (1 - 1e-9)
    assert dpu.memory_gb_per_gpu == pytest.approx(sync.memory_gb_per_gpu, rel=1e-12)


def test_delayed_update_gains_less_as_the_batch_grows():
    """With more micro-batches per step the synchronous update is a smaller share to hide."""
    gains = [predict_train(zero_offload(False, gb)).step_time_s / predict_train(zero_offload(True, gb)).step_time_s
             for gb in (10, 40, 160)]
    assert gains[0] > gains[1] > gains[2] >= 1.0


def test_delayed_update_leaves_rows_it_does_not_apply_to():
    kw = {"zero": 3, "offload_params": "cpu"}  # parameters off the GPU: the update stays synchronous
    sync, dpu = predict_train(zero_offload(False, **kw)), predict_train(zero_offload(True, **kw))
    assert dpu.step_time_s == pytest.approx(sync.step_time_s, rel=1e-12)


def test_one_optimizer_overlap_at_a_time():
    with pytest.raises(ValueError, match="exclusive"):
        Overlap(optimizer_with_backward=True, delayed_parameter_update=True)
