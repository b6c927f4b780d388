"""The CPU loop of issue 5: calibrate (quick), predict with the profile, measure a real run, compare.

What is deterministic is asserted: the profile's shape and provenance, the measured run's report,
and memory, which must agree within 1%. How close the predicted time comes to the measured one
depends on the machine and its load (a shared 2-core machine moves a 5 ms decode step by half),
so it is a figure, not a test: ``python benchmarks/bench_measure_cpu.py`` prints it.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # a calibration (about 20 s) and real runs

from sextant.cli.app import main  # noqa: E402
from sextant.resolve.hardware import load_profile_file  # noqa: E402
from sextant.spec.profile import ProfileFile  # noqa: E402
from sextant.spec.scenario import TrainScenario  # noqa: E402
from sextant.train.predict import predict_train  # noqa: E402


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("profiles") / "cpu.json"
    assert main(["calibrate", "--device", "cpu", "--quick", "--out", str(path)]) == 0
    return str(path)


def test_profile_carries_provenance_and_its_own_device(cpu_profile):
    loaded = load_profile_file(cpu_profile)
    assert isinstance(loaded, ProfileFile)
    prov = loaded.provenance
    for key in ("tool", "date", "device", "torch", "cpu", "cpu_threads", "grid", "quick", "duration_s"):
        assert key in prov, key
    assert prov["quick"] is True and prov["torch"] == torch.__version__
    assert prov["duration_s"] > 0
    assert loaded.device is not None and loaded.device.architecture.startswith("cpu")
    assert set(loaded.profile.gemm_tables) == {"fp32", "bf16"}
    p = loaded.profile
    for value in (p.gemm_max_efficiency, p.flash_attention_efficiency, p.memory_bw_efficiency, p.loss_bw_efficiency):
        assert 0 < value <= 1
    assert p.optimizer_params_per_s > 0 and p.layer_overhead_s > 0
    # The largest GEMM on the grid is far more efficient than a one-row GEMM.
    table = p.gemm_tables["fp32"]
    m, n, k = table.axes
    assert table.interpolate(m[-1], n[-1], k[-1]) > 3 * table.interpolate(1, n[-1], k[-1])
    assert set(p.attention_tables) == {"fp32"}
    raw = json.loads(open(cpu_profile).read())["measurements"]
    assert len(raw["gemm"]) == 2 * len(m) * len(n) * len(k)


def test_predict_and_plan_take_the_profile(cpu_profile, capsys):
    result = predict_train(TrainScenario.model_validate({
        "model": "gpt3-350m", "hardware": {"gpus": 1, "profile": cpu_profile},
        "strategy": {"zero": 0, "micro_batch": 1, "precision": "fp32"},
        "workload": {"global_batch": 1, "seq_len": 512}}))
    assert result.gpu.startswith("cpu-")
    assert result.step_time_s > 0.5  # a 350M-parameter step of 512 tokens: about 1 TFLOP
    assert main(["plan", "train", "--model", "gpt3-350m", "--profile", cpu_profile, "--gpus", "1",
                 "--global-batch", "4", "--seq-len", "512", "--precision", "fp32", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["gpu"].startswith("cpu-") and plan["configs_feasible"] > 0
    # A GPU name that contradicts the profile's device is a one-line error.
    assert main(["predict", "train", "--profile", cpu_profile, "--gpu", "h100-sxm", "--gpus", "1"]) == 2


def _measure(kind: str, profile: str, capsys, *extra: str) -> dict:
    assert main(["measure", kind, "--profile", profile, "--json", *extra]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["measured_step_time_s"] > 0 and r["predicted_step_time_s"] > 0
    assert r["error"] == pytest.approx((r["predicted_step_time_s"] - r["measured_step_time_s"]) / r["measured_step_time_s"])
    return r


def test_measured_training_step_reports_against_the_prediction(cpu_profile, capsys):
    r = _measure("train", cpu_profile, capsys, "--steps", "3")
    for key in ("measured_peak_memory_gb", "predicted_peak_memory_gb", "predicted_breakdown_s"):
        assert key in r
    assert r["profile"].startswith("cpu-") and r["parameters"] > 0
    # Model states are exact; activations are what autograd saved, against Korthikanti's terms.
    for part in ("weights", "gradients", "optimizer"):
        assert r["predicted_memory_gb"][part] == pytest.approx(r["measured_memory_gb"][part], rel=1e-4)
    assert r["predicted_memory_gb"]["activations"] == pytest.approx(r["measured_memory_gb"]["activations"], rel=0.01)
    assert abs(r["memory_error"]) < 0.01


def test_measured_decode_reports_against_the_prediction(cpu_profile, capsys):
    r = _measure("serve", cpu_profile, capsys, "--steps", "5")
    assert r["predicted_memory_gb"]["kv_cache"] == pytest.approx(r["measured_memory_gb"]["kv_cache"])
    assert abs(r["memory_error"]) < 0.01
    # A prefill of 16 x 256 tokens against one decode step of 16.
    assert r["extra"]["measured_prefill_s"] > r["measured_step_time_s"]
    assert r["extra"]["predicted_prefill_s"] > r["predicted_step_time_s"]


def test_measure_and_calibrate_errors_are_one_line(tmp_path, capsys):
    assert main(["measure", "train", "--profile", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "sextant-profile/1", "profile": {"name": 1}}')
    assert main(["measure", "train", "--profile", str(bad)]) == 2
    assert main(["measure", "train", "--batch", "0"]) == 2
    if not torch.cuda.is_available():
        assert main(["calibrate", "--device", "cuda", "--quick"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
