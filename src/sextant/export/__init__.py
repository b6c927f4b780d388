"""Ready-to-run launch configurations for the frameworks a plan's answer is for (see
:mod:`sextant.export.launch` for the formats and how each is checked). Importing this package is
cheap (the CLI names the formats at start-up); the exporters load when called."""

from __future__ import annotations

from typing import Any

#: ``sextant export`` formats of a training scenario and of a serving scenario.
TRAIN_FORMATS = ("megatron", "torchtitan", "deepspeed")
SERVE_FORMATS = ("vllm", "sglang", "trtllm")
#: The preset that predicts each format's framework (frameworks.yaml, serving_frameworks.yaml),
#: and whose search limits are what that framework runs: named where an export was predicted
#: with another.
PRESETS = {"megatron": "megatron-core-2024", "torchtitan": "torchtitan-2024", "deepspeed": "deepspeed-zero3-2024",
           "vllm": "vllm-v1-0.15", "sglang": "sglang-2025", "trtllm": "trtllm-inflight-2025"}

__all__ = ["PRESETS", "SERVE_FORMATS", "TRAIN_FORMATS", "ExportError", "LaunchConfig", "export_serve", "export_train"]


def export_train(scenario, fmt: str):
    """The launch (:class:`LaunchConfig`) of training ``scenario`` in framework ``fmt``."""
    from sextant.export.deepspeed import export_deepspeed
    from sextant.export.job import train_job
    from sextant.export.megatron import export_megatron
    from sextant.export.torchtitan import export_torchtitan

    exporters = {"megatron": export_megatron, "torchtitan": export_torchtitan, "deepspeed": export_deepspeed}
    if fmt not in exporters:
        raise _unknown(fmt, TRAIN_FORMATS, "training")
    return exporters[fmt](train_job(scenario))


def export_serve(scenario, fmt: str):
    """The launch (:class:`LaunchConfig`) of serving ``scenario`` in engine ``fmt``."""
    from sextant.export.serving import export_serving

    if fmt not in SERVE_FORMATS:
        raise _unknown(fmt, SERVE_FORMATS, "serving")
    return export_serving(scenario, fmt)


def _unknown(fmt: str, known: tuple[str, ...], kind: str):
    from sextant.errors import SpecError

    other = "serving" if kind == "training" else "training"
    hint = f" ({fmt} exports a {other} scenario)" if fmt in TRAIN_FORMATS + SERVE_FORMATS else ""
    return SpecError(f"'{fmt}' is not a {kind} format; choose {', '.join(known)}{hint}", field="format")


def __getattr__(name: str) -> Any:
    if name in ("ExportError", "LaunchConfig"):
        from sextant.export import launch

        return getattr(launch, name)
    raise AttributeError(f"module 'sextant.export' has no attribute {name!r}")
