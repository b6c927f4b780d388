"""Built-in models, and HuggingFace config.json import through :func:`get_model`.

Catalog entries come from two places under ``data/``:

* ``models/<name>.json``: HuggingFace config.json files, written from the published configs of
  the repositories in :data:`HF_REPOS`, read by :func:`sextant.catalog.hf_config.model_from_hf_config`;
* ``models.yaml``: native entries (ModelSpec fields, each with its ``source``) for models that have
  no config.json: GPT-3 (Brown et al. 2020), the Megatron-LM scaling models (Narayanan et al.
  2021; Korthikanti et al. 2022; Megatron-LM README), BLOOM and GLM-130B.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from sextant.catalog._loader import load_yaml, lookup
from sextant.catalog.hf_config import model_from_hf_config
from sextant.spec.model import ModelSpec

#: HuggingFace Hub repositories whose config.json each ``data/models/<name>.json`` reproduces, or for a
#: model benchmarked in a published run and defined by its source, where that definition comes from.
HF_REPOS: dict[str, str] = {
    "deepseek-v3": "deepseek-ai/DeepSeek-V3",
    "falcon-180b": "tiiuae/falcon-180B",
    "gpt-j-6b": "EleutherAI/gpt-j-6b",
    "gpt-neox-20b": "EleutherAI/gpt-neox-20b",
    "gpt2-xl": "openai-community/gpt2-xl",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-2-70b": "meta-llama/Llama-2-70b-hf",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
    "llama-3.1-405b": "meta-llama/Llama-3.1-405B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-v0.1",
    "mixtral-8x22b": "mistralai/Mixtral-8x22B-v0.1",
    "opt-6.7b": "facebook/opt-6.7b",
    "opt-30b": "facebook/opt-30b",
    "opt-66b": "facebook/opt-66b",
    "opt-175b": "facebook/opt-175b (config of metaseq's OPT-175B; weights by request)",
    "qwen2-57b-a14b": "Qwen/Qwen2-57B-A14B",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B",
    "qwen2-7b": "Qwen/Qwen2-7B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct (the same shapes as Qwen2-7B)",
    "qwen2.5-32b": "Qwen/Qwen2.5-32B",
    "qwen2-72b": "Qwen/Qwen2-72B",
    "codellama-34b": "codellama/CodeLlama-34b-Instruct-hf",
    "yi-34b": "01-ai/Yi-34B",
    "mistral-nemo-12b": "mistralai/Mistral-Nemo-Instruct-2407",
    "llama-4-scout": "meta-llama/Llama-4-Scout-17B-16E config.json text_config, as llama-4-scout-2l with all 48 layers "
                     "(16 routed experts, top-1, one shared expert in every layer)",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-14b": "Qwen/Qwen3-14B",
    "qwen3-32b": "Qwen/Qwen3-32B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
    "qwen3-235b-a22b": "Qwen/Qwen3-235B-A22B",
    # Models benchmarked in published training runs (the training ledger), as their sources define them.
    "nanotron-llama-1.34b": "huggingface/nanotron scripts/scaling_benchmarks.py model_configs '1B': (16, 2048, 32, 8192), MHA, vocab 131072, tied (1.34B)",
    "nanotron-llama-3.57b": "huggingface/nanotron scripts/scaling_benchmarks.py model_configs '3B': (28, 3072, 32, 8192) ('3.57G 24heads -> 32heads'), MHA, vocab 131072, tied (3.57B)",
    "nanotron-llama-8.86b": "huggingface/nanotron scripts/scaling_benchmarks.py model_configs '8B': (32, 4096, 32, 14336), MHA, vocab 131072, untied (8.86B)",
    "nanotron-llama-80b": "huggingface/nanotron scripts/scaling_benchmarks.py model_configs '70B': (80, 8192, 64, 28672), MHA, vocab 131072, untied (80.0B)",
    "mpt-1b-bench": "mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-1b.yaml (d_model 2048, n_heads 16, n_layers 24, expansion_ratio 4, vocab 50368) + MPTConfig defaults; README NumParams 1,315,950,592 at seq 2048",
    "mpt-3b-bench": "mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-3b.yaml (d_model 2560, n_heads 20, n_layers 32, expansion_ratio 4, vocab 50368) + MPTConfig defaults; README NumParams 2,651,837,440 at seq 2048",
    "mpt-3b-bench-s8192": "as mpt-3b-bench with max_seq_len 8192 (learned position table of 8192 rows); README NumParams 2,667,566,080",
    "mpt-3b-bench-s512": "as mpt-3b-bench with max_seq_len 512; README NumParams 2,647,905,280",
    "mpt-7b-bench": "mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-7b.yaml (d_model 4096, n_heads 32, n_layers 32, expansion_ratio 4, vocab 50368) + MPTConfig defaults; README NumParams 6,658,859,008 at seq 2048",
    "mpt-7b-bench-s8192": "as mpt-7b-bench with max_seq_len 8192; README NumParams 6,684,024,832",
    "mpt-13b-bench": "mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-13b.yaml (d_model 5120, n_heads 40, n_layers 40, expansion_ratio 4, vocab 50368) + MPTConfig defaults; README NumParams 12,853,954,560 at seq 2048",
    "mpt-30b-bench": "mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-30b.yaml (d_model 7168, n_heads 56, n_layers 48, expansion_ratio 4, vocab 50368) + MPTConfig defaults; README NumParams 29,975,214,080 at seq 2048",
    "mpt-70b-bench": "mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-70b.yaml (d_model 8192, n_heads 64, n_layers 80, expansion_ratio 4, vocab 50368) + MPTConfig defaults; README NumParams 64,862,437,376 at seq 2048",
    "llama-4-scout-2l": "meta-llama/Llama-4-Scout-17B-16E config.json text_config (hidden_size 5120, num_hidden_layers 48, num_attention_heads 40, num_key_value_heads 8, head_dim 128, intermediate_size 8192, intermediate_size_mlp 16384, num_local_experts 16, num_experts_per_tok 1, interleave_moe_layer_step 1, vocab_size 202048, max_position_embeddings 10485760, tie_word_embeddings false), cross-checked against pytorch/torchtitan torchtitan/models/llama4/__init__.py flavor '17bx16e' at 8631e19 (dim 5120, n_layers 48, n_heads 40, n_kv_heads 8, ffn_dim_multiplier 1.2, multiple_of 2048, MoEArgs(num_experts 16, top_k 1, num_shared_experts 1), interleave_moe_layer_step 1, vocab 202048), whose auto_scale_hidden_dim gives expert and shared-expert hidden int(int(2*4*5120/3)*1.2)/2 rounded up to 2048 = 8192; num_hidden_layers set to 2 per the benchmark.",
}


def _models_dir() -> Any:
    return resources.files("sextant.catalog").joinpath("data", "models")


@cache
def _hf_files() -> dict[str, str]:
    """Catalog name -> file name of every packaged config.json."""
    return {
        entry.name.removesuffix(".json").lower(): entry.name
        for entry in _models_dir().iterdir()
        if entry.name.endswith(".json")
    }


@cache
def _catalog() -> dict[str, str]:
    """Catalog name -> where it is defined (``"json"`` or ``"yaml"``)."""
    native = load_yaml("models.yaml")
    clash = sorted(set(native) & set(_hf_files()))
    if clash:
        raise RuntimeError(f"models defined both in models.yaml and models/*.json: {', '.join(clash)}")
    return {**{name: "json" for name in _hf_files()}, **{name.lower(): "yaml" for name in native}}


def model_names() -> list[str]:
    """Names of all built-in models, sorted."""
    return sorted(_catalog())


@cache
def _builtin(key: str) -> ModelSpec:
    if lookup(_catalog(), key, kind="model", field="model") == "yaml":
        return ModelSpec(name=key, **load_yaml("models.yaml")[key])
    filename = _hf_files()[key]
    config = json.loads(_models_dir().joinpath(filename).read_text(encoding="utf-8"))
    model = model_from_hf_config(config, name=key)
    repo = HF_REPOS.get(key, key)
    return model.model_copy(
        update={"source": f"HuggingFace config.json: {repo} (sextant/catalog/data/models/{filename})"}
    )


def get_model(name_or_path: str | Path) -> ModelSpec:
    """A built-in model by name (case-insensitive), or a HuggingFace config.json by path.

    A string ending in ``.json``, or naming an existing file or a folder holding ``config.json``,
    and not a catalog name, is imported with :func:`model_from_hf_config`. Unknown names raise
    :class:`~sextant.errors.UnknownNameError` with the closest catalog names.
    """
    text = str(name_or_path).strip()
    key = text.lower()
    if not isinstance(name_or_path, Path) and key in _catalog():
        return _builtin(key)
    path = Path(text).expanduser()
    if key.endswith(".json") or is_file(path) or is_file(path / "config.json"):
        return model_from_hf_config(path)
    return _builtin(key)


def is_file(path: Path) -> bool:
    """``path.is_file()``, False where the OS refuses the name (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
