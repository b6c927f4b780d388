"""``validate offload``: the offload ledger (data/offload.yaml), predicted like the training ledger,
plus two kinds of claim that are not throughputs: "it fits" (the metric ``fits``: 1 when it does)
and "it needs this many GPUs without offloading" (``min_gpus_without_offload``, found with the
planner over the row's ``gpu_counts``)."""

from __future__ import annotations

from pathlib import Path

from sextant.errors import InfeasibleError
from sextant.validate.ledger import LedgerRow, load_ledger
from sextant.validate.reports import ValidationReport
from sextant.validate.train import best_prediction, report_of


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
    return report_of((row, {}, min_gpus_without_offload(row)) if row.metric == "min_gpus_without_offload"
                     else (row, *best_prediction(row)) for row in load_ledger(path, "offload.yaml"))
