"""Scenario files: the packaged and documented examples load and predict; every unknown key, at
every level, is a ScenarioError naming its dotted path; ``model`` may be an inline ModelSpec."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sextant.errors import ScenarioError
from sextant.spec.model import ModelSpec
from sextant.spec.scenario import TrainScenario, load_scenario, parse_scenario
from sextant.train.predict import predict_train

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = sorted((ROOT / "src" / "sextant" / "scenarios").glob("*.yaml"))
DOC = ROOT / "docs" / "scenarios.md"

TINY = dict(name="tiny-gpt", source="made up for a test", hidden_size=1024, num_layers=4, num_heads=16,
            num_kv_heads=16, head_dim=64, ffn_hidden_size=4096, vocab_size=1000, max_seq_len=2048, mlp="gelu",
            norm="layernorm", position_embedding="learned")

EXAMPLES = {
    "minimal": {"model": "llama-3.1-8b"},
    "empty-sections": {"hardware": {}, "strategy": {}, "workload": {}},
    "megatron-3d": {"model": "gpt-sc21-175b", "hardware": {"gpu": "a100-80gb", "gpus": 64},
                    "strategy": {"tp": 8, "pp": 8, "recompute": "full", "precision": "fp16", "zero": 0},
                    "workload": {"global_batch": 64, "seq_len": 2048, "dropout": True}},
    "moe": {"model": "mixtral-8x7b", "hardware": {"gpu": "h100-sxm", "gpus": 16},
            "strategy": {"ep": 8, "tp": 2, "sequence_parallel": True, "recompute": "selective"},
            "workload": {"global_batch": 64, "seq_len": 4096}},
    "overlap-and-network": {"hardware": {"gpus": 16, "network": "roce-400", "gpus_per_node": 4},
                            "strategy": {"pp": 2, "vpp": 2, "overlap": {"tp_comm": True, "efficiency": 0.8}},
                            "workload": {"global_batch": 32, "seq_len": 4096}},
    "inline-model": {"model": TINY, "hardware": {"gpus": 8},
                     "workload": {"global_batch": 16, "seq_len": 2048}},
}


def write(tmp_path: Path, data, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("data", [pytest.param(v, id=k) for k, v in EXAMPLES.items()])
def test_example_scenarios_load_and_predict(tmp_path, data):
    scenario = load_scenario(write(tmp_path, data))
    assert isinstance(scenario, TrainScenario)
    result = predict_train(scenario)
    assert result.step_time_s > 0
    assert sum(result.time_breakdown_s.values()) == pytest.approx(result.step_time_s, rel=1e-6)


@pytest.mark.parametrize("path", PACKAGED, ids=[p.name for p in PACKAGED])
def test_packaged_scenarios_load_and_predict(path):
    result = predict_train(load_scenario(path))
    assert result.step_time_s > 0


def test_default_scenario_is_packaged():
    assert any(p.name == "default-train.yaml" for p in PACKAGED)


def doc_yaml_blocks() -> list[str]:
    if not DOC.exists():
        return []
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.skipif(not doc_yaml_blocks(), reason="docs/scenarios.md has no YAML example")
def test_documented_scenario_keys_are_accepted(tmp_path):
    """Every key of the documented scenario is one the parser knows (the doc cannot drift)."""
    for i, block in enumerate(doc_yaml_blocks()):
        data = yaml.safe_load(block)
        scenario = load_scenario(write(tmp_path, data, f"doc{i}.yaml"))
        assert isinstance(scenario, TrainScenario)
        data.get("hardware", {}).pop("profile", None)  # names a file the reader would write
        assert predict_train(parse_scenario(data)).step_time_s > 0


# ---- unknown keys ---------------------------------------------------------------------------------

UNKNOWN = [
    ({"modle": "llama-3.1-8b"}, "modle"),
    ({"hardware": {"gpu_count": 8}}, "hardware.gpu_count"),
    ({"strategy": {"tensor_parallel": 2}}, "strategy.tensor_parallel"),
    ({"strategy": {"overlap": {"tp_overlap": True}}}, "strategy.overlap.tp_overlap"),
    ({"workload": {"batch_size": 8}}, "workload.batch_size"),
]


@pytest.mark.parametrize("data, path", [pytest.param(d, p, id=p) for d, p in UNKNOWN])
def test_unknown_key_names_its_path(tmp_path, data, path):
    file = write(tmp_path, data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(file)
    message = str(info.value)
    assert f"{path}: unknown key" in message
    assert str(file) in message  # which file
    assert "\n" not in message


@pytest.mark.parametrize("extra", [{"hidden": 3}, {"moe": {"num_experts": 8, "top_k": 2, "expert_ffn_hidden_size": 8,
                                                           "experts": 1}}])
def test_unknown_key_in_inline_model_names_its_path(extra):
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"model": {**TINY, **extra}})
    message = str(info.value)
    key = "experts" if "moe" in extra else "hidden"
    assert key in message and "unknown key" in message
    assert "valid string" not in message


def test_wrong_type_names_its_path():
    with pytest.raises(ScenarioError, match=r"strategy\.tp: .*'two'"):
        parse_scenario({"strategy": {"tp": "two"}})


@pytest.mark.parametrize("text, words", [
    ("- a\n- b\n", "mapping"),
    ("model: [\n", "not valid YAML"),
    ("42\n", "mapping"),
])
def test_malformed_files(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=words):
        load_scenario(path)


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "absent.yaml")


def test_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_scenario(path) == TrainScenario()


# ---- inline model -------------------------------------------------------------------------------

def test_inline_model_mapping():
    scenario = parse_scenario({"model": TINY, "workload": {"global_batch": 16, "seq_len": 2048}})
    assert isinstance(scenario.model, ModelSpec)
    assert scenario.model == ModelSpec(**TINY)
    result = predict_train(scenario)
    assert result.model == "tiny-gpt"
    assert result.memory_gb_per_gpu["total"] > 0


def test_inline_model_is_validated():
    with pytest.raises(ScenarioError):
        parse_scenario({"model": {**TINY, "num_kv_heads": 5}})  # 16 heads not a multiple of 5
