"""fp32/tf32 training: 4-byte weights, gradients and activations, no master copy."""

import numpy as np
import pytest

from sextant.catalog import get_model
from sextant.cost.memory import (
    layer_activation_bytes,
    model_state_bytes,
    optimizer_step_bytes,
)
from sextant.cost.precision import precision_bytes
from sextant.spec.scenario import TrainScenario
from sextant.train.predict import predict_train


def test_fp32_model_states_are_16_bytes_per_param_with_adam():
    w, g, o = model_state_bytes(1000.0, 1, 0, "fp32", "adamw")
    assert (w, g, o) == (4000.0, 4000.0, 8000.0)
    w, g, o = model_state_bytes(1000.0, 1, 0, "bf16", "adamw")
    assert (w, g, o) == (2000.0, 4000.0, 12000.0)


def test_optimizer_step_bytes_follow_from_the_state_layout():
    assert optimizer_step_bytes("adamw", "bf16") == 30.0
    assert optimizer_step_bytes("adamw", "fp32") == 28.0


@pytest.mark.parametrize("flash", [True, False])
def test_fp32_activations_double_the_16_bit_terms_but_not_masks(flash):
    model = get_model("gpt-sc21-1.7b")
    kw = dict(flash=flash, dropout=False)
    a2 = layer_activation_bytes(model, 2, 1024, 1, False, 0, act_bytes=2.0, **kw)
    a4 = layer_activation_bytes(model, 2, 1024, 1, False, 0, act_bytes=4.0, **kw)
    if flash:  # the fp32 log-sum-exp does not grow
        lse = 4.0 * 2 * model.num_heads * 1024
        assert np.isclose(a4 - lse, 2 * (a2 - lse))
    else:
        assert np.isclose(a4, 2 * a2)
    with_masks = layer_activation_bytes(model, 2, 1024, 1, False, 0, flash=flash, dropout=True, act_bytes=4.0)
    masks = with_masks - a4
    assert masks > 0
    assert np.isclose(masks, layer_activation_bytes(model, 2, 1024, 1, False, 0, flash=flash, dropout=True) - a2)


def test_fp32_training_predicts_slower_and_larger_than_bf16_on_an_a100():
    base = dict(model="llama-2-7b", hardware={"gpu": "a100-80gb", "gpus": 1},
                strategy={"zero": 0, "micro_batch": 1}, workload={"global_batch": 8, "seq_len": 2048})
    bf16 = predict_train(TrainScenario.model_validate(base))
    fp32 = predict_train(TrainScenario.model_validate({**base, "strategy": {**base["strategy"], "precision": "fp32"}}))
    tf32 = predict_train(TrainScenario.model_validate({**base, "strategy": {**base["strategy"], "precision": "tf32"}}))
    # 19.5 vs 312 TFLOP/s dense: fp32 GEMMs dominate.
    assert fp32.step_time_s > 8 * bf16.step_time_s
    assert bf16.step_time_s < tf32.step_time_s < fp32.step_time_s
    assert fp32.memory_gb_per_gpu["weights"] == pytest.approx(2 * bf16.memory_gb_per_gpu["weights"])
    assert precision_bytes("tf32") == precision_bytes("fp32")


def test_deepspeed_bf16_optimizer_keeps_the_bf16_gradients_beside_the_fp32_ones():
    """DeepSpeed's BF16_Optimizer: 2 (bf16 weights) + 2 (autograd's bf16 grads) + 4 (fp32 grad
    buffer) + 12/d; only on its ZeRO 0-1 path, and only in bf16."""
    zero = np.array([0, 1, 2])
    w, g, o = model_state_bytes(1000.0, 4, zero, "bf16", "adam", bf16_grad_copy=True)
    assert g.tolist() == [6000.0, 6000.0, 1000.0]  # ZeRO-2 shards the fp32 buffer and keeps no copy
    assert w.tolist() == [2000.0] * 3 and o.tolist() == [12000.0, 3000.0, 3000.0]
    assert model_state_bytes(1000.0, 4, 1, "fp16", "adam", bf16_grad_copy=True)[1] == 2000.0
    assert model_state_bytes(1000.0, 4, 1, "bf16", "adam")[1] == 4000.0
