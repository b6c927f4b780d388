"""``validate sweep``: does the cost model order measured alternatives as they ran?

A ledger row checks one configuration against its published figure. A planner lives on the
order of configurations, so a model can be accurate on every row its authors tuned and still
pick the wrong one. A sweep is one team measuring several configurations of one model on one
cluster with the same code; per sweep this reports each point's step-time error, the Spearman
rank correlation between measured and predicted throughput (sequences per second, since the
global batch may vary within a sweep), the regret of choosing by prediction (how much slower, as
measured, the predicted-fastest point ran than the measured-fastest one), and whether the points
that ran out of memory are the ones predicted not to fit.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator

from sextant.catalog.models import get_model
from sextant.spec.base import Spec
from sextant.spec.scenario import TrainScenario
from sextant.train.predict import build_context
from sextant.train.step import evaluate
from sextant.validate.ledger import PublishedRow, load_rows, scenario_of


class SweepPoint(Spec):
    """One measured configuration: what it changes from the sweep, and what was measured."""

    dp: int = Field(gt=0)
    tp: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)
    micro_batch: int = Field(gt=0)
    global_batch: int | None = Field(default=None, gt=0)
    model_overrides: dict[str, Any] = {}
    step_time_s: float | None = Field(default=None, gt=0)
    memory_gib: float | None = Field(default=None, gt=0)
    oom: bool = False

    @model_validator(mode="after")
    def _measured(self) -> SweepPoint:
        if self.oom == (self.step_time_s is not None):
            raise ValueError("a point states either step_time_s or oom: true")
        return self

    def label(self) -> str:
        """The configuration, and the model's shape where this point changes it."""
        o = self.model_overrides
        shape = ("x".join(str(o[k]) for k in ("num_layers", "hidden_size") if k in o)
                 + (f" {o['num_heads']} heads" if "num_heads" in o else ""))
        return f"dp{self.dp} tp{self.tp} pp{self.pp} mb{self.micro_batch}" + (f", {shape.strip()}" if shape else "")


class Sweep(PublishedRow):
    """Shared setting of the points; each point has its own GPU count and measured figure."""

    gpus: None = None
    published: None = None
    node: str | None = None
    network: str | None = None
    nics_per_node: int | None = None
    model_overrides: dict[str, Any] = {}
    strategy: dict[str, Any]
    workload: dict[str, Any]
    points: list[SweepPoint] = Field(min_length=2)

    def scenario(self, point: SweepPoint) -> TrainScenario:
        overrides = {**self.model_overrides, **point.model_overrides}
        model: Any = self.model
        if overrides:
            base = get_model(self.model)
            model = base.model_copy(update={**overrides, "name": f"{base.name} variant"}).model_dump()
        strategy = {**self.strategy, "dp": point.dp, "tp": point.tp, "pp": point.pp, "micro_batch": point.micro_batch}
        workload = {**self.workload, **({"global_batch": point.global_batch} if point.global_batch else {})}
        return scenario_of(self, model, point.dp * point.tp * point.pp, strategy, workload,
                           f"sweep {self.id} point {point.label()}")


class SweepPointResult(BaseModel):
    config: str
    global_batch: int
    measured_step_time_s: float | None
    predicted_step_time_s: float
    error: float | None
    measured_memory_gib: float | None
    predicted_memory_gib: float
    measured_oom: bool
    predicted_fits: bool

    @property
    def memory_error(self) -> float | None:
        """Predicted over measured memory, less one (None without a measured figure)."""
        return None if self.measured_memory_gib is None else self.predicted_memory_gib / self.measured_memory_gib - 1.0


