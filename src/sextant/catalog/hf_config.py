"""Import a HuggingFace ``config.json`` into a :class:`ModelSpec` (local files only, no network).

Key names and defaults follow the configuration classes of HuggingFace transformers
(``LlamaConfig``, ``MistralConfig``, ``MixtralConfig``, ``Qwen2Config``, ``Qwen2MoeConfig``,
``Qwen3MoeConfig``, ``DeepseekV3Config``, ``GPT2Config``, ``GPTNeoXConfig``, ``GPTJConfig``,
``OPTConfig``, ``FalconConfig``); the layer structure each implies follows the matching
``modeling_*.py``. Approximations, where ModelSpec cannot say exactly what a model has, are noted
at the builder concerned; none moves a published parameter total by more than 0.1%.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sextant.errors import ConfigImportError
from sextant.files import read_user_text
from sextant.spec.limits import MAX_LAYERS
from sextant.spec.model import MLASpec, ModelSpec, MoESpec

_MISSING: Any = object()
#: Keys that count layers (the importer loops over them), bounded as ModelSpec bounds num_layers.
_LAYER_KEYS = {"num_hidden_layers", "n_layer", "first_k_dense_replace", "moe_layer_freq",
               "interleave_moe_layer_step", "decoder_sparse_step"}
#: Any other integer of a config.json: sizes and counts far beyond a real model are refused.
_MAX_CONFIG_INT = 1 << 40

#: HuggingFace ``hidden_act`` / ``activation_function`` names, for gated and plain MLPs.
_GELUS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_10", "quick_gelu")
_GATED_ACT = {"silu": "swiglu", "swish": "swiglu", **dict.fromkeys(_GELUS, "geglu")}
_PLAIN_ACT = {"relu": "relu", **dict.fromkeys(_GELUS, "gelu")}


class _Config:
    """Typed reads from one parsed config.json; every failure is one ConfigImportError line."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def fail(self, message: str) -> ConfigImportError:
        return ConfigImportError(f"{self.where}: {message}", field="model")

    def _raw(self, keys: tuple[str, ...]) -> tuple[str, Any]:
        """The first of ``keys`` that is present, with its value (``_MISSING`` when none is)."""
        for key in keys:
            if key in self.data:
                return key, self.data[key]
        return keys[0], _MISSING

    def integer(self, *keys: str, default: Any = _MISSING, minimum: int = 1) -> Any:
        """An integer >= ``minimum``; ``default`` when absent or null (required if not given)."""
        key, value = self._raw(keys)
        if value is _MISSING or value is None:
            if default is _MISSING:
                state = "missing" if value is _MISSING else "null"
                raise self.fail(f"key '{key}' is {state}; add it as an integer (see the model's config.json)")
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"key '{key}' must be an integer, got {value!r}; write it as a plain number")
        if value < minimum:
            raise self.fail(f"key '{key}' must be at least {minimum}, got {value}; fix the value")
        limit = MAX_LAYERS if key in _LAYER_KEYS else _MAX_CONFIG_INT
        if value > limit:  # before any loop over it: range(1e308) never ends
            shown = f"{value:,}" if value < 10**15 else f"{float(value):.3g}"
            raise self.fail(f"key '{key}' must be at most {limit:,}, got {shown}; fix the value")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(f"key '{key}' must be true or false, got {value!r}; fix the value")
        return value

    def text(self, key: str, default: str) -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(f"key '{key}' must be a string, got {value!r}; fix the value")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise self.fail(f"key '{key}' must be a list of layer indices, got {value!r}; fix the value")
        return value

    def activation(self, key: str, default: str, *, gated: bool) -> str:
        table = _GATED_ACT if gated else _PLAIN_ACT
        act = self.text(key, default)
        if act not in table:
            raise self.fail(f"key '{key}' = {act!r} is not supported; use one of {', '.join(sorted(table))}")
        return table[act]

    def head_dim(self, hidden: int, heads: int) -> int:
        """``head_dim`` when given (Qwen3 sets 128 with hidden/heads = 64), else hidden/heads."""
        if self.data.get("head_dim") is not None:
            return self.integer("head_dim")
        if hidden % heads:
            raise self.fail(f"hidden_size {hidden} is not a multiple of {heads} heads; add key 'head_dim'")
        return hidden // heads


# --- layer layout -----------------------------------------------------------------------------


