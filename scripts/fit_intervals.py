"""Write the prediction-interval table ``predict train`` reads, from held-out residuals.

    python scripts/fit_intervals.py [--check]

Runs the leave-one-source-out cross-validation of every built-in training ledger row
(sextant.validate.crossval) and writes src/sextant/catalog/data/intervals.yaml: per regime pool
with enough residuals, the split-conformal 80% bounds on published over predicted step time
(sextant.validate.intervals). ``--check`` compares with the file instead of writing it (exit 1 when
they differ: the ledger or the model changed since the table was written).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

import yaml

from sextant.validate.crossval import cross_validate
from sextant.validate.intervals import LEVEL, interval_pools
from sextant.validate.ledger import load_training_ledgers


def table() -> dict:
    report = cross_validate(load_training_ledgers())
    pools = interval_pools(report.rows, LEVEL)
    return {
        "level": LEVEL,
        "source": (f"scripts/fit_intervals.py: split-conformal bounds on published / predicted step time from the "
                   f"leave-one-source-out residuals of {len(report.rows)} training ledger rows "
                   f"({len(report.sources)} sources); coverage held out by source "
                   f"{report.interval_coverage.covered}/{report.interval_coverage.rows}"),
        "pools": {k: {"rows": v.rows, "low": round(v.low, 4), "high": round(v.high, 4)} for k, v in pools.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    path = resources.files("sextant.catalog").joinpath("data", "intervals.yaml")
    text = ("# Prediction intervals of predict train (sextant.resolve.intervals). Written by scripts/fit_intervals.py;\n"
            "# do not edit by hand.\n" + yaml.safe_dump(table(), sort_keys=False, width=110))
    if args.check:
        current = path.read_text() if path.is_file() else ""
        if current != text:
            sys.exit("intervals.yaml differs from what the ledger gives now: run scripts/fit_intervals.py")
        print("intervals.yaml is current")
        return
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
