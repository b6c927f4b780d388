"""Fit a GPU's hardware-profile efficiencies to the published rows of the training ledger.

    python scripts/fit_profile.py a100-80gb a100-40gb [--ledger FILE] [--params a,b,c]

The fitted parameters are global to the GPU's profile: one value each for every row and every
user of that GPU, never per row. The objective is the sum of squared log errors over the rows
on the named GPUs (log: over- and under-prediction weigh alike). It also prints a
leave-one-source-out cross-validation: for each source (the letter prefix of the row ids: M, Z,
K, S, ...), fit on the other sources and score that one, so that the in-sample error is not the
only figure reported and rows from one paper cannot vouch for each other. Copy the printed values into
src/sextant/catalog/data/profiles.yaml with the provenance line the script prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics

from scipy.optimize import minimize

from sextant.spec.profile import KERNEL_EFFICIENCY_FIELDS
from sextant.train.predict import build_context
from sextant.validate.ledger import load_ledger
from sextant.validate.train import metric_of

BOUNDS = {
    "gemm_max_efficiency": (0.3, 1.0),
    "gemm_half_dim": (0.0, 2000.0),
    "gemm_half_rows": (0.0, 2000.0),
    "flash_attention_efficiency": (0.2, 0.9),
    "unfused_attention_gemm_efficiency": (0.1, 0.9),
    "memory_bw_efficiency": (0.4, 0.95),
    "network_bw_efficiency": (0.3, 1.0),
    "intra_node_bw_efficiency": (0.3, 1.0),
    "kernel_efficiency": (0.3, 1.0),  # a framework preset's factor on the four kernel efficiencies
    "overlap_efficiency": (0.0, 1.0),  # a framework preset's overlap.efficiency
}



def prepared(rows):
    out = []
    for row in rows:
        ctx, cand = build_context(row.scenario())
        out.append((row, ctx, cand))
    return out


def errors(items, names, x):
    logs = []
    for row, ctx, cand in items:
        values = {n: min(max(v, BOUNDS[n][0]), BOUNDS[n][1]) for n, v in zip(names, x)}
        factor = values.pop("kernel_efficiency", None)
        overlap = values.pop("overlap_efficiency", None)
        prof = ctx.profile.model_copy(update=values)
        if factor is not None:  # replaces the preset's factor, which build_context already applied
            base = ctx.profile
            prof = prof.model_copy(update={k: getattr(base, k) / ctx_factor(row) * factor for k in KERNEL_EFFICIENCY_FIELDS})
        run = dataclasses.replace(ctx, profile=prof)
        if overlap is not None:
            run = dataclasses.replace(run, overlap=run.overlap.model_copy(update={"efficiency": overlap}))
        value, _, _ = metric_of(row.metric, run, cand)
        logs.append(math.log(value / row.published))
    return logs


def ctx_factor(row) -> float:
    from sextant.catalog.frameworks import get_framework

    return float(get_framework(row.framework).get("kernel_efficiency", 1.0))


def fit(items, names, x0):
    res = minimize(lambda x: sum(e * e for e in errors(items, names, x)), x0, method="Nelder-Mead",
                   options={"maxiter": 600, "xatol": 1e-4, "fatol": 1e-7})
    return [min(max(v, BOUNDS[n][0]), BOUNDS[n][1]) for n, v in zip(names, res.x)]


def summary(items, names, x) -> str:
    apes = [abs(math.exp(e) - 1) for e in errors(items, names, x)]
    return f"median APE {statistics.median(apes):.1%}, max {max(apes):.1%} over {len(apes)} rows"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gpus", nargs="+")
    ap.add_argument("--ledger")
    ap.add_argument("--frameworks", help="only rows of these frameworks (comma-separated)")
    ap.add_argument("--exclude-frameworks", default="", help="skip rows of these frameworks")
    ap.add_argument("--exclude-rows", default="", help="skip these row ids (comma-separated)")
    ap.add_argument("--params", default="gemm_max_efficiency,gemm_half_dim,unfused_attention_gemm_efficiency")
    args = ap.parse_args()
    names = args.params.split(",")
    rows = [r for r in load_ledger(args.ledger) if r.gpu in args.gpus]
    if args.frameworks:
        rows = [r for r in rows if r.framework in args.frameworks.split(",")]
    rows = [r for r in rows if r.framework not in args.exclude_frameworks.split(",")
            and r.id not in args.exclude_rows.split(",")]
    items = prepared(rows)
    def start(n):
        if n == "kernel_efficiency":
            return ctx_factor(items[0][0])
        if n == "overlap_efficiency":
            return items[0][1].overlap.efficiency
        return getattr(items[0][1].profile, n)

    x0 = [start(n) for n in names]
    print(f"start ({items[0][1].profile.name}): {dict(zip(names, x0))}: {summary(items, names, x0)}")
    best = fit(items, names, x0)
    print("fitted:", {n: round(v, 4) for n, v in zip(names, best)})
    print("in-sample:", summary(items, names, best))
    sources = sorted({row.id.rstrip("0123456789") for row, _, _ in items})
    if len(sources) > 1:
        cv, spread = [], []
        for source in sources:
            held = [it for it in items if it[0].id.rstrip("0123456789") == source]
            rest = [it for it in items if it[0].id.rstrip("0123456789") != source]
            fitted = fit(rest, names, x0)
            spread.append(fitted)
            cv += [abs(math.exp(e) - 1) for e in errors(held, names, fitted)]
        print(f"leave-one-source-out ({', '.join(sources)}): median APE {statistics.median(cv):.1%}, "
              f"max {max(cv):.1%}")
        for i, n in enumerate(names):
            print(f"  {n} across folds: {min(f[i] for f in spread):.4g} .. {max(f[i] for f in spread):.4g}")
    else:
        print("one source only: no cross-validation possible")
    print(f"provenance: fitted by scripts/fit_profile.py on ledger rows {', '.join(r.id for r in rows)}")


if __name__ == "__main__":
    main()
