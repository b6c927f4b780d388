"""Leave-one-source-out cross-validation of the training ledger: the honest headline.

The in-sample error of a fitted model flatters it: the rows a profile was fitted on vouch for the
values fitted to them. Here every source's rows (a source: one paper or one team's measurements,
:attr:`PublishedRow.group`) are predicted with every fitted entry of ``data/fits.yaml`` refitted
without that source; an entry left with no data takes its prior (the documented default). Rows no
entry was fitted on are out of sample already and keep their prediction.

Errors are reported overall and per regime (GPU generation, precision, dense or mixture of
experts, framework family), in-sample and held out side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

from sextant.resolve.framework import framework_family
from sextant.validate.fitting import (
    FitEntry,
    Observation,
    catalog_values,
    fit,
    load_fits,
    predicted,
    row_observation,
    sweep_observations,
)
from sextant.validate.intervals import coverage
from sextant.validate.ledger import TRAINING_LEDGERS, LedgerRow, load_training_ledgers
from sextant.validate.reports import (
    CrossValidatedRow,
    CrossValidationReport,
    ErrorSummary,
    RegimeSummary,
    ValidationReport,
)
from sextant.validate.sweep import load_sweeps
from sextant.validate.train import validate_training

REGIMES = ("gpu generation", "precision", "model", "framework")


def regime_of(obs: Observation) -> dict[str, str]:
    ctx = obs.ctx
    return {"gpu generation": ctx.cluster.gpu.architecture, "precision": ctx.precision,
            "model": "MoE" if ctx.model.is_moe else "dense", "framework": framework_family(obs.framework)}


def _ape(value: float, published: float) -> float:
    return abs(value - published) / published


def _fold(group: str, fits: list[FitEntry], data: dict[str, list[Observation]]) -> dict[str, dict[str, float]]:
    """Each entry that was fitted on ``group``'s data, refitted on the rest (from its catalog
    values; its priors when nothing is left)."""
    refitted = {}
    for entry in fits:
        observations = data[entry.name]
        if not any(o.group == group for o in observations):
            continue
        kept = [o for o in observations if o.group != group]
        # From the catalog's values, near the optimum of all the data: one simplex run suffices.
        refitted[entry.name] = fit(entry, kept, catalog_values(entry, observations[0]), restarts=1)
    return refitted


def _fit_data(fits: list[FitEntry], observed: dict[str, Observation]) -> dict[str, list[Observation]]:
    """Each entry's observations: its rows (from the built-in ledgers, whichever rows are being
    validated) and its sweeps' points."""
    rows = {r.id: r for r in load_training_ledgers()}
    sweeps = {s.id: s for s in load_sweeps()}

    def observation(row_id: str) -> Observation:
        return observed[row_id] if row_id in observed else row_observation(rows[row_id])

    return {e.name: [observation(i) for i in e.rows]
            + [o for s in e.sweeps for o in sweep_observations(sweeps[s])] for e in fits}


def cross_validate(rows: Iterable[LedgerRow], progress: Callable[[int, int], None] | None = None
                   ) -> CrossValidationReport:
    """Leave-one-source-out predictions of ``rows`` (see the module docstring); ``progress(done,
    total)`` is called after each source's fold."""
    rows = [r for r in rows if r.metric != "min_gpus_without_offload"]
    fits = load_fits()
    observed = {r.id: row_observation(r) for r in rows}
    data = _fit_data(fits, observed)
    out = []
    groups = sorted({r.group for r in rows})
    for done, group in enumerate(groups):
        if progress is not None:
            progress(done, len(groups))
        refitted = _fold(group, fits, data)
        for row in (r for r in rows if r.group == group):
            obs = observed[row.id]
            used = {e.name: refitted[e.name] for e in fits if e.name in refitted and e.applies_to(obs)}
            values = {k: v for entry_values in used.values() for k, v in entry_values.items()}
            in_sample = predicted(obs, {})
            held = predicted(obs, values) if values else in_sample
            out.append(CrossValidatedRow(
                id=row.id, source=group, regime=regime_of(obs), metric=row.metric,
                profile_fitted=obs.ctx.profile.fitted, published=row.published, in_sample=in_sample,
                held_out=held, ape_in_sample=_ape(in_sample, row.published), ape_held_out=_ape(held, row.published),
                refitted=used))
    report = CrossValidationReport(
        rows=out, sources=sorted({r.source for r in out}),
        in_sample=ErrorSummary.of([r.ape_in_sample for r in out]),
        held_out=ErrorSummary.of([r.ape_held_out for r in out]),
        regimes=regime_summaries(out))
    return report.model_copy(update={"interval_coverage": coverage(report)})


def regime_summaries(rows: list[CrossValidatedRow]) -> list[RegimeSummary]:
    out = []
    for regime in REGIMES:
        for value in sorted({r.regime[regime] for r in rows}):
            members = [r for r in rows if r.regime[regime] == value]
            out.append(RegimeSummary(regime=regime, value=value,
                                     in_sample=ErrorSummary.of([r.ape_in_sample for r in members]),
                                     held_out=ErrorSummary.of([r.ape_held_out for r in members])))
    return out


def log_residuals(report: CrossValidationReport) -> dict[str, float]:
    """Per row, log(predicted / published) held out: what prediction intervals are made of."""
    return {r.id: math.log(r.held_out / r.published) for r in report.rows}


def validate_training_cv(path: str | Path | None = None, builtins: tuple[str, ...] = TRAINING_LEDGERS,
                         progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """``validate train``: every ledger row predicted in sample, and held out by source
    (``progress``: see :func:`cross_validate`)."""
    report = validate_training(path, builtins)
    if path is None:  # the built-in rows and fits are package data: one cross-validation per process
        cv = _builtin_cross_validation(builtins, progress)
    else:
        cv = cross_validate(load_training_ledgers(path, builtins), progress)
    return report.model_copy(update={"cross_validation": cv})


_BUILTIN_CV: dict[tuple[str, ...], CrossValidationReport] = {}


def _builtin_cross_validation(builtins: tuple[str, ...], progress: Callable[[int, int], None] | None
                              ) -> CrossValidationReport:
    """:func:`cross_validate` of the built-in ledgers, computed once per process (about 20 s: a
    script or a test run that asks twice waits once); a copy each time, so no caller shares it."""
    if builtins not in _BUILTIN_CV:
        _BUILTIN_CV[builtins] = cross_validate(load_training_ledgers(None, builtins), progress)
    elif progress is not None:
        progress(1, 1)
    return _BUILTIN_CV[builtins].model_copy(deep=True)
