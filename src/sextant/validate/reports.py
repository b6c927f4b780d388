"""The reports of the training ledgers: each row predicted against its published figure, in sample,
and held out by source (leave-one-source-out)."""

from __future__ import annotations

import statistics

import numpy as np
from pydantic import BaseModel


class CrossValidatedRow(BaseModel):
    id: str
    source: str  # the row's source key
    regime: dict[str, str]
    metric: str
    profile_fitted: bool
    published: float
    in_sample: float
    held_out: float
    ape_in_sample: float
    ape_held_out: float
    #: The fitted values the held-out prediction used, per entry refitted without the source.
    refitted: dict[str, dict[str, float]]


class ErrorSummary(BaseModel):
    rows: int
    median: float
    p90: float
    max: float

    @classmethod
    def of(cls, apes: list[float]) -> ErrorSummary:
        return cls(rows=len(apes), median=statistics.median(apes), p90=float(np.percentile(apes, 90)), max=max(apes))


class NamedErrorSummary(ErrorSummary):
    """An :class:`ErrorSummary` of signed relative errors that names its worst row."""

    max_id: str

    @classmethod
    def of_errors(cls, errors: list[tuple[str, float]]) -> NamedErrorSummary:
        """From (row id, signed relative error) pairs: medians and p90 of their magnitudes."""
        worst_id, _ = max(errors, key=lambda e: abs(e[1]))
        return cls(**ErrorSummary.of([abs(e) for _, e in errors]).model_dump(), max_id=worst_id)


class RegimeSummary(BaseModel):
    regime: str
    value: str
    in_sample: ErrorSummary
    held_out: ErrorSummary


class IntervalCoverage(BaseModel):
    """Rows whose published figure lies within the prediction interval their regime gets from the
    other sources' held-out residuals (validate/intervals.py)."""

    level: float
    rows: int
    covered: int
    fraction: float


class CrossValidationReport(BaseModel):
    rows: list[CrossValidatedRow]
    sources: list[str]
    in_sample: ErrorSummary
    held_out: ErrorSummary
    regimes: list[RegimeSummary]
    interval_coverage: IntervalCoverage | None = None


class PairResult(BaseModel):
    """Two rows measured on one setup with one thing changed: how much faster the second ran than
    the first (step time, or a rate as its inverse), measured and predicted."""

    first: str
    second: str
    measured_speedup: float
    predicted_speedup: float
    #: The prediction puts the two in the measured order.
    agrees: bool
    #: Predicted over measured speed-up, less one.
    ratio_error: float


class ValidationRow(BaseModel):
    id: str
    model: str
    gpu: str
    gpus: int
    metric: str
    published: float
    predicted: float
    ape: float
    fits: bool
    step_time_s: float
    source: str
    assumptions: list[str]
    #: For a row with searched knobs: those of the configuration predicted.
    chosen: dict[str, int] = {}


class ValidationReport(BaseModel):
    rows: list[ValidationRow]
    median_ape: float
    max_ape: float
    max_ape_id: str
    rows_not_fitting: int
    #: Leave-one-source-out predictions of the same rows (``validate train``; None elsewhere).
    cross_validation: CrossValidationReport | None = None
    #: Pairs of rows measured on one setup (``pair``), both in the ledger.
    pairs: list[PairResult] = []


