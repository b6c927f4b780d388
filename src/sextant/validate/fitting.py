"""Fitting the global parameters of a hardware profile or a framework preset to measured runs,
and the record of what each was fitted on (``data/fits.yaml``).

A fit minimises the sum of squared log errors (over- and under-prediction weigh alike) over the
observations an entry names (ledger rows and sweep points), by a bounded Nelder-Mead search
(Nelder and Mead 1965; Lagarias et al. 1998 for the coefficients) in coordinates scaled to the
bounds. Parameters are global: one value each for every row and every user of that GPU or preset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources

import numpy as np
from pydantic import Field, ValidationError, model_validator

from sextant.errors import ScenarioError
from sextant.files import parse_yaml
from sextant.resolve.train import TrainContext
from sextant.spec.base import Spec
from sextant.spec.profile import KERNEL_EFFICIENCY_FIELDS, OPTIONAL_KERNEL_EFFICIENCY_FIELDS
from sextant.spec.scenario import format_validation_error
from sextant.train.candidates import Candidates
from sextant.train.predict import build_context
from sextant.train.step import evaluate
from sextant.validate.ledger import LedgerRow
from sextant.validate.sweep import Sweep
from sextant.validate.train import best_prediction, metric_value

#: Nelder-Mead restarts at most per fit (see :func:`fit`).
RESTARTS = 4
#: Parameters that are not fields of a hardware profile.
PRESET_PARAMS = ("kernel_efficiency", "overlap_efficiency", "layer_pass_overhead_s")


class FitParam(Spec):
    prior: float
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> FitParam:
        if not self.low <= self.prior <= self.high:
            raise ValueError(f"prior {self.prior} outside [{self.low}, {self.high}]")
        return self


class FitEntry(Spec):
    """Values fitted together: fields of the profile of ``gpus``, or costs of ``framework``."""

    name: str
    gpus: list[str] = []
    framework: str | None = None
    params: dict[str, FitParam] = Field(min_length=1)
    rows: list[str] = []
    sweeps: list[str] = []

    @model_validator(mode="after")
    def _one_target(self) -> FitEntry:
        if bool(self.gpus) == (self.framework is not None):
            raise ValueError("an entry fits either a GPU profile (gpus) or a framework preset (framework)")
        return self

    def applies_to(self, obs: Observation) -> bool:
        return obs.gpu in self.gpus if self.gpus else obs.framework == self.framework

    @property
    def priors(self) -> dict[str, float]:
        return {k: p.prior for k, p in self.params.items()}


def load_fits() -> list[FitEntry]:
    text = resources.files("sextant.validate").joinpath("data", "fits.yaml").read_text()
    try:
        return [FitEntry.model_validate(item) for item in parse_yaml(text)]
    except ValidationError as err:
        raise ScenarioError(format_validation_error(err), field="fits.yaml") from None


@dataclass(frozen=True)
class Observation:
    """One measured figure: a ledger row or a sweep point, with its resolved configuration."""

    id: str
    group: str
    gpu: str
    framework: str | None
    ctx: TrainContext
    cand: Candidates
    metric: str
    measured: float


def row_observation(row: LedgerRow) -> Observation:
    """A ledger row as an observation; a row with searched knobs as the configuration its in-sample
    prediction chose (the knobs stay fixed when its parameters are refitted)."""
    if row.search:
        chosen, _ = best_prediction(row)
        row = next(variant for knobs, variant in row.searched() if knobs == chosen)
    ctx, cand = build_context(row.scenario())
    return Observation(row.id, row.group, row.gpu, row.framework, ctx, cand, row.metric, row.published)


def sweep_observations(sweep: Sweep) -> list[Observation]:
    out = []
    for point in sweep.points:
        if point.step_time_s is None:
            continue  # ran out of memory: no time to fit
        ctx, cand = build_context(sweep.scenario(point))
        out.append(Observation(f"{sweep.id} {point.label()}", sweep.group, sweep.gpu, sweep.framework, ctx, cand,
                               "step_time_s", point.step_time_s))
    return out


def with_values(ctx: TrainContext, values: dict[str, float]) -> TrainContext:
    """``ctx`` with fitted values in place of the catalog's: profile fields (kernel efficiencies
    given unscaled, as the profile states them, and scaled by the preset's kernel factor as
    resolution scales them), one dtype's entry of a per-dtype field (``gemm_dtype_efficiency.fp8``),
    a preset's ``kernel_efficiency``, ``overlap_efficiency`` and ``layer_pass_overhead_s``."""
    if not values:
        return ctx
    k_old = ctx.costs.kernel_efficiency
    k_new = values.get("kernel_efficiency", k_old)
    updates: dict = {}
    for name in (*KERNEL_EFFICIENCY_FIELDS, *OPTIONAL_KERNEL_EFFICIENCY_FIELDS):
        current = getattr(ctx.profile, name)
        if current is not None and (name in values or k_new != k_old):
            updates[name] = (values[name] if name in values else current / k_old) * k_new
    for name, v in values.items():
        if name in PRESET_PARAMS or name in updates:
            continue
        if "." in name:  # a dtype's entry of a per-dtype mapping: gemm_dtype_efficiency.fp8
            field, key = name.split(".", 1)
            updates[field] = {**getattr(ctx.profile, field), **updates.get(field, {}), key: v}
        else:
            updates[name] = v
    profile = ctx.profile.model_copy(update=updates) if updates else ctx.profile
    overlap = (ctx.overlap.model_copy(update={"efficiency": values["overlap_efficiency"]})
               if "overlap_efficiency" in values else ctx.overlap)
    costs = dataclasses.replace(ctx.costs, kernel_efficiency=k_new,
                                layer_pass_overhead_s=values.get("layer_pass_overhead_s",
                                                                 ctx.costs.layer_pass_overhead_s))
    return dataclasses.replace(ctx, profile=profile, overlap=overlap, costs=costs)


