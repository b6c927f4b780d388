"""The command line, through ``sextant.cli.app.main(argv)``: exit codes, the JSON shape of
``predict train``, every flag of the interface, scenarios, and one-line errors for bad input.

Predicted numbers are never hard-coded (the cost model is being tuned): only shapes, identities
(parts sum to totals) and echoes of the input are checked."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import typer
import yaml

from sextant.cli.app import app, main

MODELS = Path(__file__).resolve().parents[1] / "src" / "sextant" / "catalog" / "data" / "models"

JSON_KEYS = {"step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "model_tflops_per_gpu", "mfu", "hfu",
             "memory_gb_per_gpu", "fits", "time_breakdown_s", "bottleneck"}

INTERFACE_FLAGS = {"--model", "--gpu", "--gpus", "--gpus-per-node", "--dp", "--tp", "--pp", "--cp", "--ep",
                   "--etp", "--vpp", "--zero", "--micro-batch", "--global-batch", "--seq-len", "--recompute",
                   "--sequence-parallel", "--precision", "--json", "--scenario"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def predict_json(capsys, *argv: str) -> dict:
    rc, out, err = run(capsys, "predict", "train", *argv, "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def check_result_shape(r: dict) -> None:
    assert JSON_KEYS <= set(r)
    assert isinstance(r["fits"], bool)
    assert isinstance(r["bottleneck"], str) and r["bottleneck"]
    for key in ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "model_tflops_per_gpu", "mfu", "hfu"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["hfu"] >= r["mfu"] * (1 - 1e-12)
    parts = r["time_breakdown_s"]
    assert isinstance(parts, dict) and parts
    assert sum(parts.values()) == pytest.approx(r["step_time_s"], rel=1e-6)
    mem = r["memory_gb_per_gpu"]
    assert "total" in mem
    assert sum(v for k, v in mem.items() if k != "total") == pytest.approx(mem["total"], rel=1e-9)
    assert all(v >= 0 for v in mem.values())


# ---- happy paths --------------------------------------------------------------------------------

def test_predict_train_defaults_report(capsys):
    rc, out, err = run(capsys, "predict", "train")
    assert rc == 0, err
    assert "llama-3.1-8b" in out and "h100-sxm" in out
    assert "Traceback" not in out + err


def test_predict_train_json_shape(capsys):
    r = predict_json(capsys)
    check_result_shape(r)
    assert r["model"] == "llama-3.1-8b" and r["gpu"] == "h100-sxm" and r["gpus"] == 8
    assert r["tokens_per_s_per_gpu"] == pytest.approx(r["tokens_per_s"] / r["gpus"])


def test_gpt_175b_tp_pp_echo(capsys):
    r = predict_json(capsys, "--model", "gpt-sc21-175b", "--gpu", "a100-80gb", "--gpus", "64",
                     "--tp", "8", "--pp", "8", "--global-batch", "64", "--micro-batch", "1", "--seq-len", "2048",
                     "--recompute", "full", "--precision", "fp16", "--zero", "0")
    check_result_shape(r)
    assert (r["tp"], r["pp"], r["dp"], r["zero"]) == (8, 8, 1, 0)
    assert (r["recompute"], r["precision"], r["seq_len"], r["global_batch"]) == ("full", "fp16", 2048, 64)
    assert r["hfu"] > r["mfu"]  # full recomputation runs extra forward FLOPs


@pytest.mark.parametrize("gpus", [8, 16])
def test_moe_expert_parallel(capsys, gpus):
    r = predict_json(capsys, "--model", "mixtral-8x7b", "--gpu", "h100-sxm", "--gpus", str(gpus), "--ep", "8",
                     "--zero", "1")
    check_result_shape(r)
    assert r["ep"] == 8 and r["dp"] == gpus
    assert r["time_breakdown_s"]["ep_comm"] > 0


def test_every_flag_together(capsys):
    r = predict_json(capsys, "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--gpus", "32",
                     "--gpus-per-node", "4", "--dp", "2", "--tp", "2", "--pp", "4", "--cp", "2", "--vpp", "2",
                     "--zero", "2", "--micro-batch", "2", "--global-batch", "64", "--seq-len", "8192",
                     "--recompute", "selective", "--sequence-parallel", "--precision", "fp8")
    check_result_shape(r)
    assert (r["gpus"], r["dp"], r["tp"], r["pp"], r["cp"], r["vpp"], r["zero"]) == (32, 2, 2, 4, 2, 2, 2)
    assert (r["micro_batch"], r["global_batch"], r["seq_len"]) == (2, 64, 8192)
    assert (r["recompute"], r["sequence_parallel"], r["precision"], r["schedule"]) == (
        "selective", True, "fp8", "interleaved")
    assert r["num_microbatches"] == pytest.approx(64 / (2 * 2))
    assert r["time_breakdown_s"]["cp_comm"] >= 0


def test_model_from_config_json_path(capsys, tmp_path):
    path = tmp_path / "config.json"
    shutil.copy(MODELS / "llama-3.1-8b.json", path)
    from_path = predict_json(capsys, "--model", str(path))
    by_name = predict_json(capsys, "--model", "llama-3.1-8b")
    check_result_shape(from_path)
    assert from_path["step_time_s"] == pytest.approx(by_name["step_time_s"], rel=1e-12)
    assert from_path["memory_gb_per_gpu"]["total"] == pytest.approx(by_name["memory_gb_per_gpu"]["total"])


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


SCENARIO = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm", "gpus": 16},
            "strategy": {"tp": 2, "pp": 2, "zero": 1, "micro_batch": 1},
            "workload": {"global_batch": 64, "seq_len": 2048}}


def test_scenario_file_and_flag_override(capsys, tmp_path):
    path = write_yaml(tmp_path / "s.yaml", SCENARIO)
    r = predict_json(capsys, "--scenario", str(path))
    check_result_shape(r)
    assert (r["gpus"], r["tp"], r["pp"], r["dp"], r["global_batch"], r["seq_len"]) == (16, 2, 2, 4, 64, 2048)
    o = predict_json(capsys, "--scenario", str(path), "--tp", "4", "--seq-len", "4096")
    assert (o["tp"], o["pp"], o["dp"], o["seq_len"], o["global_batch"]) == (4, 2, 2, 4096, 64)


def test_uneven_deep_pipeline_is_rejected_or_sane(capsys):
    rc, out, err = run(capsys, "predict", "train", "--gpus", "24", "--pp", "24", "--global-batch", "48", "--json")
    if rc == 2:  # rejecting the split is a fine answer
        assert_one_line_error(rc, out, err, ["pp"])
        return
    assert rc == 0, err
    r = json.loads(out)
    assert all(v >= 0 for v in r["time_breakdown_s"].values()), r["time_breakdown_s"]
    assert all(v >= 0 for v in r["memory_gb_per_gpu"].values()), r["memory_gb_per_gpu"]


# ---- errors: exit 2, one line, names the field ----------------------------------------------------

def _bad_config(tmp_path: Path) -> str:
    path = tmp_path / "bad.json"
    path.write_text('{"model_type": "llama", "hidden_size": ')
    return str(path)


def _unsupported_config(tmp_path: Path) -> str:
    config = json.loads((MODELS / "llama-3.1-8b.json").read_text())
    config["model_type"] = "mamba"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


ERRORS = [
    # (id, argv builder, words the error line must contain)
    ("unknown-gpu", lambda t: ["--gpu", "h100-sxn"], ["gpu", "h100-sxm"]),
    ("unknown-model", lambda t: ["--model", "llama-9"], ["model", "llama-9"]),
    ("tp-heads", lambda t: ["--gpus", "24", "--tp", "3"], ["tp", "32"]),
    ("gpus-not-divisible", lambda t: ["--gpus", "12", "--tp", "8"], ["gpus", "tp*pp*cp"]),
    ("dp-inconsistent", lambda t: ["--gpus", "8", "--dp", "3"], ["dp"]),
    ("negative-tp", lambda t: ["--tp", "-2"], ["tp"]),
    ("zero-micro-batch", lambda t: ["--micro-batch", "0"], ["micro_batch"]),
    ("absurd-seq-len", lambda t: ["--seq-len", str(10**9)], ["seq_len"]),
    ("malformed-config", lambda t: ["--model", _bad_config(t)], ["model", "JSON"]),
    ("unsupported-model-type", lambda t: ["--model", _unsupported_config(t)], ["model", "mamba"]),
    ("scenario-unknown-key", lambda t: ["--scenario", str(write_yaml(
        t / "s.yaml", {"model": "llama-3.1-8b", "strategy": {"tensor_parallel": 2}}))], ["strategy.tensor_parallel"]),
    ("scenario-not-mapping", lambda t: ["--scenario", str(write_yaml(t / "s.yaml", ["a", "b"]))],
     ["scenario", "mapping"]),
    ("scenario-missing", lambda t: ["--scenario", str(t / "nope.yaml")], ["scenario", "nope.yaml"]),
    ("fp8-on-a100", lambda t: ["--gpu", "a100-80gb", "--precision", "fp8"], ["precision", "fp8"]),
    ("ep-on-dense", lambda t: ["--ep", "8"], ["ep", "dense"]),
    ("micro-batch-not-dividing", lambda t: ["--micro-batch", "3"], ["micro_batch"]),
    ("sp-without-tp", lambda t: ["--sequence-parallel"], ["sequence_parallel"]),
    ("zero-out-of-range", lambda t: ["--zero", "4"], ["zero"]),
    ("bad-recompute-choice", lambda t: ["--recompute", "bogus"], ["recompute"]),
]


def assert_one_line_error(rc: int, out: str, err: str, words) -> None:
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    line = lines[0].replace("-", "_")  # a field may be named as a flag (--micro-batch) or a key (micro_batch)
    for word in words:
        assert word.replace("-", "_") in line, (word, lines[0])


@pytest.mark.parametrize("argv_of, words", [pytest.param(a, w, id=i) for i, a, w in ERRORS])
def test_predict_train_user_errors(capsys, tmp_path, argv_of, words):
    argv = argv_of(tmp_path)
    rc, out, err = run(capsys, "predict", "train", *argv)
    assert_one_line_error(rc, out, err, words)
    assert out == ""
    # Under --json the same error is one JSON object on stdout, for scripts (issue 26).
    rc, out, err = run(capsys, "predict", "train", *argv, "--json")
    assert rc == 2 and err == ""
    error = json.loads(out)["error"]
    line = f"error: {error['field']}: {error['message']}" if error["field"] else f"error: {error['message']}"
    assert_one_line_error(rc, "", line, words)


def test_unknown_catalog_kind(capsys):
    rc, out, err = run(capsys, "catalog", "list", "foo")
    assert_one_line_error(rc, out, err, ["kind", "foo"])


# ---- catalog and validation ------------------------------------------------------------------

CATALOG = [("gpus", "h100-sxm"), ("nodes", "dgx-h100"), ("networks", "ib-ndr-400"), ("models", "llama-3.1-405b")]


@pytest.mark.parametrize("kind, name", CATALOG)
def test_catalog_list(capsys, monkeypatch, kind, name):
    from sextant import catalog

    monkeypatch.setenv("COLUMNS", "400")  # a wide terminal: nothing is truncated
    rc, out, err = run(capsys, "catalog", "list", kind)
    assert rc == 0, err
    assert name in out
    names = getattr(catalog, f"{kind[:-1]}_names")()
    assert all(n in out for n in names)


@pytest.mark.parametrize("kind, name", [("gpus", "h100-sxm"), ("models", "llama-3.1-405b")])
def test_catalog_list_names_whole_at_80_columns(capsys, monkeypatch, kind, name):
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, err = run(capsys, "catalog", "list", kind)
    assert rc == 0, err
    assert name in out


@pytest.mark.slow
def test_validate_train_json(capsys):
    rc, out, err = run(capsys, "validate", "train", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["rows"]
    for row in report["rows"]:
        assert {"id", "predicted", "published", "ape"} <= set(row)
        assert row["ape"] == pytest.approx(abs(row["predicted"] - row["published"]) / row["published"])
    apes = sorted(row["ape"] for row in report["rows"])
    assert report["max_ape"] == pytest.approx(apes[-1])
    assert apes[0] <= report["median_ape"] <= apes[-1]


# ---- the interface scripts rely on ---------------------------------------------------------------

def test_predict_train_option_names_frozen():
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    predict = root.get_command(ctx, "predict")
    train = predict.get_command(ctx, "train")
    opts = {opt for param in train.params for opt in (*param.opts, *param.secondary_opts)}
    assert INTERFACE_FLAGS <= opts, sorted(INTERFACE_FLAGS - opts)
