"""``validate serve``: simulate every serving-ledger row and report the absolute percentage errors,
separately for throughput and latency rows."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from sextant.catalog.frameworks import get_serving_framework
from sextant.errors import ScenarioError, SextantError
from sextant.serve.predict import predict_serve
from sextant.spec.scenario import format_validation_error
from sextant.spec.serving import ServeScenario
from sextant.validate.ledger import PublishedRow, load_rows

Metric = Literal["output_tokens_per_s_per_gpu", "output_tokens_per_s", "requests_per_s", "ttft_ms", "tpot_ms",
                 "model_tflops_per_gpu"]
LATENCY_METRICS = ("ttft_ms", "tpot_ms")


class ServeLedgerRow(PublishedRow):
    node: str | None = None
    deployment: dict[str, Any] = {}
    scheduler: dict[str, Any] = {}
    workload: dict[str, Any] = {}
    offload: dict[str, Any] = {}
    metric: Metric

    def scenario(self) -> ServeScenario:
        return serve_scenario_of(self)


def serve_scenario_of(row: Any) -> ServeScenario:
    """The serving scenario a ledger row states (its model, hardware, framework preset,
    deployment, scheduler, workload and offload)."""
    get_serving_framework(row.framework)
    hardware = {"gpu": row.gpu, "gpus": row.gpus, **({"node": row.node} if row.node else {})}
    try:
        return ServeScenario.model_validate({
            "model": row.model, "framework": row.framework, "hardware": hardware, "deployment": row.deployment,
            "scheduler": row.scheduler, "workload": row.workload, "offload": row.offload})
    except ValidationError as err:
        raise ScenarioError(format_validation_error(err), field=f"ledger row {row.id}") from None


def load_serve_ledger(path: str | Path | None = None, builtin: str = "serving.yaml") -> list[ServeLedgerRow]:
    return load_rows(ServeLedgerRow, path, builtin)


class ServeValidationRow(BaseModel):
    id: str
    model: str
    gpu: str
    gpus: int
    metric: str
    kind: Literal["throughput", "latency"]
    published: float
    predicted: float
    ape: float
    fits: bool
    source: str
    assumptions: list[str]
    error: str | None = None


class ServeValidationReport(BaseModel):
    rows: list[ServeValidationRow]
    median_ape: float
    max_ape: float
    max_ape_id: str
    rows_not_fitting: int
    throughput_median_ape: float
    latency_median_ape: float
    throughput_rows: int
    latency_rows: int


def predicted_value(row: ServeLedgerRow) -> float:
    result = predict_serve(row.scenario())
    if row.metric in LATENCY_METRICS:
        return getattr(result, row.metric).mean
    return float(getattr(result, row.metric))


def validate_serving(path: str | Path | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     builtin: str = "serving.yaml") -> ServeValidationReport:
    ledger = load_serve_ledger(path, builtin)
    rows = []
    for i, row in enumerate(ledger):
        kind = "latency" if row.metric in LATENCY_METRICS else "throughput"
        try:
            predicted, fits, error = predicted_value(row), True, None
        except SextantError as err:  # a row the model says cannot run counts as a full miss
            predicted, fits, error = 0.0, False, str(err)
        rows.append(ServeValidationRow(
            id=row.id, model=row.model, gpu=row.gpu, gpus=row.gpus, metric=row.metric, kind=kind,
            published=row.published, predicted=predicted, ape=abs(predicted - row.published) / row.published,
            fits=fits, source=row.source, assumptions=row.assumptions, error=error))
        if progress is not None:
            progress(i + 1, len(ledger))
    apes = [r.ape for r in rows]
    worst = max(rows, key=lambda r: r.ape)
    thr = [r.ape for r in rows if r.kind == "throughput"]
    lat = [r.ape for r in rows if r.kind == "latency"]
    return ServeValidationReport(
        rows=rows, median_ape=statistics.median(apes), max_ape=worst.ape, max_ape_id=worst.id,
        rows_not_fitting=sum(not r.fits for r in rows),
        throughput_median_ape=statistics.median(thr) if thr else 0.0,
        latency_median_ape=statistics.median(lat) if lat else 0.0,
        throughput_rows=len(thr), latency_rows=len(lat))
