"""Prediction intervals that held-out validation supports: how far, in its regime, a training
prediction's step time has been from published runs whose source was held out of every fit.

``catalog/data/intervals.yaml`` (written by ``scripts/fit_intervals.py`` from ``sextant validate
train``'s leave-one-source-out residuals) holds, per regime pool, split-conformal bounds on the
ratio of the published to the predicted step time (Vovk et al. 2005; Lei et al. 2018, "Distribution-
Free Predictive Inference for Regression"): with n residuals, the ceil((n+1)(1+L)/2)-th and
floor((n+1)(1-L)/2)-th order statistics bound a new run's ratio with probability at least L when
runs are exchangeable within the pool. A prediction takes the most specific pool with enough
residuals: GPU generation, precision, dense or MoE and framework family; then generation and
precision; then generation; then every row (a fitted profile) or the rows on unfitted profiles.
"""

from __future__ import annotations

from dataclasses import dataclass

from sextant.catalog.intervals import interval_table, memory_bound_table
from sextant.resolve.framework import framework_family
from sextant.resolve.train import TrainContext

#: Residuals a pool needs before its bounds are used (fewer: a more general pool).
MIN_POOL_ROWS = 12


@dataclass(frozen=True)
class IntervalBand:
    """A prediction interval as factors on the predicted step time: the published step time of a
    run in ``pool`` lay within [predicted x low, predicted x high] with probability ``level``."""

    pool: str
    rows: int
    level: float
    low: float
    high: float


def regime_pools(architecture: str, precision: str, moe: bool, family: str, fitted: bool) -> list[str]:
    """The pools a prediction may take its interval from, most specific first."""
    return [f"{architecture}/{precision}/{'moe' if moe else 'dense'}/{family}", f"{architecture}/{precision}",
            architecture, "all" if fitted else "unfitted"]


def context_pools(ctx: TrainContext) -> list[str]:
    return regime_pools(ctx.cluster.gpu.architecture, ctx.precision, ctx.model.is_moe,
                        framework_family(ctx.framework), ctx.profile.fitted)


def interval_band(ctx: TrainContext) -> IntervalBand | None:
    """The band of the most specific pool with enough residuals (None: no table entry at all)."""
    table = interval_table()
    pools = table.get("pools", {})
    for pool in context_pools(ctx):
        entry = pools.get(pool)
        if entry is not None and entry["rows"] >= MIN_POOL_ROWS:
            return IntervalBand(pool=pool, rows=int(entry["rows"]), level=float(table["level"]),
                                low=float(entry["low"]), high=float(entry["high"]))
    return None


@dataclass(frozen=True)
class MemoryBound:
    """Predicted peak memory times ``upper_ratio`` bounds the measured peak with probability
    ``level`` (``catalog/data/memory_bound.yaml``, written by ``scripts/fit_memory_bound.py``
    from the held-out ratios of ``sextant validate memory``), from the rows of ``pool``."""

    level: float
    upper_ratio: float
    rows: int
    pool: str


def memory_bound(framework: str | None = None) -> MemoryBound:
    """The bound of the framework's family where enough measured peaks support one, else the
    bound over every measured peak."""
    table = memory_bound_table()
    family = framework_family(framework)
    pool = family if family in table["pools"] else "all"
    entry = table["pools"][pool]
    return MemoryBound(level=float(table["level"]), upper_ratio=float(entry["upper_ratio"]), rows=int(entry["rows"]),
                       pool=pool)
