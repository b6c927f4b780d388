"""``validate serve-latency``: replay every run of the serving-latency ledger and compare its
latency per load stage with what was measured.

A row is one published run: a model served by an engine under a stated load (constant-rate stages,
shared prompts, lengths). One simulation per row gives every stage's TTFT, inter-token latency and
end-to-end latency; each measured metric becomes one error. Nothing in the serving model is fitted
on this ledger (the hardware profiles are fitted on training runs, the engine presets state their
engines' defaults), so every figure here is predicted out of sample.

A stage of open-loop arrivals (a rate or stages) *kept up* when its requests did not queue for
admission: mean TTFT under :data:`OVERLOAD_TTFT_MS`. Measured overloaded stages are compared only on that verdict (their
latency grows with the length of the stage, so its value is not a property of the engine); a stage
the simulation overloads where the engine kept up is a miss on both counts.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from sextant.catalog.models import get_model
from sextant.errors import ScenarioError, SextantError
from sextant.files import parse_yaml
from sextant.serve.predict import ServeResult, StageLatency, predict_serve
from sextant.spec.base import Spec
from sextant.spec.serving import ServeScenario
from sextant.validate.ledger import CitedRow, load_rows
from sextant.validate.reports import NamedErrorSummary
from sextant.validate.serve import serve_scenario_of

#: A stage whose mean TTFT exceeds this queued its requests: the engine did not keep up.
OVERLOAD_TTFT_MS = 2000.0
#: Metric families the report summarises, and the metrics of each.
FAMILIES = {
    "ttft": ("ttft_mean_ms", "ttft_median_ms", "ttft_p90_ms", "ttft_p99_ms"),
    "itl": ("itl_mean_ms", "tpot_mean_ms", "tpot_p99_ms"),
    "e2e": ("e2e_mean_ms", "e2e_p90_ms", "e2e_p99_ms"),
    "throughput": ("output_tokens_per_s",),
}


class StageMeasurement(Spec):
    """What one load stage of a run measured (milliseconds); None where the source is silent. A
    run without stages has one entry, stage 0, for the whole run."""

    stage: int = Field(ge=0)
    ttft_mean_ms: float | None = Field(default=None, gt=0)
    ttft_median_ms: float | None = Field(default=None, gt=0)
    ttft_p90_ms: float | None = Field(default=None, gt=0)
    ttft_p99_ms: float | None = Field(default=None, gt=0)
    tpot_mean_ms: float | None = Field(default=None, gt=0)
    tpot_p99_ms: float | None = Field(default=None, gt=0)
    itl_mean_ms: float | None = Field(default=None, gt=0)
    e2e_mean_ms: float | None = Field(default=None, gt=0)
    e2e_p90_ms: float | None = Field(default=None, gt=0)
    e2e_p99_ms: float | None = Field(default=None, gt=0)
    #: Output tokens per second of the whole run (all replicas).
    output_tokens_per_s: float | None = Field(default=None, gt=0)

    @property
    def kept_up(self) -> bool:
        return self.ttft_mean_ms is None or self.ttft_mean_ms <= OVERLOAD_TTFT_MS


class ServeLatencyRow(CitedRow):
    model: str
    gpu: str
    gpus: int = Field(gt=0)
    framework: str
    node: str | None = None
    deployment: dict[str, Any] = {}
    scheduler: dict[str, Any] = {}
    workload: dict[str, Any]
    offload: dict[str, Any] = {}
    #: The source's ITL is the stage's mean decode time over the output tokens its harness
    #: counted, (mean e2e - mean TTFT) / (count - 1): the prediction's ITL uses the same count.
    itl_from_means: bool = False
    measured: list[StageMeasurement] = Field(min_length=1)

    def scenario(self) -> ServeScenario:
        return serve_scenario_of(self)


def load_fit_record() -> dict[str, Any]:
    """What scripts/fit_serving_latency.py recorded: the fitted per-kernel graph cost and its
    leave-one-source-out errors ({} before the first fit)."""
    text = resources.files("sextant.validate").joinpath("data", "serving-fit.yaml")
    return parse_yaml(text.read_text()) if text.is_file() else {}


def load_latency_ledger(path: str | Path | None = None) -> list[ServeLatencyRow]:
    return load_rows(ServeLatencyRow, path, "serving-latency.yaml")


class StageComparison(BaseModel):
    """One stage of one run: each measured metric beside its prediction."""

    id: str
    stage: int
    source: str
    regime: dict[str, str]
    measured: dict[str, float]
    predicted: dict[str, float]
    #: Signed relative error per metric, (predicted - measured) / measured; empty when the
    #: measured stage did not keep up (only the verdict is compared then).
    errors: dict[str, float]
    kept_up: bool
    simulated_kept_up: bool


class ServeLatencyReport(BaseModel):
    stages: list[StageComparison]
    rows: int
    failed: dict[str, str]  # row id -> why it could not be simulated
    #: Per metric family (ttft, itl, e2e) and per metric: error summaries over stages that kept up.
    families: dict[str, NamedErrorSummary]
    metrics: dict[str, NamedErrorSummary]
    by_source: dict[str, dict[str, NamedErrorSummary]]
    by_regime: dict[str, dict[str, NamedErrorSummary]]
    keep_up_agreement: int
    keep_up_stages: int
    #: Share of errors where the prediction is above the measurement (latency over-predicted).
    over_predicted: float


def _predicted(stage: StageLatency | ServeResult) -> dict[str, float]:
    return {"ttft_mean_ms": stage.ttft_ms.mean, "ttft_median_ms": stage.ttft_ms.p50, "ttft_p90_ms": stage.ttft_ms.p90,
            "ttft_p99_ms": stage.ttft_ms.p99, "tpot_mean_ms": stage.tpot_ms.mean, "tpot_p99_ms": stage.tpot_ms.p99, "itl_mean_ms": stage.itl_mean_ms, "e2e_mean_ms": stage.e2e_ms.mean,
            "e2e_p90_ms": stage.e2e_ms.p90, "e2e_p99_ms": stage.e2e_ms.p99,
            "output_tokens_per_s": getattr(stage, "output_tokens_per_s", float("nan"))}


def regime_of(row: ServeLatencyRow) -> dict[str, str]:
    model = get_model(row.model)
    return {"model": row.model, "gpu": row.gpu, "moe": "moe" if model.moe is not None else "dense",
            "precision": str(row.deployment.get("precision", "bf16")), "framework": row.framework,
            "tp": str(row.deployment.get("tp", 1))}


def compare_row(row: ServeLatencyRow, result: ServeResult) -> list[StageComparison]:
    """Each measured stage of ``row`` against the simulated ``result``."""
    out = []
    regime = regime_of(row)
    stages: list[StageLatency | ServeResult] = list(result.stages) or [result]  # no stages: the whole run
    for m in row.measured:
        if m.stage >= len(stages):
            raise ScenarioError(f"row {row.id} measures stage {m.stage}, the workload has {len(stages)}",
                                field="measured")
        predicted = _predicted(stages[m.stage])
        measured = {k: v for k, v in m.model_dump(exclude={"stage"}).items() if v is not None}
        if row.itl_from_means and {"itl_mean_ms", "e2e_mean_ms", "ttft_mean_ms"} <= measured.keys():
            counted_gaps = (measured["e2e_mean_ms"] - measured["ttft_mean_ms"]) / measured["itl_mean_ms"]
            predicted["itl_mean_ms"] = (predicted["e2e_mean_ms"] - predicted["ttft_mean_ms"]) / counted_gaps
        # The verdict applies to open-loop arrivals; a burst or a closed loop queues by design.
        open_loop = bool(row.workload.get("stages") or row.workload.get("rate"))
        kept_up = m.kept_up or not open_loop
        simulated_kept_up = predicted["ttft_mean_ms"] <= OVERLOAD_TTFT_MS or not open_loop
        errors = {k: (predicted[k] - v) / v for k, v in measured.items()} if kept_up else {}
        out.append(StageComparison(id=row.id, stage=m.stage, source=row.group, regime=regime, measured=measured,
                                   predicted={k: predicted[k] for k in measured}, errors=errors, kept_up=kept_up,
                                   simulated_kept_up=simulated_kept_up))
    return out


def _summaries(stages: list[StageComparison], metrics: tuple[str, ...]) -> NamedErrorSummary | None:
    errors = [(f"{s.id}/{s.stage}:{k}", s.errors[k]) for s in stages for k in metrics if k in s.errors]
    return NamedErrorSummary.of_errors(errors) if errors else None


def _by_family(stages: list[StageComparison]) -> dict[str, NamedErrorSummary]:
    out = {}
    for family, metrics in FAMILIES.items():
        summary = _summaries(stages, metrics)
        if summary is not None:
            out[family] = summary
    return out


def validate_serving_latency(path: str | Path | None = None,
                             progress: Callable[[int, int], None] | None = None,
                             ids: list[str] | None = None) -> ServeLatencyReport:
    ledger = load_latency_ledger(path)
    if ids:
        unknown = sorted(set(ids) - {r.id for r in ledger})
        if unknown:
            raise ScenarioError(f"no serving-latency row {', '.join(unknown)}", field="ids")
        ledger = [r for r in ledger if r.id in ids]
    stages: list[StageComparison] = []
    failed: dict[str, str] = {}
    for i, row in enumerate(ledger):
        try:
            stages.extend(compare_row(row, predict_serve(row.scenario())))
        except SextantError as err:
            failed[row.id] = str(err)
        if progress is not None:
            progress(i + 1, len(ledger))
    all_metrics = tuple(k for ks in FAMILIES.values() for k in ks)
    metrics = {k: s for k in all_metrics if (s := _summaries(stages, (k,))) is not None}
    by_source = {src: _by_family([s for s in stages if s.source == src]) for src in sorted({s.source for s in stages})}
    by_regime: dict[str, dict[str, NamedErrorSummary]] = {}
    for key in ("gpu", "moe", "precision"):
        for value in sorted({s.regime[key] for s in stages}):
            summary = _summaries([s for s in stages if s.regime[key] == value], all_metrics)
            if summary is not None:
                by_regime.setdefault(key, {})[value] = summary
    signed = [e for s in stages for e in s.errors.values()]
    return ServeLatencyReport(
        stages=stages, rows=len(ledger), failed=failed, families=_by_family(stages), metrics=metrics,
        by_source=by_source, by_regime=by_regime,
        keep_up_agreement=sum(s.kept_up == s.simulated_kept_up for s in stages), keep_up_stages=len(stages),
        over_predicted=sum(e > 0 for e in signed) / len(signed) if signed else 0.0)
