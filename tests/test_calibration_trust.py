"""A calibration it cannot trust is flagged, recorded in the profile, and never used silently
(issue 26). The verdict is checked on fixed inputs: what a busy machine measures is not."""

from __future__ import annotations

import json

from sextant.calibrate.trust import MAX_FOREIGN_LOAD, LoadMeter, assess
from sextant.catalog import get_profile
from sextant.serve.predict import predict_serve
from sextant.spec.profile import CalibrationTrust, ProfileFile
from sextant.spec.scenario import TrainScenario
from sextant.spec.serving import ServeScenario
from sextant.train.predict import predict_train

GOOD = {"gemm_r2": 0.93, "elementwise_r2": 0.99, "repeats": {"per_layer_overhead": (1.0e-4, 1.2e-4)},
        "foreign_load": 0.05}


def test_a_clean_calibration_is_trusted():
    verdict = assess(**GOOD)
    assert verdict.trusted and verdict.problems == []
    assert verdict.checks["per_layer_overhead_spread"] == 1.2e-4 / 1.0e-4


def test_each_failed_check_is_a_problem_in_words():
    # The two runs of issue 26: a GEMM fit with R^2 -0.05, a per-layer overhead that moved 280x.
    cases = {"gemm_r2": -0.05, "elementwise_r2": 0.3,
             "repeats": {"per_layer_overhead": (1.0e-4, 2.8e-2)}, "foreign_load": 0.6}
    words = {"gemm_r2": "GEMM efficiency curve", "elementwise_r2": "element-wise", "repeats": "moved 280.0x",
             "foreign_load": "other processes used 60%"}
    for key, value in cases.items():
        verdict = assess(**{**GOOD, key: value})
        assert not verdict.trusted, key
        assert len(verdict.problems) == 1 and words[key] in verdict.problems[0], verdict.problems


def test_a_non_finite_fit_is_not_trusted():
    assert not assess(**{**GOOD, "gemm_r2": float("nan")}).trusted


def test_the_load_meter_reports_a_share_or_nothing():
    share = LoadMeter().start().share()
    assert share is None or share >= 0.0
    assert 0 < MAX_FOREIGN_LOAD < 1


def _untrusted_profile(tmp_path) -> str:
    profile = get_profile("h100-sxm")
    assert profile.fitted  # the built-in fit: the file below is what makes it untrusted
    trust = CalibrationTrust(trusted=False, problems=["the GEMM efficiency curve fits with R^2 -0.05"])
    path = tmp_path / "h100.json"
    path.write_text(ProfileFile(profile=profile, trust=trust).model_dump_json())
    return str(path)


def test_an_untrusted_profile_is_flagged_in_training_predictions(tmp_path):
    path = _untrusted_profile(tmp_path)
    result = predict_train(TrainScenario.model_validate(
        {"model": "llama-3.2-1b", "hardware": {"gpu": "h100-sxm", "gpus": 8, "profile": path}}))
    assert not result.profile_fitted
    assert any("UNTRUSTED calibration (the GEMM efficiency curve fits with R^2 -0.05)" in a
               for a in result.assumptions), result.assumptions


def test_an_untrusted_profile_is_flagged_in_serving_predictions(tmp_path):
    path = _untrusted_profile(tmp_path)
    result = predict_serve(ServeScenario.model_validate(
        {"model": "llama-3.2-1b", "hardware": {"gpu": "h100-sxm", "gpus": 1, "profile": path},
         "workload": {"num_requests": 8}}))
    assert not result.profile_fitted
    assert any("UNTRUSTED" in a for a in result.assumptions), result.assumptions


def test_the_verdict_round_trips_through_the_profile_file(tmp_path):
    path = _untrusted_profile(tmp_path)
    loaded = ProfileFile.model_validate(json.loads(open(path).read()))
    assert loaded.trust is not None and not loaded.trust.trusted
