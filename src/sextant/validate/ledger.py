"""The training ledger: published runs with their configuration, citation and assumptions."""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, model_validator

from sextant.catalog.frameworks import get_framework
from sextant.errors import ScenarioError
from sextant.files import parse_yaml, read_user_text
from sextant.resolve.layout import resolve_dp
from sextant.spec.base import Spec
from sextant.spec.scenario import TrainScenario, format_validation_error
from sextant.spec.strategy import Strategy

R = TypeVar("R", bound=Spec)

SearchedKnob = Literal["tp", "pp", "micro_batch", "zero"]
#: Metrics where higher is better (a searched row takes the highest that fits).
THROUGHPUT_METRICS = ("megatron_tflops_per_gpu", "model_tflops_per_gpu", "mfu", "hfu", "tokens_per_s_per_gpu",
                      "zero_infinity_tflops_per_gpu")
Metric = Literal["step_time_s", "megatron_tflops_per_gpu", "model_tflops_per_gpu", "mfu", "hfu", "tokens_per_s_per_gpu",
                 "zero_infinity_tflops_per_gpu", "fits", "min_gpus_without_offload"]


class CitedRow(Spec):
    """What every row of every ledger states: where it comes from, and what was assumed where
    the source is silent."""

    id: str
    source: str
    url: str | None = None
    assumptions: list[str] = []
    notes: str = ""
    #: Rows (and sweeps) with one key come from one independent source (a paper, a team's
    #: measurements): cross-validation holds them out together. Default: the id's letter prefix.
    source_key: str | None = None

    @property
    def group(self) -> str:
        return self.source_key or self.id.rstrip("0123456789")


class PublishedRow(CitedRow):
    """A published figure with the hardware and framework it ran on."""

    model: str
    gpu: str
    gpus: int = Field(gt=0)
    framework: str
    published: float = Field(gt=0)


class LedgerRow(PublishedRow):
    gpus_per_node: int | None = None
    node: str | None = None
    network: str | None = None
    nics_per_node: int | None = None
    gpu_memory_gib: float | None = None
    strategy: dict[str, Any]
    workload: dict[str, Any]
    metric: Metric
    #: ``chosen``: the configuration its authors ran as their own; ``baseline``: one their source
    #: published in order to beat it (the weaker side of the paper's comparison, such as ZeRO-3
    #: against PTD-P in SC21 Table 2). Rediscovery counts the two apart: a good planner ranks a
    #: chosen configuration high and a baseline below what beat it.
    role: Literal["chosen", "baseline"] = "chosen"
    #: The row measured on the same setup with one thing changed (precision, eager or compiled,
    #: layout, GPU): ``validate train`` checks the predicted order and ratio of the two.
    pair: str | None = None
    #: ``min_gpus_without_offload`` rows: the GPU counts the planner tries, smallest first.
    gpu_counts: list[int] = []
    #: Strategy knobs the source leaves open, searched: the prediction is the configuration that
    #: fits with the highest value of the (throughput) metric, since a headline figure is its
    #: authors' tuned run. With ``micro_batch`` searched, each step runs one micro-batch per
    #: data-parallel rank (global batch = dp x micro-batch).
    search: dict[SearchedKnob, list[int]] = {}

    @model_validator(mode="after")
    def _searchable(self) -> LedgerRow:
        if self.search and self.metric not in THROUGHPUT_METRICS:
            raise ValueError(f"search needs a throughput metric ({', '.join(THROUGHPUT_METRICS)}), not {self.metric}")
        if "dp" in self.strategy and self.search:
            raise ValueError("a searched row leaves dp out: it is gpus / (tp x pp x cp)")
        return self

    def searched(self) -> list[tuple[dict[str, int], LedgerRow]]:
        """Each combination of the searched knobs and the row it makes (the row itself if none)."""
        if not self.search:
            return [({}, self)]
        keys = list(self.search)
        rows = []
        for values in itertools.product(*self.search.values()):
            knobs = dict(zip(keys, values))
            strategy = {**self.strategy, **knobs}
            workload = dict(self.workload)
            if "micro_batch" in knobs:
                workload["global_batch"] = resolve_dp(Strategy.model_validate(strategy), self.gpus) * knobs["micro_batch"]
            rows.append((knobs, self.model_copy(update={"strategy": strategy, "workload": workload, "search": {}})))
        return rows

    def scenario(self) -> TrainScenario:
        """The row as a scenario; its framework preset fills what the row leaves unset."""
        return scenario_of(self, self.model, self.gpus, self.strategy, self.workload, f"ledger row {self.id}")