def predicted(obs: Observation, values: dict[str, float]) -> float:
    """The observation's metric as predicted with ``values`` in place of the catalog's."""
    ctx = with_values(obs.ctx, values)
    return metric_value(obs.metric, ctx, evaluate(ctx, obs.cand, detail=False))[0]


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, *, step: float = 0.05, max_evals: int = 120,
                xtol: float = 1e-3, ftol: float = 1e-7) -> np.ndarray:
    """A minimum of ``f`` near ``x0`` by the Nelder-Mead simplex (standard coefficients:
    reflection 1, expansion 2, contraction 1/2, shrink 1/2)."""
    n = len(x0)
    simplex = [np.asarray(x0, float)] + [np.asarray(x0, float) + step * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    evals = n + 1
    while evals < max_evals:
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if (max(np.abs(x - simplex[0]).max() for x in simplex[1:]) < xtol
                and values[-1] - values[0] < ftol):
            break
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        fr = f(reflected)
        evals += 1
        if fr < values[0]:
            expanded = centroid + 2.0 * (centroid - simplex[-1])
            fe = f(expanded)
            evals += 1
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            inside = fr >= values[-1]
            contracted = centroid + (0.5 if not inside else -0.5) * (centroid - simplex[-1])
            fc = f(contracted)
            evals += 1
            if fc < min(fr, values[-1]):
                simplex[-1], values[-1] = contracted, fc
            else:
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
                evals += n
    return simplex[int(np.argmin(values))]


def fit(entry: FitEntry, observations: Iterable[Observation], start: dict[str, float] | None = None,
        *, max_evals: int = 120, restarts: int = RESTARTS) -> dict[str, float]:
    """The entry's values that minimise the squared log errors over ``observations`` (the priors
    when none is given). ``start``: where the search begins (default: the priors); ``restarts``:
    Nelder-Mead runs at most, each from the last one's result."""
    data = list(observations)
    if not data:
        return entry.priors
    names = list(entry.params)
    low = np.array([entry.params[n].low for n in names])
    span = np.array([entry.params[n].high for n in names]) - low
    begin = start or entry.priors

    def values_of(u: np.ndarray) -> dict[str, float]:
        return dict(zip(names, (low + np.clip(u, 0.0, 1.0) * span).tolist()))

    def loss(u: np.ndarray) -> float:
        values = values_of(u)
        return sum(math.log(predicted(obs, values) / obs.measured) ** 2 for obs in data)

    u = np.array([(begin[n] - entry.params[n].low) / (entry.params[n].high - entry.params[n].low) for n in names])
    best = loss(u)
    # Restarted from its result with a fresh simplex until a restart gains nothing: a simplex
    # collapses early along correlated parameters (a GEMM curve's height and half-dimension).
    for _ in range(restarts):
        found = nelder_mead(loss, u, max_evals=max_evals)
        value = loss(found)
        if value >= best - 1e-9:
            break
        u, best = found, value
    return values_of(u)


def catalog_values(entry: FitEntry, obs: Observation) -> dict[str, float]:
    """The entry's values as the catalog states them, read off an observation it applies to."""
    ctx = obs.ctx
    k = ctx.costs.kernel_efficiency
    out = {}
    for name in entry.params:
        if name == "kernel_efficiency":
            out[name] = k
        elif name == "overlap_efficiency":
            out[name] = ctx.overlap.efficiency
        elif name == "layer_pass_overhead_s":
            out[name] = ctx.costs.layer_pass_overhead_s
        elif "." in name:
            field, key = name.split(".", 1)
            out[name] = getattr(ctx.profile, field).get(key, entry.params[name].prior)
        else:
            value = getattr(ctx.profile, name)
            out[name] = value / k if name in KERNEL_EFFICIENCY_FIELDS else value
    return out
