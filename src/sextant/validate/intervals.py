"""Prediction intervals from held-out residuals: the table ``predict train`` reads
(``catalog/data/intervals.yaml``, see :mod:`sextant.resolve.intervals`) and its honest coverage.

Each cross-validated row gives one residual: the ratio of its published step time to the step
time predicted with its source held out (a rate metric converts as its inverse: the step time of a
fixed amount of work). Per pool, the split-conformal bounds at level L are order statistics of the
log ratios. Coverage is itself measured leave-one-source-out: a source's rows are checked against
the bands computed from every other source's residuals.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from sextant.resolve.intervals import MIN_POOL_ROWS, regime_pools
from sextant.validate.reports import CrossValidatedRow, CrossValidationReport, IntervalCoverage

LEVEL = 0.8


class PoolBand(BaseModel):
    rows: int
    low: float
    high: float


def step_ratio(row: CrossValidatedRow) -> float:
    """Published over held-out predicted step time."""
    if row.metric == "step_time_s":
        return row.published / row.held_out
    return row.held_out / row.published


def pools_of(row: CrossValidatedRow) -> list[str]:
    r = row.regime
    return regime_pools(r["gpu generation"], r["precision"], r["model"] == "MoE", r["framework"], row.profile_fitted)


def conformal_band(ratios: list[float], level: float = LEVEL) -> tuple[float, float]:
    """(low, high) split-conformal bounds on a new ratio from ``ratios`` (order statistics of the
    logs at floor((n+1)(1-L)/2) and ceil((n+1)(1+L)/2), clamped to the sample)."""
    logs = sorted(math.log(r) for r in ratios)
    n = len(logs)
    lo = max(math.floor((n + 1) * (1 - level) / 2), 1)
    hi = min(math.ceil((n + 1) * (1 + level) / 2), n)
    return math.exp(logs[lo - 1]), math.exp(logs[hi - 1])


def interval_pools(rows: list[CrossValidatedRow], level: float = LEVEL) -> dict[str, PoolBand]:
    """Every pool with at least :data:`MIN_POOL_ROWS` residuals, and its band."""
    members: dict[str, list[float]] = {}
    for row in rows:
        for pool in pools_of(row):
            members.setdefault(pool, []).append(step_ratio(row))
    out = {}
    for pool, ratios in sorted(members.items()):
        if len(ratios) >= MIN_POOL_ROWS:
            low, high = conformal_band(ratios, level)
            out[pool] = PoolBand(rows=len(ratios), low=low, high=high)
    return out


def _band_for(row: CrossValidatedRow, pools: dict[str, PoolBand]) -> PoolBand | None:
    return next((pools[p] for p in pools_of(row) if p in pools), None)


def coverage(report: CrossValidationReport, level: float = LEVEL) -> IntervalCoverage:
    """How many rows lie within the band their pool gets from the other sources' residuals."""
    covered = total = 0
    for source in report.sources:
        others = interval_pools([r for r in report.rows if r.source != source], level)
        for row in (r for r in report.rows if r.source == source):
            band = _band_for(row, others)
            if band is None:
                continue
            total += 1
            covered += band.low <= step_ratio(row) <= band.high
    return IntervalCoverage(level=level, rows=total, covered=covered, fraction=covered / total if total else 0.0)