def scenario_of(row: PublishedRow, model: Any, gpus: int, strategy: dict[str, Any], workload: dict[str, Any],
                where: str) -> TrainScenario:
    """A scenario on ``row``'s hardware and framework (a ledger row's, or a sweep's) with the given
    model, GPU count, strategy and workload; a validation error names ``where``."""
    get_framework(row.framework)  # unknown names fail here, naming the row
    hardware = {"gpu": row.gpu, "gpus": gpus}
    for key in ("gpus_per_node", "node", "network", "nics_per_node", "gpu_memory_gib"):
        if getattr(row, key, None) is not None:
            hardware[key] = getattr(row, key)
    try:
        return TrainScenario.model_validate({"model": model, "framework": row.framework, "hardware": hardware,
                                             "strategy": strategy, "workload": workload})
    except ValidationError as err:
        raise ScenarioError(format_validation_error(err), field=where) from None


def load_rows(row_type: type[R], path: str | Path | None, builtin: str) -> list[R]:
    """Rows of a ledger YAML file (the built-in ``data/<builtin>`` when ``path`` is None), each
    validated as ``row_type``; errors name the file and the row."""
    if path is None:
        text = resources.files("sextant.validate").joinpath("data", builtin).read_text()
        where = f"built-in ledger {builtin}"
    else:
        text = read_user_text(path, field="ledger", kind="ledger", error=ScenarioError)
        where = str(path)
    try:
        data = parse_yaml(text) or []
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ScenarioError(f"{where} is not valid YAML" + (f" at line {mark.line + 1}" if mark else ""),
                            field="ledger") from None
    if not isinstance(data, list):
        raise ScenarioError(f"{where} must be a YAML list of rows", field="ledger")
    if not data:
        raise ScenarioError(f"{where} holds no rows", field="ledger")
    rows = []
    for i, item in enumerate(data):
        try:
            rows.append(row_type.model_validate(item))
        except ValidationError as err:
            ident = item.get("id", f"#{i}") if isinstance(item, dict) else f"#{i}"
            raise ScenarioError(format_validation_error(err), field=f"{where} row {ident}") from None
    ids = [r.id for r in rows]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ScenarioError(f"duplicate row ids {sorted(dupes)}", field=where)
    return rows


def load_ledger(path: str | Path | None = None, builtin: str = "training.yaml") -> list[LedgerRow]:
    return load_rows(LedgerRow, path, builtin)


#: The built-in training ledgers: the established rows (2019-2024 runs the profiles were fitted on,
#: which ``validate plan`` rediscovers) and the 2024-2026 runs on today's stacks.
TRAINING_LEDGERS = ("training.yaml", "training-modern.yaml")


def load_training_ledgers(path: str | Path | None = None, builtins: tuple[str, ...] = TRAINING_LEDGERS) -> list[LedgerRow]:
    """The rows of ``path``, or of the ``builtins`` training ledgers (ids unique across them)."""
    if path is not None:
        return load_ledger(path)
    rows = [row for name in builtins for row in load_ledger(None, name)]
    ids = [r.id for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ScenarioError(f"row ids {dupes} appear in more than one built-in training ledger", field="ledger")
    return rows
