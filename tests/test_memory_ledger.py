"""The memory ledger and the memory model's named temporaries (issue: "Will it fit?")."""

from __future__ import annotations

import numpy as np
import pytest

from sextant.catalog.models import get_model
from sextant.cost.memory import LOSS_KERNELS, loss_transient_bytes, optimizer_step_excess
from sextant.spec.scenario import parse_scenario
from sextant.train.predict import fits_statement, predict_train
from sextant.validate.memory import (
    MemoryParameters,
    Observation,
    cross_validate_memory,
    fit_memory_parameters,
    load_memory_ledger,
    observations,
)


def test_the_eager_loss_holds_twelve_bytes_per_logit_at_its_peak() -> None:
    model = get_model("llama-3.1-8b")
    logits = 8192 * 2 * model.vocab_size
    assert loss_transient_bytes(model, 2, 8192, 1, "eager") == pytest.approx((12 - 4) * logits)
    assert loss_transient_bytes(model, 2, 8192, 2, "vocab_parallel") == pytest.approx((6 - 4) * logits / 2)
    assert loss_transient_bytes(model, 2, 8192, 1, "fused") == 0.0
    assert all(k.peak >= k.kept for k in LOSS_KERNELS.values())


def test_foreach_adam_temporaries_count_only_beyond_the_freed_activations() -> None:
    excess = optimizer_step_excess(np.array([1e9, 1e9, 1e9]), np.array([0.0, 2e9, 8e9]), "foreach")
    assert excess.tolist() == [4e9, 2e9, 0.0]
    assert optimizer_step_excess(1e9, 0.0, "fused") == 0.0


def _scenario(**strategy):
    return parse_scenario({"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 8},
                           "strategy": {"dp": 8, "zero": 1, **strategy},
                           "workload": {"global_batch": 8, "seq_len": 8192}}, source="test")


def test_memory_parts_name_each_temporary_and_sum_to_the_total() -> None:
    eager = predict_train(_scenario(loss_kernel="eager", optimizer_kernel="foreach"))
    fused = predict_train(_scenario(loss_kernel="fused"))
    parts = eager.memory_gb_per_gpu
    assert parts["activation_temporaries"] > fused.memory_gb_per_gpu["activation_temporaries"]
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert fused.memory_gb_per_gpu["total"] < parts["total"]


def test_a_bf16_gradient_buffer_halves_the_gradients() -> None:
    fp32 = predict_train(_scenario()).memory_gb_per_gpu["gradients"]
    bf16 = predict_train(_scenario(grad_buffer="bf16")).memory_gb_per_gpu["gradients"]
    assert bf16 == pytest.approx(fp32 / 2)


def test_the_fits_statement_gives_the_margin_and_the_bound() -> None:
    assert fits_statement(60.0, 70.0, 80.0, 0.9) == "fits with 20.0 GiB to spare (90% bound 70.0 GiB of 80.0)"
    assert "not surely" in fits_statement(70.0, 85.0, 80.0, 0.9)
    assert fits_statement(85.0, 95.0, 80.0, 0.9).startswith("does not fit: 5.0 GiB short")
    result = predict_train(_scenario())
    assert result.memory_upper_gb > result.memory_gb_per_gpu["total"] and result.memory_bound_level == 0.9
    assert result.fits_statement


def test_the_memory_ledger_states_a_counter_and_a_citation_per_row() -> None:
    rows = load_memory_ledger()
    assert len(rows) >= 30 and len({r.group for r in rows}) >= 4
    assert all(r.url and r.assumptions and r.counter in ("allocated", "reserved", "device") for r in rows)


def _obs(ident, group, counter, measured, allocated):
    return Observation(id=ident, group=group, family="megatron", counter=counter, measured_gib=measured, oom=False, allocated_gib=allocated,
                       shipped_gib=allocated, shipped_device_gib=allocated, capacity_gib=80.0)


def test_the_memory_fit_recovers_fragmentation_and_runtime_and_holds_each_source_out() -> None:
    obs = [_obs("a1", "a", "reserved", 55.0, 50.0), _obs("a2", "a", "reserved", 44.0, 40.0),
           _obs("b1", "b", "device", 50.0 * 1.1 + 2.0, 50.0), _obs("c1", "c", "allocated", 30.0, 30.0)]
    fitted = fit_memory_parameters(obs)
    assert fitted.fragmentation == pytest.approx(0.1) and fitted.runtime_gib == pytest.approx(2.0)
    held = fit_memory_parameters([o for o in obs if o.group != "a"], prior=MemoryParameters())
    assert held.fragmentation == MemoryParameters().fragmentation  # no reserved row left: the prior
    report = cross_validate_memory(obs)
    a1 = next(r for r in report.rows if r.id == "a1")
    assert a1.held_out_gib == pytest.approx(held.predict(50.0, "reserved"))
    assert report.shipped.rows == 4 and report.ran_predicted_to_fit == 4


def test_the_megatron_memory_tests_are_predicted_within_five_percent() -> None:
    """Megatron-LM's functional tests record max_memory_allocated: the tensors themselves."""
    rows = [r for r in load_memory_ledger() if r.group == "MG"]
    report = cross_validate_memory(observations(rows, with_sweeps=False))
    assert report.shipped.rows == len(rows) >= 4
    assert report.shipped.max < 0.05


