"""The sweep ledger: measured alternatives, and the statistics that say whether the cost model
orders them as they ran."""

from __future__ import annotations

import numpy as np
import pytest

from sextant.errors import ScenarioError
from sextant.validate.sweep import (
    Sweep,
    SweepPoint,
    _predict,
    load_sweeps,
    ranks,
    spearman,
    validate_sweep,
    validate_sweeps,
)


def test_ranks_share_ties_and_spearman_reads_order_only() -> None:
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # One adjacent swap among five: 1 - 6 * 2 / (5 * 24) = 0.9.
    assert spearman(a, np.array([1.0, 3.0, 2.0, 4.0, 5.0])) == pytest.approx(0.9)


def test_builtin_sweeps_load_and_every_point_is_predicted() -> None:
    sweeps = load_sweeps()
    assert len(sweeps) >= 3
    report = validate_sweeps()
    assert report.points == sum(len(s.points) for s in sweeps) >= 40
    for s in report.sweeps:
        assert -1.0 <= s.spearman <= 1.0 and s.regret >= 0.0
        assert all(p.predicted_step_time_s > 0 for p in s.points)


def _self_measured(sweep: Sweep) -> Sweep:
    """The sweep with each point's measurement replaced by Sextant's own prediction (and OOM where
    it predicts no fit): a cost model that is exactly right."""
    points = []
    for p in sweep.points:
        step, _, fits, _ = _predict(sweep, p)
        points.append(p.model_copy(update={"step_time_s": step if fits else None, "oom": not fits}))
    return sweep.model_copy(update={"points": points})


def test_a_model_that_is_exactly_right_scores_perfectly() -> None:
    sweep = _self_measured(load_sweeps()[1])
    result = validate_sweep(sweep)
    assert result.spearman == pytest.approx(1.0)
    assert result.regret == pytest.approx(0.0) and result.median_ape == pytest.approx(0.0)
    assert result.predicted_best == result.measured_best
    assert result.oom_predicted == result.oom_points >= 1 and result.ran_predicted_not_to_fit == 0


def test_reversed_measurements_score_minus_one() -> None:
    sweep = _self_measured(load_sweeps()[0])
    times = [p.step_time_s for p in sweep.points]
    order = np.argsort(times)
    flipped = list(sweep.points)
    for i, j in zip(order, order[::-1]):
        flipped[i] = sweep.points[i].model_copy(update={"step_time_s": times[j]})
    result = validate_sweep(sweep.model_copy(update={"points": flipped}))
    assert result.spearman == pytest.approx(-1.0)
    assert result.regret > 0.0


def test_a_point_states_a_time_or_oom_not_both() -> None:
    with pytest.raises(ValueError, match="either step_time_s or oom"):
        SweepPoint(dp=1, micro_batch=1, step_time_s=1.0, oom=True)
    with pytest.raises(ValueError, match="either step_time_s or oom"):
        SweepPoint(dp=1, micro_batch=1)


def test_a_bad_sweep_file_names_the_sweep(tmp_path) -> None:
    path = tmp_path / "sweeps.yaml"
    path.write_text("- id: X\n  source: s\n  model: bloom-176b\n  gpu: a100-80gb\n  framework: deepspeed-megatron-2022\n"
                    "  strategy: {}\n  workload: {}\n  points: [{dp: 1, micro_batch: 1, step_time_s: 1.0}]\n")
    with pytest.raises(ScenarioError, match="row X"):
        load_sweeps(path)


def _predicted(sweep: Sweep, label: str) -> float:
    point = next(p for p in sweep.points if p.label() == label)
    return _predict(sweep, point)[0]


def test_deepspeed_megatron_pays_per_layer_pass_so_larger_micro_batches_win_at_tp8() -> None:
    """BS0221 measured micro-batch 4 at 121.5 s and micro-batch 1 at 139.8 s (dp8 tp8 pp6): the
    per-layer-pass overhead is what makes the prediction agree on the order."""
    sweep = load_sweeps()[0]
    assert _predicted(sweep, "dp8 tp8 pp6 mb4") < 0.95 * _predicted(sweep, "dp8 tp8 pp6 mb1")


def test_framework_overhead_is_a_part_of_the_breakdown() -> None:
    from sextant.train.predict import predict_train

    sweep = load_sweeps()[0]
    point = next(p for p in sweep.points if p.label() == "dp8 tp8 pp6 mb4")
    result = predict_train(sweep.scenario(point))
    micro_batches = 2048 / (8 * 4)
    layers_per_stage = 72 / 6
    assert result.time_breakdown_s["framework_overhead"] == pytest.approx(micro_batches * layers_per_stage * 0.0127)
    assert sum(result.time_breakdown_s.values()) == pytest.approx(result.step_time_s)
    no_preset = predict_train(sweep.scenario(point).model_copy(update={"framework": None}))
    assert no_preset.time_breakdown_s["framework_overhead"] == 0.0


def test_deepspeed_pipeline_engine_is_searched_without_interleaving() -> None:
    from sextant.plan.space import SearchSpace, restrict_to_framework

    assert restrict_to_framework(SearchSpace(), "deepspeed-megatron-2022").max_vpp == 1
    assert restrict_to_framework(SearchSpace(), "megatron-lm-2021").max_vpp == SearchSpace().max_vpp


def test_a_presets_memory_overhead_replaces_the_defaults_and_sums_into_the_total(monkeypatch) -> None:
    """A framework preset may state what a GPU holds beyond the modelled tensors
    (``allocator_overhead`` x tensors + ``runtime_reserved_gib``); without one the defaults apply."""
    import sextant.resolve.framework as framework
    from sextant.cost.memory import ALLOCATOR_OVERHEAD, RUNTIME_RESERVED_BYTES
    from sextant.train.predict import predict_train
    from sextant.units import GiB

    sweep = load_sweeps()[0]
    scenario = sweep.scenario(sweep.points[0])
    preset = framework.get_framework("deepspeed-megatron-2022")
    monkeypatch.setattr(framework, "get_framework",
                        lambda name: {**preset, "allocator_overhead": 0.2, "runtime_reserved_gib": 6.0})
    for result, fraction, fixed in (
            (predict_train(scenario), 0.2, 6.0),
            (predict_train(scenario.model_copy(update={"framework": None})), ALLOCATOR_OVERHEAD,
             RUNTIME_RESERVED_BYTES / GiB)):
        parts = result.memory_gb_per_gpu
        tensors = sum(v for k, v in parts.items() if k not in ("fragmentation", "runtime", "total"))
        assert parts["fragmentation"] == pytest.approx(fraction * tensors)
        assert parts["runtime"] == pytest.approx(fixed)
        assert parts["total"] == pytest.approx(tensors + parts["fragmentation"] + parts["runtime"])


def test_sweeps_report_memory_error_and_out_of_memory_runs() -> None:
    report = validate_sweeps()
    assert report.oom_points == sum(s.oom_points for s in report.sweeps) >= 6
    assert 0 <= report.oom_predicted <= report.oom_points
    measured = [p for s in report.sweeps for p in s.points if p.measured_memory_gib is not None]
    assert len(measured) >= 40 and report.median_memory_ape is not None
    # nvidia-smi counts the allocator's cache and the runtime: Sextant's prediction is below it.
    assert sum(p.predicted_memory_gib < p.measured_memory_gib for p in measured) > 0.9 * len(measured)
