"""``validate offload``: the offload ledger (data/offload.yaml), predicted like the training ledger,
plus two kinds of claim that are not throughputs: "it fits" (the metric ``fits``: 1 when it does)
and "it needs this many GPUs without offloading" (``min_gpus_without_offload``, found with the
planner over the row's ``gpu_counts``)."""

from __future__ import annotations

import statistics
from pathlib import Path

from sextant.errors import InfeasibleError
from sextant.validate.ledger import LedgerRow, load_ledger
from sextant.validate.train import ValidationReport, ValidationRow, predicted_metric


def min_gpus_without_offload(row: LedgerRow) -> tuple[float, float, bool]:
    """The smallest of the row's GPU counts on which some configuration fits without offloading."""
    from sextant.plan.search import plan_train

    scenario = row.scenario()
    for gpus in sorted(row.gpu_counts):
        try:
            result = plan_train(scenario, [gpus], top_k=1)
        except InfeasibleError:
            continue
        return float(gpus), result.best.step_time_s, True
    return float("inf"), float("nan"), False


def validate_offload(path: str | Path | None = None) -> ValidationReport:
    rows = []
    for row in load_ledger(path, "offload.yaml"):
        if row.metric == "min_gpus_without_offload":
            predicted, step, fits = min_gpus_without_offload(row)
        else:
            predicted, step, fits = predicted_metric(row)
        rows.append(ValidationRow(
            id=row.id, model=row.model, gpu=row.gpu, gpus=row.gpus, metric=row.metric, published=row.published,
            predicted=predicted, ape=abs(predicted - row.published) / row.published, fits=fits, step_time_s=step,
            source=row.source, assumptions=row.assumptions))
    apes = [r.ape for r in rows]
    worst = max(rows, key=lambda r: r.ape)
    return ValidationReport(rows=rows, median_ape=statistics.median(apes), max_ape=worst.ape, max_ape_id=worst.id,
                            rows_not_fitting=sum(not r.fits for r in rows))
