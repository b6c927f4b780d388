"""Every example of issue 26, run through the CLI: exit 2 and one line naming the field (or one
JSON object under ``--json``), found before any work is done; never a traceback or a hang."""

from __future__ import annotations

import json
import os

import pytest

from sextant.cli.app import main
from sextant.cli.output import finite

SERVE = ["predict", "serve", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--num-requests", "8"]


@pytest.fixture
def odd(tmp_path):
    """Files a user might name by mistake."""
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "latin1.yaml").write_bytes("model: café\n".encode("latin-1"))
    (tmp_path / "utf16.yaml").write_bytes("model: llama-3.1-8b\n".encode("utf-16"))
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    config = json.loads(open(os.path.join(os.path.dirname(__file__), "..", "src", "sextant", "catalog", "data",
                                          "models", "llama-3.2-1b.json")).read())
    (tmp_path / "million.json").write_text(json.dumps({**config, "num_hidden_layers": 1_000_000}))
    (tmp_path / "trace.csv").write_text("arrival_s,input_tokens,output_tokens\n0,100,10\n")
    (tmp_path / "gpus-true.yaml").write_text("hardware:\n  gpus: true\n")
    return tmp_path


EXAMPLES = [
    (["plan", "train", "--global-batch", "1000000000000"], "--global-batch"),
    (["plan", "train", "--model", "deepseek-v3", "--gpus", "720720", "--global-batch", "16384"],
     "10,643,850 parallel layouts, more than the 1,048,576"),
    (SERVE + ["--gpus", "1000000000000"], "--gpus"),
    (SERVE + ["--num-requests", "1000000000000"], "num_requests"),
    (["plan", "train", "--tokens", "nan"], "--tokens"),
    (["plan", "train", "--tokens", "inf"], "--tokens"),
    (["plan", "train", "--tokens", "1e12", "--price-per-gpu-hour", "nan"], "--price-per-gpu-hour"),
    (SERVE + ["--iteration-overhead-ms", "inf"], "--iteration-overhead-ms"),
    (SERVE + ["--seed", "-1"], "--seed"),
    (["plan", "serve", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--top", "0"], "--top"),
    (["plan", "train", "--max-micro-batch", "-1"], "--max-micro-batch"),
    (["plan", "train", "-s", "{d}/binary.yaml"], "not UTF-8"),
    (["plan", "train", "-s", "{d}/latin1.yaml"], "not UTF-8"),
    (["plan", "train", "-s", "{d}/utf16.yaml"], "not UTF-8"),
    (["plan", "train", "-s", "{d}/adir"], "is a directory"),
    (["validate", "train", "--ledger", "{d}/binary.yaml"], "not UTF-8"),
    (["validate", "train", "--ledger", "{d}/empty.yaml"], "holds no rows"),
    (["validate", "train", "--ledger", "{d}/adir"], "is a directory"),
    (["predict", "train", "--model", "{d}/million.json"], "num_hidden_layers' must be at most 1,024, got 1,000,000"),
    (["plan", "train", "--model", "{d}/million.json"], "num_hidden_layers' must be at most 1,024"),
    (SERVE + ["--prefill-replicas", "0"], "--prefill-replicas"),
    (SERVE + ["--decode-replicas", "0"], "--decode-replicas"),
    (SERVE + ["--spec-tokens", "0"], "--spec-tokens"),
    (SERVE + ["--draft-model", "llama-3.2-1b", "--spec-tokens", "0"], "--spec-tokens"),
    (SERVE + ["--gpus", "3", "--tp", "2"], "give --gpus 2 or a multiple of tp x pp = 2"),
    (["predict", "train", "--seq-len", "100000000"], "--seq-len"),
    (["predict", "serve", "-s", "{d}/gpus-true.yaml"], "gpus must be a number"),
    (["predict", "train", "-s", "{d}/gpus-true.yaml"], "gpus must be a number"),
    (SERVE[:6] + ["--trace", "{d}/trace.csv", "--rate", "5", "--input-len", "100"], "input_len, rate would be ignored"),
    (["plan", "serve", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--rate", "5", "--ttft-slo", "-1"],
     "--ttft-slo"),
    (SERVE + ["--tpot-slo", "0"], "--tpot-slo"),
    (SERVE + ["--burstiness", "inf", "--rate", "5"], "--burstiness"),
    (SERVE + ["--rate", "1e-320"], "--rate"),
    (SERVE + ["--trace-out", "{d}/adir"], "is a directory"),
    (SERVE + ["--requests-out", "{d}/nofolder/r.csv"], "does not exist"),
    (["predict", "train", "--trace-out", "{d}/afile/x.json"], "is a file, not a folder"),
]


@pytest.mark.parametrize("argv,names", EXAMPLES, ids=[" ".join(a[:4]) + " " + n for a, n in EXAMPLES])
def test_each_example_is_one_line_naming_the_problem(odd, capsys, argv, names):
    argv = [a.replace("{d}", str(odd)) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], captured.err
    assert main([*argv, "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert names in f"{error['field']}: {error['message']}"


def test_calibrate_checks_its_output_before_it_measures(odd, capsys):
    pytest.importorskip("torch")
    for target, words in ((odd / "adir", "is a directory"), (odd / "afile" / "p.json", "is a file, not a folder"),
                          (odd / "nofolder" / "p.json", "does not exist")):
        assert main(["calibrate", "--quick", "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert not list(odd.glob("*.tmp")) and not list((odd / "adir").iterdir())


def test_a_failed_write_leaves_no_partial_file(odd, capsys):
    assert main([*SERVE, "--requests-out", str(odd / "adir")]) == 2
    assert list((odd / "adir").iterdir()) == []


def test_lengths_past_the_context_are_stated_not_hidden(capsys):
    assert main(["predict", "train", "--model", "llama-3.2-1b", "--gpu", "h100-sxm", "--gpus", "8",
                 "--seq-len", "262144", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["assumptions"]
    assert any("262,144 tokens is longer than llama-3.2-1b's context of 131,072" in n for n in notes), notes


def test_version(capsys):
    from sextant import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sextant {__version__}"


def test_json_output_never_holds_nan_or_infinity():
    assert finite({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf"), "e": 2}}) == {
        "a": None, "b": [1.0, None], "c": {"d": None, "e": 2}}


def test_a_failed_calibration_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: calibrating it would succeed")
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
