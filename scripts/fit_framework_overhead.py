"""Fit a framework preset's kernel efficiency and per-layer-pass overhead to its measured runs.

    python scripts/fit_framework_overhead.py deepspeed-megatron-2022

Two global parameters of one framework preset (frameworks.yaml), never per row:
``kernel_efficiency`` (the factor on the hardware profile's kernel efficiencies) and
``layer_pass_overhead_s`` (seconds added to each layer's forward, recomputation and backward of
one micro-batch, whatever its size). The data: the preset's rows in the training ledger and its
points in the sweep ledger. The objective is the sum of squared log errors. A micro-batch-size
independent cost can only be told from slower kernels by runs that vary the micro-batch and the
layers per stage, which is what the sweeps do; the ledger rows alone cannot separate the two.

It prints the in-sample errors, then a leave-one-group-out cross-validation (each sweep, and
each source of ledger rows, held out in turn and scored with the values fitted on the rest).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics

from scipy.optimize import minimize

from sextant.catalog.frameworks import get_framework
from sextant.spec.profile import KERNEL_EFFICIENCY_FIELDS
from sextant.train.predict import build_context
from sextant.train.step import evaluate
from sextant.validate.ledger import load_ledger
from sextant.validate.sweep import load_sweeps, spearman
from sextant.validate.train import metric_of


def items_of(framework: str):
    """(group, ctx, candidates, measured value, metric, global batch) per measured run."""
    out = []
    for row in load_ledger():
        if row.framework == framework:
            ctx, cand = build_context(row.scenario())
            out.append((row.id.rstrip("0123456789"), ctx, cand, row.published, row.metric, 0))
    for sweep in load_sweeps():
        if sweep.framework != framework:
            continue
        for point in sweep.points:
            if not point.oom:
                ctx, cand = build_context(sweep.scenario(point))
                out.append((sweep.id, ctx, cand, point.step_time_s, "step_time_s", ctx.workload.global_batch))
    return out


def predict(item, preset_factor: float, factor: float, overhead: float) -> float:
    _, ctx, cand, _, metric, _ = item
    base = ctx.profile
    profile = base.model_copy(update={k: getattr(base, k) / preset_factor * factor for k in KERNEL_EFFICIENCY_FIELDS})
    ctx = dataclasses.replace(ctx, profile=profile, costs=dataclasses.replace(ctx.costs, layer_pass_overhead_s=overhead))
    if metric == "step_time_s":
        return float(evaluate(ctx, cand).step_time_s[0])
    return metric_of(metric, ctx, cand)[0]


def fit(items, preset_factor):
    def loss(x):
        return sum(math.log(predict(i, preset_factor, x[0], x[1] / 1e3) / i[3]) ** 2 for i in items)

    res = minimize(loss, [0.9, 5.0], method="L-BFGS-B", bounds=[(0.3, 1.2), (0.0, 50.0)])
    return float(res.x[0]), float(res.x[1]) / 1e3


def summary(items, preset_factor, factor, overhead) -> str:
    lines = []
    for group in sorted({i[0] for i in items}):
        members = [i for i in items if i[0] == group]
        predicted = [predict(i, preset_factor, factor, overhead) for i in members]
        errors = [p / i[3] - 1 for p, i in zip(predicted, members)]
        text = f"  {group:8s} {len(members):3d} runs: median |error| {statistics.median(abs(e) for e in errors):.1%}"
        if members[0][5] > 0 and len(members) > 2:  # a sweep: does the prediction order its points?
            rate_measured = [i[5] / i[3] for i in members]
            rate_predicted = [i[5] / p for p, i in zip(predicted, members)]
            text += f", rank correlation {spearman(rate_measured, rate_predicted):+.2f}"
        else:
            text += "  (" + ", ".join(f"{e:+.1%}" for e in errors) + ")"
        lines.append(text)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework")
    args = parser.parse_args()
    preset_factor = float(get_framework(args.framework).get("kernel_efficiency", 1.0))
    items = items_of(args.framework)
    print(f"{args.framework}: {len(items)} measured runs")
    print("current preset:")
    print(summary(items, preset_factor, preset_factor,
                  float(get_framework(args.framework).get("layer_pass_overhead_s", 0.0))))
    factor, overhead = fit(items, preset_factor)
    print(f"fitted on all: kernel_efficiency {factor:.3f}, layer_pass_overhead_s {overhead:.4f}")
    print(summary(items, preset_factor, factor, overhead))
    print("leave one group out (fitted on the others, scored on it):")
    for group in sorted({i[0] for i in items}):
        rest = [i for i in items if i[0] != group]
        f, o = fit(rest, preset_factor)
        held = [i for i in items if i[0] == group]
        print(f"  without {group}: kernel_efficiency {f:.3f}, overhead {o * 1e3:.1f} ms")
        print(summary(held, preset_factor, f, o))


if __name__ == "__main__":
    main()