class SweepResult(BaseModel):
    id: str
    source: str
    points: list[SweepPointResult]
    #: Spearman rank correlation of measured and predicted sequences per second over the points
    #: that ran (1: the same order; 0: no relation).
    spearman: float
    median_ape: float
    #: Median absolute error of the predicted memory over the points with a measured figure
    #: (None when the sweep has none).
    median_memory_ape: float | None
    #: The point predicted fastest (among those predicted to fit), and how much slower it ran, as
    #: measured, than the fastest point measured (0 when the prediction picks the best).
    predicted_best: str
    measured_best: str
    regret: float
    #: Points that ran out of memory, and how many of them are predicted not to fit; points that
    #: ran, and how many of those are predicted not to fit.
    oom_points: int
    oom_predicted: int
    ran_predicted_not_to_fit: int


class SweepReport(BaseModel):
    sweeps: list[SweepResult]
    points: int
    median_ape: float
    median_spearman: float
    median_memory_ape: float | None
    #: Points that ran out of memory, and how many of them are predicted not to fit.
    oom_points: int
    oom_predicted: int


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of their ranks (as Spearman's coefficient needs)."""
    values = np.asarray(values, float)
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(a, b) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom else 0.0


def _predict(sweep: Sweep, point: SweepPoint) -> tuple[float, float, bool, int]:
    ctx, cand = build_context(sweep.scenario(point))
    ev = evaluate(ctx, cand)
    return float(ev.step_time_s[0]), float(ev.memory_bytes[0]) / 2**30, bool(ev.fits[0]), ctx.workload.global_batch


def validate_sweep(sweep: Sweep) -> SweepResult:
    results = []
    for point in sweep.points:
        step, memory, fits, batch = _predict(sweep, point)
        measured = point.step_time_s
        results.append(SweepPointResult(
            config=point.label(), global_batch=batch, measured_step_time_s=measured, predicted_step_time_s=step,
            error=None if measured is None else step / measured - 1.0, measured_memory_gib=point.memory_gib,
            predicted_memory_gib=memory, measured_oom=point.oom, predicted_fits=fits))
    ran = [r for r in results if not r.measured_oom]
    measured_rate = np.array([r.global_batch / r.measured_step_time_s for r in ran])
    predicted_rate = np.array([r.global_batch / r.predicted_step_time_s for r in ran])
    candidates = [i for i, r in enumerate(ran) if r.predicted_fits] or list(range(len(ran)))
    pick = max(candidates, key=lambda i: predicted_rate[i])
    best = int(np.argmax(measured_rate))
    oom = [r for r in results if r.measured_oom]
    memory_errors = [abs(r.memory_error) for r in ran if r.memory_error is not None]
    return SweepResult(
        id=sweep.id, source=sweep.source, points=results, spearman=spearman(measured_rate, predicted_rate),
        median_ape=statistics.median(abs(r.error) for r in ran),
        median_memory_ape=statistics.median(memory_errors) if memory_errors else None, predicted_best=ran[pick].config,
        measured_best=ran[best].config, regret=float(measured_rate[best] / measured_rate[pick] - 1.0),
        oom_points=len(oom), oom_predicted=sum(not r.predicted_fits for r in oom),
        ran_predicted_not_to_fit=sum(not r.predicted_fits for r in ran))


def load_sweeps(path: str | Path | None = None) -> list[Sweep]:
    return load_rows(Sweep, path, "sweeps.yaml")


def validate_sweeps(path: str | Path | None = None) -> SweepReport:
    sweeps = [validate_sweep(s) for s in load_sweeps(path)]
    errors = [abs(p.error) for s in sweeps for p in s.points if p.error is not None]
    memory_errors = [abs(p.memory_error) for s in sweeps for p in s.points if p.memory_error is not None]
    return SweepReport(sweeps=sweeps, points=sum(len(s.points) for s in sweeps), median_ape=statistics.median(errors),
                       median_spearman=statistics.median(s.spearman for s in sweeps),
                       median_memory_ape=statistics.median(memory_errors) if memory_errors else None,
                       oom_points=sum(s.oom_points for s in sweeps), oom_predicted=sum(s.oom_predicted for s in sweeps))
