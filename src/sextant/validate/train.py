"""``validate train``: predict every ledger row and report the absolute percentage errors."""

from __future__ import annotations

import statistics
from pathlib import Path

from sextant.cost.params import count_params
from sextant.errors import SpecError
from sextant.train.candidates import Candidates
from sextant.train.predict import build_context
from sextant.train.step import StepEvaluation, evaluate
from sextant.validate.ledger import TRAINING_LEDGERS, LedgerRow, load_training_ledgers
from sextant.validate.reports import PairResult, ValidationReport, ValidationRow


def best_prediction(row: LedgerRow) -> tuple[dict[str, int], tuple[float, float, bool]]:
    """(searched knobs chosen, (value, step time, fits)): the combination that fits with the
    highest value of the row's metric, or the row itself when it searches nothing."""
    best: tuple[dict[str, int], tuple[float, float, bool]] | None = None
    for knobs, variant in row.searched():
        try:
            ctx, cand = build_context(variant.scenario())
        except SpecError:
            if not knobs:
                raise
            continue  # a combination the model cannot run (e.g. heads not divisible by tp)
        value, step, fits = metric_of(row.metric, ctx, cand)
        if best is None or (fits, value) > (best[1][2], best[1][0]):
            best = (knobs, (value, step, fits))
    if best is None:
        raise SpecError(f"no searched combination of {sorted(row.search)} can run", field=f"ledger row {row.id}")
    return best


def metric_of(metric: str, ctx, cand: Candidates) -> tuple[float, float, bool]:
    """(value of ``metric``, step time, fits) of the single configuration ``cand``."""
    return metric_value(metric, ctx, evaluate(ctx, cand))


def metric_value(metric: str, ctx, ev: StepEvaluation) -> tuple[float, float, bool]:
    """(value of ``metric``, step time, fits) of an evaluation of one configuration."""
    step = float(ev.step_time_s[0])
    n = ev.num_gpus
    value = {
        "step_time_s": step,
        "megatron_tflops_per_gpu": float(ev.hardware_flops_per_step[0]) / step / n / 1e12,
        "model_tflops_per_gpu": ev.model_flops_per_step / step / n / 1e12,
        "mfu": float(ev.mfu[0]),
        "hfu": float(ev.hfu[0]),
        "tokens_per_s_per_gpu": ev.tokens_per_step / step / n,
        # ZeRO-Infinity's convention (Rajbhandari et al. SC21, section 4): 2 x 4 x batch x seq x
        # parameters per iteration, i.e. 8N per token, a full recomputation counted whether or
        # not it runs, attention scores not counted.
        "zero_infinity_tflops_per_gpu": 8.0 * count_params(ctx.model).total * ev.tokens_per_step / step / n / 1e12,
        "fits": float(bool(ev.fits[0])),
    }[metric]
    return value, step, bool(ev.fits[0])


def _speed(row: ValidationRow, value: float) -> float:
    """A figure as a speed: a rate as it is, a step time as its inverse."""
    return 1.0 / value if row.metric == "step_time_s" else value


def pair_results(ledger: list[LedgerRow], rows: list[ValidationRow]) -> list[PairResult]:
    """Each declared pair whose rows are both present: measured and predicted speed-up of the
    second over the first."""
    by_id = {r.id: r for r in rows}
    out = []
    for row in ledger:
        if row.pair is None or row.id not in by_id or row.pair not in by_id:
            continue
        a, b = by_id[row.id], by_id[row.pair]
        measured = _speed(b, b.published) / _speed(a, a.published)
        predicted = _speed(b, b.predicted) / _speed(a, a.predicted)
        out.append(PairResult(first=a.id, second=b.id, measured_speedup=measured, predicted_speedup=predicted,
                              agrees=(measured > 1.0) == (predicted > 1.0), ratio_error=predicted / measured - 1.0))
    return out


def report_of(rows_and_predictions) -> ValidationReport:
    """The report of (ledger row, searched knobs chosen, (predicted value, step time, fits))
    triples: one row each, the median and the worst absolute percentage error, and the pairs."""
    triples = list(rows_and_predictions)
    rows = [ValidationRow(
        id=row.id, model=row.model, gpu=row.gpu, gpus=row.gpus, metric=row.metric, published=row.published,
        predicted=predicted, ape=abs(predicted - row.published) / row.published, fits=fits, step_time_s=step,
        source=row.source, assumptions=row.assumptions, chosen=chosen)
        for row, chosen, (predicted, step, fits) in triples]
    apes = [r.ape for r in rows]
    worst = max(rows, key=lambda r: r.ape)
    return ValidationReport(rows=rows, median_ape=statistics.median(apes), max_ape=worst.ape,
                            max_ape_id=worst.id, rows_not_fitting=sum(not r.fits for r in rows),
                            pairs=pair_results([t[0] for t in triples], rows))


def validate_training(path: str | Path | None = None, builtins: tuple[str, ...] = TRAINING_LEDGERS) -> ValidationReport:
    """Every row of ``path`` (default: the built-in training ledgers) predicted in sample."""
    return report_of((row, *best_prediction(row)) for row in load_training_ledgers(path, builtins))
