"""Write the upper bound on peak GPU memory that ``predict train`` reports beside its estimate.

    python scripts/fit_memory_bound.py          # rewrite src/sextant/catalog/data/memory_bound.yaml
    python scripts/fit_memory_bound.py --check  # exit 1 if the file differs from what the ledger gives

The data: every measured peak of the memory ledger and the sweep ledger's nvidia-smi readings
(``sextant validate memory``), predicted as ``predict train`` ships the model; nothing in it is
fitted on them, so every ratio is held out. The bound is split-conformal on measured / predicted,
over every row and per framework family (megatron, deepspeed, pytorch-native) with enough rows
(Vovk et al. 2005; Lei et al. 2018): the ceil((n + 1) x level)-th smallest ratio, so that a new run
of the same kind exceeds the bound with probability at most 1 - level.
"""

from __future__ import annotations

import argparse
import math
import sys
from importlib import resources

import yaml

from sextant.validate.memory import validate_memory

LEVEL = 0.9


#: Measured peaks a pool needs before its own bound is used (fewer: the bound over every row).
MIN_POOL_ROWS = 12


def upper_ratio(ratios: list[float]) -> float:
    ratios = sorted(ratios)
    k = min(len(ratios), math.ceil((len(ratios) + 1) * LEVEL)) - 1
    return round(ratios[k], 4)


def table() -> dict:
    """The bound over every measured peak, and per framework family with enough of them."""
    report = validate_memory()
    measured = [r for r in report.rows if r.measured_gib is not None]
    pools = {"all": measured}
    for family in sorted({r.family for r in measured}):
        members = [r for r in measured if r.family == family]
        if len(members) >= MIN_POOL_ROWS:
            pools[family] = members
    return {"level": LEVEL,
            "pools": {name: {"rows": len(rows), "upper_ratio": upper_ratio([r.measured_gib / r.predicted_gib for r in rows])}
                      for name, rows in pools.items()},
            "source": f"scripts/fit_memory_bound.py: split-conformal upper bound on measured / predicted peak memory "
                      f"over {len(measured)} measured peaks from {len(report.by_group)} sources (sextant validate "
                      f"memory), and per framework family with at least {MIN_POOL_ROWS} of them"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    path = resources.files("sextant.catalog").joinpath("data", "memory_bound.yaml")
    text = ("# The upper bound on peak memory of predict train (sextant.train.predict). Written by\n"
            "# scripts/fit_memory_bound.py; do not edit by hand.\n" + yaml.safe_dump(table(), sort_keys=False, width=110))
    if args.check:
        if path.read_text() != text:
            sys.exit("memory_bound.yaml differs from what the ledger gives now: run scripts/fit_memory_bound.py")
        print("memory_bound.yaml is current")
        return
    path.write_text(text)  # type: ignore[attr-defined]
    print(text)


if __name__ == "__main__":
    main()
