"""docs/api.md's examples run, in order and in one namespace, as its readers would run them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sextant

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_example_of_docs_api_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 6
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the documentation's own code
    assert "tokens/s/GPU" in capsys.readouterr().out


def test_the_package_exports_the_api_lazily():
    assert set(sextant.__all__) >= {"predict_train", "plan_train", "predict_serve", "plan_serve", "validate_ledger"}
    assert "predict_train" in dir(sextant)
    with pytest.raises(AttributeError):
        sextant.no_such_function  # noqa: B018


def test_overrides_land_in_their_sections_and_merge_with_the_scenario(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model: llama-3.2-1b\nhardware: {gpu: h100-sxm, gpus: 8}\nworkload: {global_batch: 64, seq_len: 2048}\n")
    job = sextant.train_scenario(path, workload={"seq_len": 4096}, zero=3)
    assert (job.workload.global_batch, job.workload.seq_len, job.strategy.zero) == (64, 4096, 3)
    served = sextant.serve_scenario({"model": "llama-3.2-1b"}, tp=4, max_batch=32)
    assert (served.hardware.gpus, served.deployment.tp, served.scheduler.max_batch) == (4, 4, 32)


def test_a_key_no_section_has_is_refused_with_the_closest_names():
    from sextant.errors import SpecError

    with pytest.raises(SpecError, match="did you mean global_batch"):
        sextant.predict_train(global_bach=64)
    with pytest.raises(SpecError, match="no ledger"):
        sextant.validate_ledger("nope")
