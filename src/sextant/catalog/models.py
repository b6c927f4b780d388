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

#: HuggingFace Hub repositories whose config.json each ``data/models/<name>.json`` reproduces.
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
    "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
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
    if key.endswith(".json") or path.is_file() or (path / "config.json").is_file():
        return model_from_hf_config(path)
    return _builtin(key)