def _moe_layout(moe_layers: list[int], num_layers: int) -> tuple[int, int]:
    """``(first_dense_layers, layer_freq)`` of MoESpec for the given MoE layer indices.

    Exact when the MoE layers are every k-th from some layer on (all published models); otherwise
    (scattered ``mlp_only_layers``) the dense layers are put first, which keeps both counts exact
    and moves only their position.
    """
    first = moe_layers[0]
    for freq in range(1, num_layers + 1):
        if moe_layers == list(range(first, num_layers, freq)):
            return first, freq
    return num_layers - len(moe_layers), 1


def _moe(  # noqa: PLR0913
    cfg: _Config, moe_layers: list[int], num_layers: int, experts_key: str, expert_ffn: int,
    shared: int = 0, shared_ffn: int = 0,
) -> MoESpec | None:
    """A MoESpec (None without MoE layers): ``experts_key`` experts of ``expert_ffn``, top-k routed,
    plus ``shared`` shared experts of ``shared_ffn``."""
    if not moe_layers:
        return None
    first, freq = _moe_layout(moe_layers, num_layers)
    groups = cfg.integer("n_group", default=1)  # DeepSeek-V3's group-limited routing
    return MoESpec(
        num_experts=cfg.integer(experts_key), top_k=cfg.integer("num_experts_per_tok"),
        expert_ffn_hidden_size=expert_ffn, num_shared_experts=shared, shared_expert_ffn_hidden_size=shared_ffn,
        first_dense_layers=first, layer_freq=freq,
        expert_groups=groups, groups_per_token=cfg.integer("topk_group", default=0, minimum=0) if groups > 1 else 0,
    )


# --- builders: config.json -> ModelSpec keyword arguments ---------------------------------------


