"""Fit a framework preset's kernel efficiency and per-layer-pass overhead to its measured runs,
with per-sweep diagnostics.

    python scripts/fit_framework_overhead.py deepspeed-megatron-2022

Two global parameters of one framework preset (frameworks.yaml), never per row:
``kernel_efficiency`` (the factor on the hardware profile's kernel efficiencies) and
``layer_pass_overhead_s`` (seconds added to each layer's forward, recomputation and backward of
one micro-batch, whatever its size), as the preset's entry in validate/data/fits.yaml names them,
with its rows and sweeps. The fitter is sextant.validate.fitting's (the one `sextant validate
train` refits per source). A micro-batch-size independent cost can only be told from slower
kernels by runs that vary the micro-batch and the layers per stage, which is what the sweeps do;
the ledger rows alone cannot separate the two.

It prints the in-sample errors per group (each sweep, and each source of ledger rows) with the
sweeps' rank correlations, then a leave-one-group-out cross-validation.
"""

from __future__ import annotations

import argparse
import statistics

from sextant.validate.fitting import (
    catalog_values,
    fit,
    load_fits,
    predicted,
    row_observation,
    sweep_observations,
)
from sextant.validate.ledger import load_training_ledgers
from sextant.validate.sweep import load_sweeps, spearman


def observations(entry):
    """(group, observation, global batch of a sweep point or 0) per measured run."""
    rows = {r.id: r for r in load_training_ledgers()}
    sweeps = {s.id: s for s in load_sweeps()}
    out = [(rows[i].id.rstrip("0123456789"), row_observation(rows[i]), 0) for i in entry.rows]
    for sid in entry.sweeps:
        out += [(sid, o, o.ctx.workload.global_batch) for o in sweep_observations(sweeps[sid])]
    return out


def summary(items, values) -> str:
    lines = []
    for group in sorted({g for g, _, _ in items}):
        members = [(o, batch) for g, o, batch in items if g == group]
        values_predicted = [predicted(o, values) for o, _ in members]
        errors = [p / o.measured - 1 for p, (o, _) in zip(values_predicted, members)]
        text = f"  {group:8s} {len(members):3d} runs: median |error| {statistics.median(abs(e) for e in errors):.1%}"
        if members[0][1] > 0 and len(members) > 2:  # a sweep: does the prediction order its points?
            measured_rate = [b / o.measured for o, b in members]
            predicted_rate = [b / p for p, (_, b) in zip(values_predicted, members)]
            text += f", rank correlation {spearman(measured_rate, predicted_rate):+.2f}"
        else:
            text += "  (" + ", ".join(f"{e:+.1%}" for e in errors) + ")"
        lines.append(text)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework")
    args = parser.parse_args()
    entries = [e for e in load_fits() if e.framework == args.framework]
    if not entries:
        raise SystemExit(f"error: validate/data/fits.yaml has no entry for framework {args.framework!r}")
    entry = entries[0]
    items = observations(entry)
    current = catalog_values(entry, items[0][1])
    print(f"{args.framework}: {len(items)} measured runs")
    print(f"current preset {current}:")
    print(summary(items, {}))
    fitted = fit(entry, [o for _, o, _ in items], current, max_evals=400)
    print(f"fitted on all: {({k: round(v, 4) for k, v in fitted.items()})}")
    print(summary(items, fitted))
    print("leave one group out (fitted on the others, scored on it):")
    for group in sorted({g for g, _, _ in items}):
        values = fit(entry, [o for g, o, _ in items if g != group], current, max_evals=400)
        print(f"  without {group}: {({k: round(v, 4) for k, v in values.items()})}")
        print(summary([i for i in items if i[0] == group], values))


if __name__ == "__main__":
    main()
