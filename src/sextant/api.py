"""Sextant's Python API: the questions the CLI answers, as functions that return typed results.

Each function takes a scenario and keyword overrides:

- the scenario is a scenario object (:class:`~sextant.spec.scenario.TrainScenario`,
  :class:`~sextant.spec.serving.ServeScenario`), a mapping shaped like the YAML file, the path of
  a YAML file, or nothing (training: the built-in default scenario; serving: the spec defaults);
- each override is a scenario key, put in the section that has it (``gpus=16`` in ``hardware``,
  ``tp=2`` in ``strategy`` or ``deployment``, ``global_batch=256`` in ``workload``), or a whole
  section as a mapping merged over the scenario's (``workload={"seq_len": 8192}``).

Errors are the CLI's: a :class:`~sextant.errors.SextantError` whose ``field`` names the key.
docs/api.md shows each function; its examples run as tests (tests/test_api_docs.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from sextant.errors import SpecError
from sextant.spec.scenario import TrainScenario, base_tree, load_scenario, parse_scenario
from sextant.spec.serving import ServeScenario, default_gpus, load_serve_scenario, parse_serve_scenario

ScenarioLike = BaseModel | Mapping[str, Any] | str | Path | None


def _sections(kind: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The scenario's sections: its fields whose values are spec models (hardware, strategy...)."""
    found = {}
    for name, field in kind.model_fields.items():
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and name != "model":
                found[name] = candidate
    return found


def _tree(kind: type[BaseModel], scenario: ScenarioLike, loader) -> dict[str, Any]:
    if scenario is None:
        return base_tree(None, None, None) if kind is TrainScenario else {}
    if isinstance(scenario, kind):
        return scenario.model_dump(exclude_unset=True)
    if isinstance(scenario, (str, Path)):
        return loader(scenario).model_dump(exclude_unset=True)
    if isinstance(scenario, Mapping):
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in scenario.items()}
    raise SpecError(f"a scenario is a {kind.__name__}, a mapping or a YAML path, not a {type(scenario).__name__}",
                    field="scenario")