def _llama(cfg: _Config, *, max_pos: int = 2048, head_dim: int | None = None) -> dict[str, Any]:
    """Llama, Mistral and the common core of Mixtral and Qwen: pre-RMSNorm, RoPE, gated MLP.

    ``attention_bias`` alone maps to ``qkv_bias`` (the o_proj bias, ``hidden_size`` parameters a
    layer, is not counted); with ``mlp_bias`` as well it maps to ``linear_bias``.
    """
    hidden, heads = cfg.integer("hidden_size"), cfg.integer("num_attention_heads")
    attention_bias, mlp_bias = cfg.flag("attention_bias", False), cfg.flag("mlp_bias", False)
    return {
        "hidden_size": hidden,
        "num_layers": cfg.integer("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": cfg.integer("num_key_value_heads", default=heads),
        "head_dim": head_dim or cfg.head_dim(hidden, heads),
        "ffn_hidden_size": cfg.integer("intermediate_size"),
        "vocab_size": cfg.integer("vocab_size"),
        "max_seq_len": cfg.integer("max_position_embeddings", default=max_pos),
        "mlp": cfg.activation("hidden_act", "silu", gated=True),
        "tie_embeddings": cfg.flag("tie_word_embeddings", False),
        "linear_bias": attention_bias and mlp_bias,
        "qkv_bias": attention_bias and not mlp_bias,
    }


def _mistral(cfg: _Config) -> dict[str, Any]:
    """Mistral: Llama's layers (sliding-window attention changes no parameter)."""
    return _llama(cfg, max_pos=4096 * 32)


def _mixtral(cfg: _Config) -> dict[str, Any]:
    """Mixtral: every layer MoE, ``num_local_experts`` experts of ``intermediate_size``."""
    spec = _llama(cfg, max_pos=4096 * 32)
    layers = spec["num_layers"]
    spec["moe"] = _moe(cfg, list(range(layers)), layers, "num_local_experts", spec["ffn_hidden_size"])
    return spec


def _qwen2(cfg: _Config) -> dict[str, Any]:
    """Qwen2/Qwen2.5: Llama's layers with a bias on the q, k and v projections."""
    spec = _llama(cfg, max_pos=32768)
    spec.update(qkv_bias=True, linear_bias=False)
    return spec


def _qwen_moe_layers(cfg: _Config, num_layers: int) -> list[int]:
    """MoE layer indices as ``Qwen2MoeDecoderLayer``: not in ``mlp_only_layers``, (i+1) % step == 0."""
    step = cfg.integer("decoder_sparse_step", default=1)
    dense_only = set(cfg.int_list("mlp_only_layers"))
    return [i for i in range(num_layers) if i not in dense_only and (i + 1) % step == 0]


def _qwen2_moe(cfg: _Config) -> dict[str, Any]:
    """Qwen1.5-MoE/Qwen2-MoE: routed experts plus one shared expert of its own size.

    The shared expert's sigmoid gate (``hidden_size`` parameters a layer) is not counted.
    """
    spec = _qwen2(cfg)
    shared = cfg.integer("shared_expert_intermediate_size", default=0, minimum=0)
    layers, expert_ffn = spec["num_layers"], cfg.integer("moe_intermediate_size")
    moe_layers = _qwen_moe_layers(cfg, layers)
    spec["moe"] = _moe(cfg, moe_layers, layers, "num_experts", expert_ffn, int(shared > 0), shared)
    return spec


def _qwen3(cfg: _Config) -> dict[str, Any]:
    """Qwen3 dense: Llama's layers with an explicit ``head_dim`` and no qkv bias.

    The per-head q/k RMSNorms (2 * head_dim parameters a layer) are not counted.
    """
    return _llama(cfg, max_pos=40960)


def _qwen3_moe(cfg: _Config) -> dict[str, Any]:
    """Qwen3-MoE: no shared expert, no qkv bias, explicit ``head_dim``.

    The per-head q/k RMSNorms (2 * head_dim parameters a layer) are not counted.
    """
    spec = _llama(cfg, max_pos=32768)
    layers, expert_ffn = spec["num_layers"], cfg.integer("moe_intermediate_size")
    spec["moe"] = _moe(cfg, _qwen_moe_layers(cfg, layers), layers, "num_experts", expert_ffn)
    return spec


def _phi3(cfg: _Config) -> dict[str, Any]:
    """Phi-3/Phi-3.5/Phi-4 (``Phi3ForCausalLM``): Llama's layers with q, k, v fused into one
    ``qkv_proj`` and gate and up into one ``gate_up_proj`` (the same parameters, fewer GEMMs)."""
    return _llama(cfg, max_pos=4096)


def _gemma(cfg: _Config, *, max_pos: int = 8192) -> dict[str, Any]:
    """Gemma 2 and 3 text models: GeGLU MLP (``hidden_activation``, the tanh GeLU), an explicit
    ``head_dim``, tied embeddings (``tie_word_embeddings`` defaults to true in Gemma2Config).

    Not counted: the two extra RMSNorms a layer (pre- and post-feed-forward norms beside the
    input and post-attention ones, 2 * hidden_size parameters a layer) and Gemma 3's per-head
    q/k norms (2 * head_dim); logit soft-capping and sliding windows change no parameter.
    """
    spec = _llama(cfg, max_pos=max_pos)
    key = "hidden_activation" if cfg.data.get("hidden_activation") is not None else "hidden_act"
    spec.update(mlp=cfg.activation(key, "gelu_pytorch_tanh", gated=True),
                tie_embeddings=cfg.flag("tie_word_embeddings", True))
    return spec


def _nested_text(cfg: _Config) -> _Config:
    """The language model's config of a multimodal checkpoint (``text_config``), or the config."""
    text = cfg.data.get("text_config")
    if text is None:
        return cfg
    if not isinstance(text, Mapping):
        raise cfg.fail(f"key 'text_config' must be an object, got {text!r}")
    return _Config(text, f"{cfg.where} text_config")


def _gemma3(cfg: _Config) -> dict[str, Any]:
    """Gemma 3 (``Gemma3ForConditionalGeneration``: the text model in ``text_config``; the
    vision tower, SigLIP, is not counted) and ``gemma3_text`` (1B)."""
    return _gemma(_nested_text(cfg), max_pos=131072)


def _gpt_oss(cfg: _Config) -> dict[str, Any]:
    """gpt-oss (OpenAI 2025): every layer MoE, ``num_local_experts`` experts of
    ``intermediate_size`` (SwiGLU), top ``num_experts_per_tok``, grouped-query attention with
    biases on q, k, v (``attention_bias``), untied embeddings.

    Not counted: the o_proj bias and the attention sinks (hidden_size + heads a layer), the
    experts' own biases (3 * intermediate_size a layer and expert: 0.03% of gpt-oss-20b) and the
    router bias; alternating sliding-window layers change no parameter.
    """
    spec = _llama(cfg, max_pos=131072)
    spec.update(qkv_bias=cfg.flag("attention_bias", True), linear_bias=False)
    layers = spec["num_layers"]
    spec["moe"] = _moe(cfg, list(range(layers)), layers, "num_local_experts", spec["ffn_hidden_size"])
    return spec


def _llama4(cfg: _Config) -> dict[str, Any]:
    """Llama 4 (``Llama4ForConditionalGeneration``; the text model in ``text_config``, the vision
    encoder not counted): MoE every ``interleave_moe_layer_step``-th layer (layer i when
    (i + 1) % step == 0, as Llama4TextDecoderLayer), ``num_local_experts`` routed experts of
    ``intermediate_size`` plus one shared expert of the same size, and dense layers of
    ``intermediate_size_mlp``.

    Not counted: the router of each MoE layer (hidden_size x experts) is counted by the MoE
    terms; the per-head q/k L2 norms have no parameters; chunked attention changes no parameter.
    """
    text = _nested_text(cfg)
    spec = _llama(text, max_pos=131072)
    layers, expert_ffn = spec["num_layers"], spec["ffn_hidden_size"]
    step = text.integer("interleave_moe_layer_step", default=1)
    moe_layers = [i for i in range(layers) if (i + 1) % step == 0]
    spec["ffn_hidden_size"] = text.integer("intermediate_size_mlp", default=expert_ffn)
    spec["moe"] = _moe(text, moe_layers, layers, "num_local_experts", expert_ffn, 1, expert_ffn)
    return spec


def _deepseek(cfg: _Config) -> dict[str, Any]:
    """DeepSeek-V2/V3: MLA attention, ``first_k_dense_replace`` dense layers, then MoE layers.

    The multi-token-prediction module (``num_nextn_predict_layers``) is not part of the model
    counted: DeepSeek-V3 is 671B total / 37B active without its 14B MTP weights (DeepSeek-V3
    technical report, section 4.2 and the README). The router's score-correction bias (one number
    per expert and layer) is not counted. ``head_dim`` is set to the query-key head dimension.
    """
    nope, rope = cfg.integer("qk_nope_head_dim"), cfg.integer("qk_rope_head_dim")
    spec = _llama(cfg, max_pos=4096, head_dim=nope + rope)
    num_layers = spec["num_layers"]
    first = cfg.integer("first_k_dense_replace", default=0, minimum=0)
    freq = cfg.integer("moe_layer_freq", default=1)
    moe_layers: list[int] = []
    if cfg.data.get("n_routed_experts") is not None:  # as DeepseekV3DecoderLayer
        moe_layers = [i for i in range(first, num_layers) if i % freq == 0]
    ffn = cfg.integer("moe_intermediate_size") if moe_layers else 1
    shared = cfg.integer("n_shared_experts", default=0, minimum=0)
    spec["moe"] = _moe(cfg, moe_layers, num_layers, "n_routed_experts", ffn, shared, ffn if shared else 0)
    spec["mla"] = MLASpec(
        q_lora_rank=cfg.integer("q_lora_rank", default=0, minimum=0), kv_lora_rank=cfg.integer("kv_lora_rank"),
        qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=cfg.integer("v_head_dim"),
    )
    spec["num_kv_heads"] = spec["num_heads"]  # MLA: every head has its own (decompressed) K and V
    return spec


def _gpt2(cfg: _Config) -> dict[str, Any]:
    """GPT-2: learned positions, pre-LayerNorm, GeLU MLP of ``n_inner`` (default 4h), biases, tied."""
    hidden, heads = cfg.integer("n_embd", "hidden_size"), cfg.integer("n_head", "num_attention_heads")
    return {
        "hidden_size": hidden,
        "num_layers": cfg.integer("n_layer", "num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": cfg.head_dim(hidden, heads),
        "ffn_hidden_size": cfg.integer("n_inner", default=4 * hidden),
        "vocab_size": cfg.integer("vocab_size"),
        "max_seq_len": cfg.integer("n_positions", "max_position_embeddings", default=1024),
        "mlp": cfg.activation("activation_function", "gelu_new", gated=False),
        "norm": "layernorm",
        "position_embedding": "learned",
        "tie_embeddings": cfg.flag("tie_word_embeddings", True),
        "linear_bias": True,
    }


def _gpt_neox(cfg: _Config) -> dict[str, Any]:
    """GPT-NeoX/Pythia: rotary, two LayerNorms a layer, parallel residual when
    ``use_parallel_residual`` (default true), biases, untied embeddings."""
    spec = _llama(cfg)
    spec.update(
        max_seq_len=cfg.integer("max_position_embeddings", default=2048),
        mlp=cfg.activation("hidden_act", "gelu", gated=False),
        norm="layernorm",
        linear_bias=cfg.flag("attention_bias", True),
        qkv_bias=False,
        parallel_attention=cfg.flag("use_parallel_residual", True),
        parallel_attention_norms=2,
    )
    return spec


def _gptj(cfg: _Config) -> dict[str, Any]:
    """GPT-J: attention and MLP in parallel after one LayerNorm, rotary, untied embeddings.

    Approximation: GPT-J has biases on the MLP and the LM head but none on q, k, v and out;
    ModelSpec has no such field, so ``linear_bias`` is set (closest total: +4h per layer, and the
    vocab-sized LM-head bias is not counted; +0.007% for GPT-J-6B).
    """
    spec = _gpt2(cfg)
    spec.update(
        max_seq_len=cfg.integer("n_positions", "max_position_embeddings", default=2048),
        position_embedding="rope",
        tie_embeddings=cfg.flag("tie_word_embeddings", False),
        parallel_attention=True,
        parallel_attention_norms=1,
    )
    return spec


def _opt(cfg: _Config) -> dict[str, Any]:
    """OPT: learned positions, LayerNorm, ReLU MLP of ``ffn_dim``, biases, tied embeddings.

    Approximation: OPT's position table has ``max_position_embeddings + 2`` rows (an offset of
    2); the 2 * hidden_size extra parameters are not counted, so that ``max_seq_len`` stays the
    usable context length.
    """
    hidden, heads = cfg.integer("hidden_size"), cfg.integer("num_attention_heads")
    if cfg.integer("word_embed_proj_dim", default=hidden) != hidden:
        raise cfg.fail(
            "word_embed_proj_dim differs from hidden_size (OPT-350m's projected embeddings), "
            "which is not supported; use another OPT size"
        )
    return {
        "hidden_size": hidden,
        "num_layers": cfg.integer("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": cfg.head_dim(hidden, heads),
        "ffn_hidden_size": cfg.integer("ffn_dim"),
        "vocab_size": cfg.integer("vocab_size"),
        "max_seq_len": cfg.integer("max_position_embeddings", default=2048),
        "mlp": cfg.activation("activation_function", "relu", gated=False),
        "norm": "layernorm",
        "position_embedding": "learned",
        "tie_embeddings": cfg.flag("tie_word_embeddings", True),
        "linear_bias": cfg.flag("enable_bias", True),
    }


def _falcon(cfg: _Config, *, new_arch_default: bool = False) -> dict[str, Any]:
    """Falcon (and the older ``RefinedWeb``/``RefinedWebModel`` configs).

    ``new_decoder_architecture`` (40B, 180B): grouped KV heads (``num_kv_heads``), attention and
    MLP in parallel, each with its own LayerNorm (``num_ln_in_parallel_attn``, default 2). Older
    (7B): ``multi_query`` gives one KV head, ``parallel_attn`` one shared LayerNorm. GeLU MLP of
    ``ffn_hidden_size`` (default 4h), rotary unless ``alibi``, biases only if ``bias``. Word
    embeddings are tied (``tie_word_embeddings`` defaults to true in ``FalconConfig``).
    """
    hidden = cfg.integer("hidden_size", "n_embed")
    heads = cfg.integer("num_attention_heads", "n_head")
    if cfg.flag("new_decoder_architecture", new_arch_default):
        kv = cfg.integer("num_kv_heads", "n_head_kv", default=heads)
        parallel, norms = True, cfg.integer("num_ln_in_parallel_attn", default=2)
    else:
        kv = 1 if cfg.flag("multi_query", True) else heads
        parallel, norms = cfg.flag("parallel_attn", True), 1
    return {
        "hidden_size": hidden,
        "num_layers": cfg.integer("num_hidden_layers", "n_layer"),
        "num_heads": heads,
        "num_kv_heads": kv,
        "head_dim": cfg.head_dim(hidden, heads),
        "ffn_hidden_size": cfg.integer("ffn_hidden_size", default=4 * hidden),
        "vocab_size": cfg.integer("vocab_size"),
        "max_seq_len": cfg.integer("max_position_embeddings", default=2048),
        "mlp": cfg.activation("activation", "gelu", gated=False),
        "norm": "layernorm",
        "position_embedding": "alibi" if cfg.flag("alibi", False) else "rope",
        "tie_embeddings": cfg.flag("tie_word_embeddings", True),
        "linear_bias": cfg.flag("bias", False),
        "parallel_attention": parallel,
        "parallel_attention_norms": norms if parallel else 1,
    }


def _bloom(cfg: _Config) -> dict[str, Any]:
    """BLOOM: ALiBi positions, LayerNorm (plus one after the embedding, not counted), a GeLU MLP
    of 4h, biases, tied embeddings (Le Scao et al. 2022, section 3.2)."""
    hidden = cfg.integer("hidden_size", "n_embed")
    heads = cfg.integer("num_attention_heads", "n_head")
    return {
        "hidden_size": hidden,
        "num_layers": cfg.integer("num_hidden_layers", "n_layer"),
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": cfg.head_dim(hidden, heads),
        "ffn_hidden_size": 4 * hidden,
        "vocab_size": cfg.integer("vocab_size"),
        "max_seq_len": cfg.integer("seq_length", default=2048),
        "mlp": "gelu",
        "norm": "layernorm",
        "position_embedding": "alibi",
        "tie_embeddings": True,
        "linear_bias": True,
    }


_BUILDERS: dict[str, Callable[[_Config], dict[str, Any]]] = {
    "bloom": _bloom,
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": _qwen2_moe,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "phi3": _phi3,
    "gemma2": _gemma,
    "gemma3": _gemma3,
    "gemma3_text": _gemma3,
    "gpt_oss": _gpt_oss,
    "llama4": _llama4,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "gptj": _gptj,
    "opt": _opt,
    "falcon": _falcon,
    "RefinedWebModel": _falcon,
    "RefinedWeb": lambda cfg: _falcon(cfg, new_arch_default=True),
}


def supported_model_types() -> list[str]:
    """The ``model_type`` values :func:`model_from_hf_config` understands."""
    return sorted(_BUILDERS)


# --- entry point --------------------------------------------------------------------------------


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message


def _read(path: Path) -> tuple[dict[str, Any], Path]:
    """The parsed config.json at ``path`` (a file, or a folder holding ``config.json``)."""
    def fail(message: str) -> ConfigImportError:
        return ConfigImportError(f"{path}: {message}", field="model")

    try:
        if path.is_dir():
            path = path / "config.json"
        found = path.exists()
    except (OSError, ValueError) as err:
        raise fail(f"not a usable path ({getattr(err, 'strerror', None) or err})") from None
    if not found:
        raise fail("file not found; give the path of a HuggingFace config.json")
    text = read_user_text(path, field="model", kind="config.json", error=ConfigImportError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); fix the file") from None
    if not isinstance(data, dict):
        raise fail(f"must hold a JSON object (a HuggingFace config.json), got a {type(data).__name__}")
    return data, path


def model_from_hf_config(source: str | Path | Mapping[str, Any], name: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from a HuggingFace config.json: a file, a folder holding one, or its
    parsed dict. ``name`` defaults to the file's stem (its folder's name for ``config.json``), or
    for a dict to its ``_name_or_path`` or ``model_type``.

    Raises :class:`ConfigImportError` (one line naming the file and key) for anything it cannot
    read or does not support.
    """
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
        name = name or str(data.get("_name_or_path") or data.get("model_type") or "hf-model")
        label = name
    else:
        data, path = _read(Path(source))
        name = name or (path.parent.resolve().name if path.name == "config.json" else path.stem)
        label = str(path)
    cfg = _Config(data, label)
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in _BUILDERS:
        problem = "key 'model_type' is missing" if model_type is None else f"model_type {model_type!r} is not supported"
        raise cfg.fail(f"{problem}; use one of: {', '.join(supported_model_types())}")
    try:
        fields = _BUILDERS[model_type](cfg)
        return ModelSpec(name=name, source=f"HuggingFace config.json: {label}", **fields)
    except ValidationError as exc:  # ModelSpec, MoESpec or MLASpec: a value out of range
        raise cfg.fail(f"{_first_error(exc)}; fix the config.json keys it comes from") from None
