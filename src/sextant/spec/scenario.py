"""A training scenario: which model, on which hardware, run how. Read from YAML or built from
CLI flags; both pass through the same pydantic model, so unknown keys are errors either way."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import Field, ValidationError

from sextant.errors import ScenarioError
from sextant.files import parse_yaml, read_user_text
from sextant.spec.base import Spec
from sextant.spec.limits import MAX_GPUS, MAX_MEMORY_GIB
from sextant.spec.model import ModelSpec
from sextant.spec.strategy import Strategy
from sextant.spec.workload import TrainWorkload

S = TypeVar("S", bound=Spec)


class HardwareRef(Spec):
    """Hardware by catalog names: the GPU implies its usual node unless ``node`` names one."""

    gpu: str = "h100-sxm"
    gpus: int = Field(default=8, gt=0, le=MAX_GPUS)
    gpus_per_node: int | None = Field(default=None, gt=0)
    node: str | None = None
    network: str | None = None
    nics_per_node: int | None = Field(default=None, gt=0)
    profile: str | None = Field(default=None, description="Path of a hardware profile JSON.")
    #: Usable device memory per GPU, when less than the datasheet's (a MIG slice, a budget, or a
    #: published "fits in X GB" claim to check).
    gpu_memory_gib: float | None = Field(default=None, gt=0, le=MAX_MEMORY_GIB)


class TrainScenario(Spec):
    """``model`` is a catalog name, a path to a HuggingFace config.json, or an inline spec."""

    model: str | ModelSpec = "llama-3.1-8b"
    #: Framework preset (catalog/data/frameworks.yaml): fills the strategy and workload fields
    #: this scenario leaves unset (kernels, overlap, dropout) and states its kernel efficiency.
    framework: str | None = None
    hardware: HardwareRef = HardwareRef()
    strategy: Strategy = Strategy()
    workload: TrainWorkload = TrainWorkload()


#: Tags pydantic puts in an error's location for the branch of a union (``model: str | ModelSpec``).
_UNION_TAGS = {"str", "ModelSpec", "MoESpec", "MLASpec"}


def _most_useful(errors: list) -> dict:
    """The error a person should see first: an unknown key, else the deepest location, and never
    the "should be a string" of the union branch the input plainly was not meant for."""
    def rank(e):
        loc = [str(p) for p in e["loc"]]
        return (e["type"] != "extra_forbidden", bool(loc) and loc[-1] in _UNION_TAGS, -len(loc))

    return min(errors, key=rank)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """The most useful problem of a pydantic error as one line: ``field.path: message``."""
    first = _most_useful(err.errors())
    loc = ".".join(str(p) for p in first["loc"] if str(p) not in _UNION_TAGS)
    loc = f"{prefix}{loc}" if loc else prefix.rstrip(".")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; docs/scenario-keys.md lists the keys)"
    elif first["type"] == "value_error":  # a check across keys: its message names them
        msg = msg.removeprefix("Value error, ")
    elif "input" in first and first["type"] not in ("missing",):
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    return f"{loc}: {msg}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def default_train_scenario_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("sextant").joinpath("scenarios", "default-train.yaml")))


def base_tree(scenario: Path | None, model: str | None, gpu: str | None) -> dict[str, Any]:
    """What CLI flags are applied over: the scenario file if one is given; else, when neither the
    model nor the GPU is named, the built-in default scenario (so ``--gpus 16`` alone varies it);
    else nothing, so that the spec defaults (not the default scenario's choices) fill the rest."""
    if scenario is not None:
        return load_scenario(scenario).model_dump(exclude_unset=True)
    if model is None and gpu is None:
        return load_scenario(default_train_scenario_path()).model_dump(exclude_unset=True)
    return {}


#: CLI flags whose names differ from their scenario keys, by (section, key).
RENAMED_FLAGS = {("offload", "weights"): "--offload-weights", ("offload", "kv_cache"): "--offload-kv",
                 ("offload", "micro_batches"): "--offload-micro-batches", ("offload", "pinned"): "--pageable",
                 ("speculative", "num_tokens"): "--spec-tokens", ("speculative", "target_device"): "--spec-target",
                 ("slo", "ttft_ms"): "--ttft-slo", ("slo", "tpot_ms"): "--tpot-slo"}


def flag_of(section: str, key: str) -> str:
    """The CLI flag that sets ``section.key`` of a scenario (``--offload-kv`` for offload.kv_cache)."""
    return RENAMED_FLAGS.get((section, key)) or "--" + key.replace("_", "-")


def validate_tree(model: type[S], data: dict[str, Any], source: str = "scenario", *, from_flags: bool = False) -> S:
    """Validate a scenario tree as ``model``. ``from_flags``: name the offending CLI flag
    (``--tp``) rather than its path in the scenario (``strategy.tp``)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        if from_flags:
            first = err.errors()[0]
            loc = tuple(str(p) for p in first["loc"])
            if first["type"] == "value_error" and loc and isinstance(data.get(loc[0]), dict) and len(loc) == 1:
                # a check across a section's keys (no single flag): name the section
                raise ScenarioError(first["msg"].removeprefix("Value error, "), field=loc[0]) from None
            flag = flag_of(*loc[-2:]) if len(loc) >= 2 else ("--" + loc[-1].replace("_", "-") if loc else source)
            got = f" (got {first['input']!r})" if "input" in first else ""
            raise ScenarioError(f"{first['msg']}{got}", field=flag) from None
        raise ScenarioError(format_validation_error(err), field=source) from None


def read_tree(path: str | Path, keys: str) -> dict[str, Any]:
    """The mapping a scenario YAML file holds; ``keys`` names its sections for the error."""
    path = Path(path)
    text = read_user_text(path, field="scenario", kind="scenario", error=ScenarioError)
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ScenarioError(f"{path} is not valid YAML{where}", field="scenario") from None
    if data is None:  # an empty file: every default (tests/test_scenario.py)
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{path} must hold a mapping of keys ({keys})", field="scenario")
    return data


def parse_scenario(data: dict[str, Any], source: str = "scenario", *, from_flags: bool = False) -> TrainScenario:
    return validate_tree(TrainScenario, data, source, from_flags=from_flags)


def load_scenario(path: str | Path) -> TrainScenario:
    return parse_scenario(read_tree(path, "model, hardware, strategy, workload"), source=str(path))