def _apply(kind: type[BaseModel], tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` placed in ``tree``: a key in the one section that has it, a section merged."""
    sections = _sections(kind)
    top = set(kind.model_fields) - set(sections)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in sections and isinstance(value, Mapping):
            current = tree.get(key)
            tree[key] = {**(current if isinstance(current, dict) else {}), **value}
            continue
        if key in top:
            tree[key] = value
            continue
        homes = [name for name, section in sections.items() if key in section.model_fields]
        if len(homes) == 1:
            section = tree.get(homes[0])
            tree[homes[0]] = {**(section if isinstance(section, dict) else {}), key: value}
        elif homes:
            raise SpecError(f"{key} is a key of {' and '.join(homes)}; pass it inside one, e.g. "
                            f"{homes[0]}={{{key!r}: ...}}", field=key)
        else:
            known = sorted(top | set(sections) | {k for s in sections.values() for k in s.model_fields})
            close = difflib.get_close_matches(key, known, n=3)
            raise SpecError("not a scenario key" + (f"; did you mean {', '.join(close)}?" if close else ""),
                            field=key)
    return tree


def train_scenario(scenario: ScenarioLike = None, **overrides: Any) -> TrainScenario:
    """The training scenario ``scenario`` with ``overrides`` applied, validated."""
    tree = _apply(TrainScenario, _tree(TrainScenario, scenario, load_scenario), overrides)
    return parse_scenario(tree, source="scenario")


def serve_scenario(scenario: ScenarioLike = None, **overrides: Any) -> ServeScenario:
    """The serving scenario ``scenario`` with ``overrides`` applied, validated; ``hardware.gpus``
    defaults to what the replicas need, as on the command line."""
    tree = _apply(ServeScenario, _tree(ServeScenario, scenario, load_serve_scenario), overrides)
    default_gpus(tree)
    return parse_serve_scenario(tree)


def predict_train(scenario: ScenarioLike = None, **overrides: Any):
    """Time, throughput, MFU, memory per GPU and the bottleneck of one training configuration
    (``sextant predict train``); returns a :class:`~sextant.train.result.TrainResult`."""
    from sextant.train.predict import predict_train as predict

    return predict(train_scenario(scenario, **overrides))


def plan_train(scenario: ScenarioLike = None, *, gpu_counts: int | list[int] | None = None,
               objective: Literal["throughput", "time-to-train", "cost", "energy"] = "throughput", top: int = 5,
               tokens: float | None = None, price_per_gpu_hour: float | None = None, **overrides: Any):
    """The best layouts of a training job on each of ``gpu_counts`` GPUs (default: the
    scenario's count), as ``sextant plan train``; returns a :class:`~sextant.plan.search.PlanResult`."""
    from sextant.plan.search import plan_train as plan

    parsed = train_scenario(scenario, **overrides)
    counts = [gpu_counts] if isinstance(gpu_counts, int) else list(gpu_counts or [parsed.hardware.gpus])
    return plan(parsed, counts, objective=objective, top_k=top, tokens=tokens, price_per_gpu_hour=price_per_gpu_hour)


def predict_serve(scenario: ScenarioLike = None, **overrides: Any):
    """Throughput and TTFT/TPOT/end-to-end percentiles of one serving deployment, simulated
    request by request (``sextant predict serve``); returns a
    :class:`~sextant.serve.predict.ServeResult`."""
    from sextant.serve.predict import predict_serve as predict

    return predict(serve_scenario(scenario, **overrides))


def plan_serve(scenario: ScenarioLike = None, *, rate: float | None = None,  # noqa: PLR0913
               gpu_types: list[str] | None = None, percentile: float = 0.99, prices: dict[str, float] | None = None,
               precisions: list[str] | None = None, top: int = 5, **overrides: Any):
    """Without ``rate``: the placements and batches with the highest offline throughput (a
    :class:`~sextant.plan.serve_search.ServePlan`). With ``rate`` (requests per second) and an SLO
    (``ttft_ms``/``tpot_ms``): the fewest or cheapest GPUs of ``gpu_types`` that serve it (a
    :class:`~sextant.plan.serve_capacity.CapacityPlan`), as ``sextant plan serve --rate``; with
    ``precisions`` (e.g. ``["bf16", "fp8"]``) each GPU type's cheapest weight precision among them."""
    base = serve_scenario(scenario, **overrides)
    if rate is None:
        from sextant.plan.serve_search import plan_serve as plan

        return plan(base, top=top)
    from sextant.plan.serve_capacity import plan_capacity

    return plan_capacity(base, rate, gpu_types or [base.hardware.gpu], percentile=percentile, prices=prices or {},
                         precisions=precisions)


def export_train(fmt: str, scenario: ScenarioLike = None, *, choice=None, **overrides: Any):
    """The launch of a training scenario in framework ``fmt`` (``megatron``, ``torchtitan``,
    ``deepspeed``), as ``sextant export`` writes it; ``choice``: a row of a plan
    (``plan.best``), whose GPUs and strategy replace the scenario's. Returns a
    :class:`~sextant.export.launch.LaunchConfig` (``.script()`` is the bash script)."""
    from sextant.export import export_train as export

    parsed = train_scenario(scenario, **overrides)
    if choice is not None:
        from sextant.plan.search import chosen_scenario

        parsed = chosen_scenario(parsed, choice)
    return export(parsed, fmt)


def export_serve(fmt: str, scenario: ScenarioLike = None, *, choice=None, **overrides: Any):
    """The launch of a serving scenario in engine ``fmt`` (``vllm``, ``sglang``, ``trtllm``);
    ``choice``: what a serving plan chose, its ``best_policy`` or (with a rate) the plan itself.
    Returns a :class:`~sextant.export.launch.LaunchConfig`."""
    from sextant.export import export_serve as export
    from sextant.plan.serve_capacity import CapacityPlan

    parsed = serve_scenario(scenario, **overrides)
    if isinstance(choice, CapacityPlan):
        from sextant.plan.serve_capacity import chosen_scenario

        parsed = chosen_scenario(parsed, choice)
    elif choice is not None:
        from sextant.plan.serve_search import chosen_scenario

        parsed = chosen_scenario(parsed, choice)
    return export(parsed, fmt)


#: The ledgers :func:`validate_ledger` replays, by the name ``sextant validate`` gives them.
LEDGERS = ("train", "serve", "serve-latency", "memory", "offload", "plan", "sweep", "kv-capacity")


def validate_ledger(ledger: str = "train", path: str | Path | None = None):
    """Replay a ledger of published runs (``sextant validate <ledger>``) and return its report:
    each row's prediction, the measured value and the error, held out where the ledger is
    cross-validated. ``path`` replaces the built-in ledger with a YAML file of the same rows."""
    from sextant.validate import (
        crossval,
        kv_capacity,
        memory,
        offload_ledger,
        rediscover,
        serve,
        serve_latency,
        sweep,
    )

    runners = {
        "train": lambda: crossval.validate_training_cv(path),
        "serve": lambda: serve.validate_serving(path),
        "serve-latency": lambda: serve_latency.validate_serving_latency(path),
        "memory": lambda: memory.validate_memory(path),
        "offload": lambda: offload_ledger.validate_offload(path),
        "plan": lambda: rediscover.rediscover(path),
        "sweep": lambda: sweep.validate_sweeps(path),
        "kv-capacity": lambda: kv_capacity.cross_validate_kv(),
    }
    if ledger not in runners:
        raise SpecError(f"no ledger {ledger!r}; one of {', '.join(LEDGERS)}", field="ledger")
    if ledger == "kv-capacity" and path is not None:
        raise SpecError("the KV-capacity ledger is built in; it takes no path", field="path")
    return runners[ledger]()


__all__ = ["LEDGERS", "export_serve", "export_train", "plan_serve", "plan_train", "predict_serve", "predict_train",
           "serve_scenario", "train_scenario", "validate_ledger"]