def test_the_shipped_memory_bound_is_the_ledgers() -> None:
    """catalog/data/memory_bound.yaml is what scripts/fit_memory_bound.py gives today."""
    import importlib.util
    from pathlib import Path

    from sextant.resolve.intervals import memory_bound

    path = Path(__file__).resolve().parents[1] / "scripts" / "fit_memory_bound.py"
    spec = importlib.util.spec_from_file_location("fit_memory_bound", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    fresh = module.table()
    for pool, entry in fresh["pools"].items():
        framework = {"all": None, "deepspeed": "deepspeed-megatron-2022", "pytorch-native": "torchtitan-2024",
                     "megatron": "megatron-core-2024"}[pool]
        shipped = memory_bound(framework)
        assert shipped.pool == pool and shipped.rows == entry["rows"], "run scripts/fit_memory_bound.py"
        assert shipped.upper_ratio == pytest.approx(entry["upper_ratio"], abs=1e-4)
    assert memory_bound("megatron-core-2024").pool in ("megatron", "all")


def test_kv_capacity_follows_each_engines_rule() -> None:
    """SGLang: a fraction of what is free at start, less the weights; vLLM: a fraction of the GPU
    less the weights, the profiling run's peak and the runtime."""
    from sextant.validate.kv_capacity import load_kv_ledger, predicted_tokens

    rows = {r.id: r for r in load_kv_ledger()}
    sglang = rows["KV13"]
    low, high = (predicted_tokens(sglang.model_copy(update={"scheduler": {"gpu_memory_utilization": f}}))
                 for f in (0.8, 0.88))
    assert high > low  # a larger fraction, a larger pool
    vllm = rows["KV8"]
    heavy = predicted_tokens(vllm.model_copy(update={"scheduler": {**vllm.scheduler, "sampler_profile_bytes": 40.0}}))
    assert heavy < predicted_tokens(vllm)  # a heavier profiling run leaves less for the cache


def test_the_kv_ledger_is_predicted_within_three_percent_at_the_median() -> None:
    from sextant.validate.kv_capacity import cross_validate_kv

    report = cross_validate_kv()
    assert len(report.rows) >= 10 and len({r.group for r in report.rows}) >= 5
    assert report.as_shipped.median < 0.03
    # the fitted engine parameters are what the presets ship (scripts/fit_kv_capacity.py)
    for preset, values in report.fitted.items():
        for name, value in values.items():
            assert report.shipped[preset][name] == pytest.approx(value, rel=0.01, abs=0.01), (preset, name)


def test_what_must_fit_counts_at_most_the_fragmentation_of_a_full_gpu() -> None:
    """A preset whose allocator reserves 21% beyond the tensors with room to spare still fits a
    run whose tensors and 5% leave room: the allocator frees its cache before it fails."""
    from sextant.cost.memory import FRAGMENTATION_AT_CAPACITY
    from sextant.train.step import ALLOCATED_PARTS

    scenario = parse_scenario({"model": "llama-3.1-8b", "framework": "megatron-lm-2021",
                               "hardware": {"gpu": "a100-80gb", "gpus": 8},
                               "strategy": {"dp": 8, "zero": 0, "micro_batch": 1, "precision": "fp16"},
                               "workload": {"global_batch": 8, "seq_len": 2048}}, source="test")
    result = predict_train(scenario)
    parts = result.memory_gb_per_gpu
    tensors = sum(parts[k] for k in ALLOCATED_PARTS)
    assert parts["fragmentation"] == pytest.approx(0.21 * tensors)
    assert result.memory_required_gb == pytest.approx(tensors * (1 + FRAGMENTATION_AT_CAPACITY) + parts["runtime"])
    assert result.memory_required_gb < parts["total"]
    assert result.memory_headroom_gb == pytest.approx(result.memory_capacity_gb - result.memory_required_gb)


def test_fragmentation_is_measured_where_a_run_reports_both_counters() -> None:
    from sextant.validate.memory import measured_fragmentation

    rows = load_memory_ledger()
    both = measured_fragmentation(rows, "megatron-lm-2021")
    assert len(both) >= 5 and all(0.1 < f < 0.3 for f in both)


def test_transformer_engine_fp8_keeps_fp8_gemm_inputs_and_torchao_keeps_bf16() -> None:
    """TE saves the FP8 cast of each GEMM input for the weight gradient (1 byte where bf16 keeps
    2), and the attention output twice; torchao's Float8Linear keeps the 16-bit input."""
    from sextant.cost.memory import layer_activation_bytes

    model = get_model("llama-3.1-70b")
    kw = dict(flash=True, dropout=False, act_bytes=2.0)
    bf16 = float(layer_activation_bytes(model, 1, 8192, 8, True, 0, **kw))
    fp8 = float(layer_activation_bytes(model, 1, 8192, 8, True, 0, fp8_inputs=True, **kw))
    h, f, a_dv, sb = model.hidden_size, model.ffn_hidden_size, model.num_heads * model.head_dim, 8192
    # QKV and MLP inputs (sequence-parallel: /8) and the MLP's second input (/8) lose a byte
    # each; the attention output gains one.
    assert bf16 - fp8 == pytest.approx(sb * (2 * h + f - a_dv) / 8)
    te = predict_train(_scenario(precision="fp8")).memory_gb_per_gpu["activations"]
    kept = predict_train(_scenario(precision="fp8", fp8_saved_inputs="bf16")).memory_gb_per_gpu["activations"]
    assert te < kept == pytest.approx(predict_train(_scenario()).memory_gb_per_gpu["activations"])
