"""Model catalog and HuggingFace config.json import: parameter totals against published figures,
and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from sextant.catalog import get_model, model_names
from sextant.catalog.hf_config import model_from_hf_config, supported_model_types
from sextant.cost.params import count_params
from sextant.errors import ConfigImportError, UnknownNameError

DATA = Path(__file__).resolve().parents[1] / "src" / "sextant" / "catalog" / "data" / "models"
B = 1e9


def _total(name: str) -> float:
    return count_params(get_model(name)).total / B


def _active(name: str) -> float:
    return count_params(get_model(name)).active / B


# (name, published total in billions, relative tolerance). Sources: the model cards / papers;
# Llama 3.1 405B: 405,853,388,800 parameters (Meta model card, safetensors index).
PUBLISHED_TOTALS = [
    ("llama-3.1-405b", 405.85, 0.002),
    ("llama-3.1-8b", 8.03, 0.01),
    ("llama-3.1-70b", 70.6, 0.01),
    ("llama-2-7b", 6.74, 0.01),
    ("llama-2-13b", 13.0, 0.01),
    ("llama-2-70b", 69.0, 0.01),
    ("mistral-7b", 7.24, 0.01),
    ("mixtral-8x7b", 46.7, 0.01),
    ("mixtral-8x22b", 141.0, 0.01),
    ("deepseek-v3", 671.0, 0.015),
    ("qwen3-30b-a3b", 30.5, 0.01),
    ("qwen2-57b-a14b", 57.4, 0.01),
    ("qwen2.5-72b", 72.7, 0.01),
    ("gpt-j-6b", 6.05, 0.01),
    ("gpt-neox-20b", 20.55, 0.01),
    ("gpt2-xl", 1.558, 0.01),
    ("opt-66b", 66.0, 0.01),
    ("opt-30b", 30.0, 0.01),
    ("falcon-180b", 179.5, 0.01),
    ("gpt3-175b", 175.0, 0.01),
    ("gpt-sc21-175b", 175.0, 0.01),
    ("gpt-22b", 22.0, 0.01),
    ("bloom-176b", 176.0, 0.01),
    ("glm-130b", 130.0, 0.03),
]

PUBLISHED_ACTIVE = [
    ("mixtral-8x7b", 12.9, 0.01),
    ("mixtral-8x22b", 39.0, 0.01),
    ("deepseek-v3", 37.0, 0.015),
    ("qwen3-30b-a3b", 3.3, 0.02),  # "3.3B activated": 3.35B counted
    ("qwen2-57b-a14b", 14.2, 0.01),
]


@pytest.mark.parametrize(("name", "published", "rel"), PUBLISHED_TOTALS)
def test_total_matches_published(name: str, published: float, rel: float) -> None:
    assert _total(name) == pytest.approx(published, rel=rel)


@pytest.mark.parametrize(("name", "published", "rel"), PUBLISHED_ACTIVE)
def test_active_matches_published(name: str, published: float, rel: float) -> None:
    assert _active(name) == pytest.approx(published, rel=rel)


@pytest.mark.parametrize(
    ("name", "exact"),
    [
        ("llama-3.1-405b", 405_853_388_800),
        ("llama-3.1-8b", 8_030_261_248),
        ("llama-2-7b", 6_738_415_616),
        ("mistral-7b", 7_241_732_096),
        ("gpt-neox-20b", 20_554_567_680),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_exact_checkpoint_counts(name: str, exact: int) -> None:
    """Counts of the released checkpoints (sum of tensor sizes), to the parameter."""
    assert count_params(get_model(name)).total == exact


def test_dense_models_have_total_equal_active() -> None:
    for name in ("llama-3.1-70b", "gpt3-175b", "falcon-180b"):
        assert _total(name) == _active(name)


def _size_in_name(name: str) -> tuple[float, float]:
    """(size in billions, half a unit of its last printed digit) from e.g. 'gpt-sc21-18.4b'."""
    digits = re.search(r"-([\d.]+)b$", name)
    assert digits, name
    text = digits.group(1)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return float(text), 0.5 * 10.0**-decimals


@pytest.mark.parametrize("name", [n for n in model_names() if re.fullmatch(r"gpt-sc21-[\d.]+b", n)])
def test_sc21_sizes_round_to_their_names(name: str) -> None:
    """Narayanan et al. 2021, Table 1 prints each size rounded to the digits of its name."""
    size, half_unit = _size_in_name(name)
    assert abs(_total(name) - size) <= half_unit + 1e-9


def test_all_sc21_and_mcore_sizes_present() -> None:
    names = set(model_names())
    sc21 = {"1.7", "3.6", "7.5", "18.4", "39.1", "76.1", "145.6", "310.1", "529.6", "1008"}
    mcore = {"1.7", "7.1", "16", "32", "70", "119", "177", "314", "462"}
    assert {f"gpt-sc21-{s}b" for s in sc21} <= names
    assert {f"gpt-mcore-{s}b" for s in mcore} <= names


@pytest.mark.parametrize("name", [n for n in model_names() if n.startswith("gpt-mcore-")])
def test_mcore_sizes_match_their_names(name: str) -> None:
    """Megatron-LM README weak-scaling table: each count rounds to its name (1.7B counts 1.745B)
    or is within 2% of it (119B: 118.45B, 462B: 461.45B, 32B: 31.48B, the farthest at 1.6%)."""
    size, half_unit = _size_in_name(name)
    assert abs(_total(name) - size) <= max(half_unit, 0.02 * size)


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("gpt3-125m", 0.125),
        ("gpt3-350m", 0.350),
        ("gpt3-760m", 0.760),
        ("gpt3-1.3b", 1.3),
        ("gpt3-2.7b", 2.7),
        ("gpt3-6.7b", 6.7),
        ("gpt3-13b", 13.0),
        ("gpt3-175b", 175.0),
    ],
)
def test_gpt3_family_matches_table_2_1(name: str, published: float) -> None:
    """Brown et al. 2020 Table 2.1 rounds loosely (2.7B counts 2.65B, 350M counts 356M)."""
    assert _total(name) == pytest.approx(published, rel=0.02)


# --- catalog ------------------------------------------------------------------------------------


def test_every_catalog_model_loads_with_a_source() -> None:
    names = model_names()
    assert len(names) == len(set(names)) >= 45
    for name in names:
        model = get_model(name)
        assert model.name == name
        assert model.source.strip()
        assert count_params(model).total > 0


def test_shared_model_files_are_packaged() -> None:
    shared = {
        "llama-2-7b",
        "llama-2-13b",
        "llama-2-70b",
        "llama-3.1-8b",
        "llama-3.1-70b",
        "llama-3.1-405b",
        "mixtral-8x7b",
        "mixtral-8x22b",
        "deepseek-v3",
        "qwen2.5-72b",
        "qwen3-30b-a3b",
        "gpt-j-6b",
        "falcon-180b",
    }
    assert shared <= set(model_names())
    for name in shared:
        assert get_model(name).source.startswith("HuggingFace config.json: ")


def test_lookup_is_case_insensitive() -> None:
    assert get_model("Llama-3.1-8B") == get_model("llama-3.1-8b")
    assert get_model("  GPT3-175B ") == get_model("gpt3-175b")


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_model("llama-3.1-8")
    assert info.value.field == "model"
    assert "llama-3.1-8b" in str(info.value)
    assert "did you mean" in str(info.value)


def test_get_model_imports_a_config_path(tmp_path: Path) -> None:
    target = tmp_path / "Meta-Llama-3.1-8B"
    target.mkdir()
    shutil.copy(DATA / "llama-3.1-8b.json", target / "config.json")
    model = get_model(str(target / "config.json"))
    assert model.name == "Meta-Llama-3.1-8B"
    assert model.source == f"HuggingFace config.json: {target / 'config.json'}"
    assert count_params(model).total == count_params(get_model("llama-3.1-8b")).total
    assert get_model(str(target)) == model  # a folder holding config.json
    assert get_model(target / "config.json") == model  # a Path


# --- what the importer maps -----------------------------------------------------------------------


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


def test_architecture_flags() -> None:
    assert get_model("qwen2.5-72b").qkv_bias and not get_model("qwen2.5-72b").linear_bias
    assert get_model("qwen3-30b-a3b").head_dim == 128  # explicit, not 2048 / 32
    falcon = get_model("falcon-180b")
    assert (falcon.num_kv_heads, falcon.parallel_attention, falcon.parallel_attention_norms) == (8, True, 2)
    assert falcon.tie_embeddings and not falcon.linear_bias and falcon.norm == "layernorm"
    gptj = get_model("gpt-j-6b")
    assert gptj.parallel_attention and gptj.parallel_attention_norms == 1 and gptj.ffn_hidden_size == 4 * 4096
    assert gptj.position_embedding == "rope" and not gptj.tie_embeddings
    gpt2 = get_model("gpt2-xl")
    assert (gpt2.position_embedding, gpt2.mlp, gpt2.tie_embeddings, gpt2.max_seq_len) == (
        "learned",
        "gelu",
        True,
        1024,
    )
    opt = get_model("opt-66b")
    assert (opt.mlp, opt.tie_embeddings, opt.ffn_hidden_size) == ("relu", True, 36864)
    neox = get_model("gpt-neox-20b")
    assert neox.parallel_attention and neox.parallel_attention_norms == 2 and neox.linear_bias
    assert get_model("llama-3.1-405b").max_seq_len == 131072


def test_deepseek_v3_layout() -> None:
    model = get_model("deepseek-v3")
    assert model.mla is not None and model.moe is not None
    assert (model.num_dense_layers, model.num_moe_layers) == (3, 58)
    assert (model.moe.num_shared_experts, model.moe.shared_expert_ffn_hidden_size) == (1, 2048)


def test_deepseek_v2_counts() -> None:
    """DeepSeek-V2 (deepseek-ai/DeepSeek-V2 config.json): 236B total, 21B active."""
    config = {
        **_load("deepseek-v3"),
        "model_type": "deepseek_v2",
        "hidden_size": 5120,
        "intermediate_size": 12288,
        "moe_intermediate_size": 1536,
        "num_hidden_layers": 60,
        "first_k_dense_replace": 1,
        "n_routed_experts": 160,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "vocab_size": 102400,
    }
    counts = count_params(model_from_hf_config(config))
    assert counts.total / B == pytest.approx(236, rel=0.01)
    assert counts.active / B == pytest.approx(21, rel=0.02)


def test_qwen_moe_sparse_step_and_mlp_only_layers() -> None:
    base = _load("qwen2-57b-a14b")
    every_other = model_from_hf_config({**base, "decoder_sparse_step": 2})
    assert every_other.moe is not None and every_other.num_moe_layers == 14
    assert (every_other.moe.first_dense_layers, every_other.moe.layer_freq) == (1, 2)  # layers 1, 3, ...
    prefix = model_from_hf_config({**base, "mlp_only_layers": [0, 1]})
    assert prefix.num_dense_layers == 2 and prefix.moe is not None and prefix.moe.first_dense_layers == 2
    scattered = model_from_hf_config({**base, "mlp_only_layers": [3, 17, 20]})
    assert (scattered.num_dense_layers, scattered.num_moe_layers) == (3, 25)
    assert get_model("qwen2-57b-a14b").moe.num_shared_experts == 1  # type: ignore[union-attr]


def test_old_falcon_is_multi_query_with_one_norm() -> None:
    """Falcon-7B (tiiuae/falcon-7b config.json): 71 heads sharing one KV head; 6.92B with tied embeddings."""
    config = {
        "model_type": "falcon",
        "hidden_size": 4544,
        "num_hidden_layers": 32,
        "num_attention_heads": 71,
        "multi_query": True,
        "parallel_attn": True,
        "new_decoder_architecture": False,
        "bias": False,
        "vocab_size": 65024,
    }
    model = model_from_hf_config(config, name="falcon-7b")
    assert (model.num_kv_heads, model.parallel_attention_norms, model.head_dim) == (1, 1, 64)
    assert count_params(model).total == 6_921_720_704


def test_supported_types_cover_the_brief() -> None:
    for model_type in (
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3_moe",
        "deepseek_v3",
        "gpt2",
        "gpt_neox",
        "gptj",
        "opt",
        "falcon",
    ):
        assert model_type in supported_model_types()


# --- import errors ------------------------------------------------------------------------------


def _one_line_error(source: Any) -> str:
    with pytest.raises(ConfigImportError) as info:
        model_from_hf_config(source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    message = _one_line_error(tmp_path / "nope" / "config.json")
    assert "file not found" in message and "nope" in message
    with pytest.raises(ConfigImportError, match="file not found"):
        get_model(str(tmp_path / "missing.json"))


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama",,}')
    message = _one_line_error(path)
    assert "invalid JSON" in message and str(path) in message and "line 1" in message


def test_json_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    assert "JSON object" in _one_line_error(path)


def test_unsupported_model_type() -> None:
    message = _one_line_error({"model_type": "bert", "hidden_size": 768})
    assert "'bert'" in message and "not supported" in message
    assert "llama" in message and "deepseek_v3" in message  # lists the supported ones


def test_missing_model_type() -> None:
    assert "model_type" in _one_line_error({"hidden_size": 4096})


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"])
def test_missing_required_key(key: str) -> None:
    config = _load("llama-3.1-8b")
    del config[key]
    message = _one_line_error(config)
    assert f"'{key}'" in message and "missing" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("hidden_size", "big"), ("num_hidden_layers", 32.5), ("num_attention_heads", True), ("vocab_size", -5)],
)
def test_wrong_type_or_value(key: str, value: Any) -> None:
    config = {**_load("llama-3.1-8b"), key: value}
    assert f"'{key}'" in _one_line_error(config)


def test_wrong_type_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**_load("mixtral-8x7b"), "hidden_size": "big"}))
    message = _one_line_error(path)
    assert str(path) in message and "'hidden_size'" in message and "'big'" in message


def test_bad_flags_and_activation() -> None:
    assert "'tie_word_embeddings'" in _one_line_error({**_load("llama-2-7b"), "tie_word_embeddings": "yes"})
    assert "'hidden_act'" in _one_line_error({**_load("llama-2-7b"), "hidden_act": "tanh"})


def test_inconsistent_heads_is_an_import_error() -> None:
    message = _one_line_error({**_load("llama-3.1-8b"), "num_key_value_heads": 7})
    assert "num_kv_heads" in message
    assert "head_dim" in _one_line_error(
        {**_load("llama-3.1-8b"), "num_attention_heads": 33, "num_key_value_heads": 33}
    )


def test_opt_with_projected_embeddings_is_refused() -> None:
    assert "word_embed_proj_dim" in _one_line_error({**_load("opt-66b"), "word_embed_proj_dim": 512})


def test_a_bloom_config_imports_as_the_native_bloom() -> None:
    # bigscience/bloom config.json keys (n_embed, n_layer, n_head); ALiBi, 4h GeLU MLP, tied embeddings.
    imported = model_from_hf_config({"model_type": "bloom", "n_embed": 14336, "n_layer": 70, "n_head": 112,
                                     "vocab_size": 250880}, name="bloom-import")
    native = get_model("bloom-176b")
    assert imported.position_embedding == "alibi"
    assert count_params(imported).total == pytest.approx(count_params(native).total, rel=1e-6)


@pytest.mark.parametrize("name", ["deepseek-v3", "mixtral-8x7b", "llama-4-scout", "qwen3-30b-a3b", "llama-3.1-8b"])
def test_the_moe_layers_named_are_the_ones_counted(name):
    from sextant.catalog import get_model

    m = get_model(name)
    assert len(m.moe_layer_indices) == m.num_moe_layers
    assert all(0 <= i < m.num_layers for i in m.moe_layer_indices)
