"""Fit the values of a fitted hardware profile or framework preset to the runs it names.

    python scripts/fit_profile.py h100 [a100 ...] [--from-priors]

ENTRY names an entry of src/sextant/validate/data/fits.yaml: the values fitted (global to a GPU's
profile or to a framework preset, never per row), their priors and bounds, and the ledger rows and
sweeps they are fitted on. The objective is the sum of squared log errors (over- and
under-prediction weigh alike), minimised by sextant.validate.fitting (bounded Nelder-Mead), the
same fitter `sextant validate train` uses for its leave-one-source-out folds. It prints the values
as the catalog states them, the fitted values, the in-sample error, and a leave-one-source-out
cross-validation over the entry's own data. Copy the printed values into
src/sextant/catalog/data/profiles.yaml or frameworks.yaml with the provenance line it prints.
"""

from __future__ import annotations

import argparse
import math
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
from sextant.validate.sweep import load_sweeps


def summary(observations, values) -> str:
    apes = [abs(predicted(o, values) / o.measured - 1) for o in observations]
    return f"median APE {statistics.median(apes):.1%}, max {max(apes):.1%} over {len(apes)} runs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("entries", nargs="+", help="entries of validate/data/fits.yaml")
    ap.add_argument("--from-priors", action="store_true", help="start the search at the priors, not the catalog")
    args = ap.parse_args()
    fits = {e.name: e for e in load_fits()}
    rows = {r.id: r for r in load_training_ledgers()}
    sweeps = {s.id: s for s in load_sweeps()}
    for name in args.entries:
        if name not in fits:
            raise SystemExit(f"error: no fit entry {name!r}; one of {', '.join(fits)}")
        entry = fits[name]
        data = [row_observation(rows[i]) for i in entry.rows] + [o for s in entry.sweeps
                                                                for o in sweep_observations(sweeps[s])]
        current = catalog_values(entry, data[0])
        fitted = fit(entry, data, None if args.from_priors else current, max_evals=400)
        print(f"{name}: catalog {current}: {summary(data, {})}")
        print(f"  fitted {({k: round(v, 4) for k, v in fitted.items()})}: {summary(data, fitted)}")
        groups = sorted({o.group for o in data})
        if len(groups) > 1:
            held = []
            for group in groups:
                values = fit(entry, [o for o in data if o.group != group], current)
                held += [abs(math.log(predicted(o, values) / o.measured)) for o in data if o.group == group]
            print(f"  leave-one-source-out ({', '.join(groups)}): median |log error| {statistics.median(held):.3f}, "
                  f"max {max(held):.3f}")
        print(f"  provenance: fitted by scripts/fit_profile.py {name} on {', '.join(entry.rows + entry.sweeps)}")


if __name__ == "__main__":
    main()
