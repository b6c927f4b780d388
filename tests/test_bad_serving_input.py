"""Bad serving input is one line and exit 2: non-finite numbers, rates that would overflow the
arrival times, negative seeds, non-finite trace lengths, an empty top list (issue 26)."""

from __future__ import annotations

import pytest

from sextant.cli.app import main

BASE = ["predict", "serve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--num-requests", "8"]


@pytest.mark.parametrize("args,message", [
    (BASE + ["--rate", "nan"], "--rate: Input should be a finite number"),
    (BASE + ["--rate", "1e-320"], "--rate: Input should be greater than or equal to"),
    (BASE + ["--iteration-overhead-ms", "inf"], "--iteration-overhead-ms: Input should be a finite number"),
    (BASE + ["--rate", "5", "--arrival", "gamma", "--burstiness", "inf"], "--burstiness"),
    (BASE + ["--seed", "-1"], "--seed"),
    (["plan", "serve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--top", "0"], "--top: must be 1 to 100"),
    (["plan", "train", "--tokens", "nan"], "--tokens: must be a positive finite number"),
    (["plan", "train", "--tokens", "1e9", "--price-per-gpu-hour", "inf"], "--price-per-gpu-hour"),
])
def test_bad_flags_are_one_line_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("length", ["inf", "nan", "-inf"])
def test_a_trace_with_a_non_finite_length_is_a_one_line_error(tmp_path, capsys, length):
    trace = tmp_path / "t.csv"
    trace.write_text(f"arrival_s,input_tokens,output_tokens\n0,{length},10\n")
    assert main(BASE[:6] + ["--trace", str(trace)]) == 2
    assert "input_tokens must be a whole number" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (BASE + ["--gpus", "1000000000000"], "--gpus: Input should be less than or equal to 1048576"),
    (BASE + ["--gpus", "131072"], "gpus: 131,072 GPUs is more than the 65,536"),
    (BASE + ["--gpus", "2", "--prefill-replicas", "0", "--decode-replicas", "1"], "--prefill-replicas"),
    (BASE + ["--draft-model", "llama-3.2-1b", "--spec-tokens", "0"], "--spec-tokens"),
])
def test_values_the_model_cannot_honour_are_refused_not_substituted(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [(None, "is a directory"), (b"\x00\xff\xfe", "is not UTF-8")])
@pytest.mark.parametrize("command", ["serve", "train"])
def test_unreadable_scenario_files_are_one_line_errors(tmp_path, capsys, content, message, command):
    path = tmp_path / "scenario.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert main(["predict", command, "--scenario", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_under_json_an_error_is_one_json_object_on_stdout(capsys):
    import json

    assert main(BASE + ["--rate", "nan", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": {"field": "--rate", "message": "Input should be a finite number (got nan)"}}
    assert err == ""
    assert main(["predict", "serve", "--no-such-flag", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["message"].startswith("No such option")
