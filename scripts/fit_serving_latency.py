"""Fit the cost of one kernel in a replayed CUDA graph (``graph_kernel_overhead_s`` of the
hardware profiles) on the decode metrics of the serving-latency ledger, and cross-validate it
leave-one-source-out.

Why this parameter: with the launches gone, a decode step of a small model still takes longer than
its weights take to stream (Qwen3-8B at one sequence on an H100: 7.3 ms measured, 6.1 ms to read
16 GB at 80% of the bandwidth). What remains is per kernel: the GPU starts each node of the graph
after the previous one ends, and a small kernel ramps up to the bandwidth and drains its last wave
(hundreds of kernels a step). It is one number per root profile (ampere, hopper; the other
architectures inherit theirs), fitted on the ITL and TPOT of the ledger's decode-dominated rows on GPUs of that root.

How: the ledger is simulated at three values of the parameter; each prediction is interpolated
quadratically in between (the ITL of a run moves smoothly with it), and the value minimising the
median |log(predicted / measured)| of the ITL/TPOT metrics over a set of sources is found on a
grid. Each source is predicted with the value fitted on the others (leave-one-source-out); the
values fitted on all of them are written into catalog/data/profiles.yaml, and the fit's record into
validate/data/serving-fit.yaml, which ``sextant validate serve-latency`` reads for its held-out
figures.

    python scripts/fit_serving_latency.py            # fit, write both files
    python scripts/fit_serving_latency.py --dry-run  # print only
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import yaml

from sextant.catalog.hardware import get_profile
from sextant.validate.serve_latency import FAMILIES, load_latency_ledger, validate_serving_latency

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "src/sextant/catalog/data/profiles.yaml"
RECORD = ROOT / "src/sextant/validate/data/serving-fit.yaml"
#: Values simulated; predictions in between are interpolated (seconds per kernel).
KNOTS = (0.5e-6, 4.0e-6, 8.0e-6)
GRID = np.arange(0.0, 8.0001e-6, 0.05e-6)
FITTED_METRICS = FAMILIES["itl"]
ROOT_PROFILES = ("ampere", "hopper")


def root_profile(gpu: str) -> str:
    """The root of a GPU's profile inheritance (ampere or hopper)."""
    profiles = yaml.safe_load(PROFILES.read_text())
    key = gpu if gpu in profiles else get_profile(gpu).name
    key = gpu if gpu in profiles else next(k for k, v in profiles.items() if v.get("name") == key)
    while "inherit" in profiles[key]:
        key = profiles[key]["inherit"]
    return key


def decode_dominated() -> set[str]:
    """Rows whose time is mostly decode (output at least a quarter of the input, 64 tokens or
    more): the per-kernel cost of graphed decode steps is fitted on them. Prefill-heavy bursts
    (thousands of prompt tokens for a hundred output) measure the scheduler and the prefill, and
    barely move with it."""
    rows = set()
    for row in load_latency_ledger():
        w = row.workload
        inp, out = w.get("input_len", 512), w.get("output_len", 256)
        if isinstance(inp, int) and isinstance(out, int) and out >= 64 and 4 * out >= inp:
            rows.add(row.id)
    return rows


def simulate(value: float) -> dict[tuple[str, int, str], tuple[float, float, str, str]]:
    """(row, stage, metric) -> (predicted, measured, source, gpu) with every profile's parameter at ``value``."""
    def patched(gpu: str):
        return get_profile(gpu).model_copy(update={"graph_kernel_overhead_s": value})
    with mock.patch("sextant.resolve.hardware.get_profile", patched):
        report = validate_serving_latency(progress=lambda i, n: print(f"\r  {value * 1e6:.1f} us: {i}/{n}",
                                                                    end="", file=sys.stderr))
    print(file=sys.stderr)
    return {(s.id, s.stage, k): (s.predicted[k], s.measured[k], s.source, s.regime["gpu"])
            for s in report.stages for k in s.errors}


def surrogate(runs: list[dict]) -> dict[tuple[str, int, str], np.ndarray]:
    """Per (row, stage, metric), the prediction on GRID, quadratic through the KNOTS."""
    out = {}
    for key in runs[0]:
        ys = [run[key][0] for run in runs]
        coeffs = np.polyfit(np.asarray(KNOTS) * 1e6, ys, 2)
        out[key] = np.polyval(coeffs, GRID * 1e6)
    return out


def fit(curves: dict, measured: dict, keys: list) -> float:
    """The grid value minimising the median |log error| of ``keys``."""
    logs = np.array([np.abs(np.log(np.maximum(curves[k], 1e-9) / measured[k])) for k in keys])
    return float(GRID[int(np.argmin(np.median(logs, axis=0)))])


def summary(errors: list[float]) -> dict[str, float]:
    a = np.abs(errors)
    return {"rows": len(a), "median": round(float(np.median(a)), 4), "p90": round(float(np.percentile(a, 90)), 4),
            "max": round(float(a.max()), 4)}


def errors_at(curves: dict, measured: dict, keys: list, value: float) -> dict[str, list[float]]:
    i = int(np.argmin(np.abs(GRID - value)))
    by_family: dict[str, list[float]] = {f: [] for f in FAMILIES}
    for k in keys:
        family = next(f for f, ms in FAMILIES.items() if k[2] in ms)
        by_family[family].append(float(curves[k][i] / measured[k] - 1))
    return by_family


def write_profiles(values: dict[str, float]) -> None:
    text = PROFILES.read_text()
    for name, value in values.items():
        block = re.search(rf"^{name}:\n(?:  .*\n|\s*\n)*", text, re.M)
        assert block is not None, name
        body = block.group(0)
        body = re.sub(r"  graph_kernel_overhead_s: .*\n", "", body)
        body = body.replace("  kernel_overhead_s:", f"  graph_kernel_overhead_s: {value:.2e}\n  kernel_overhead_s:", 1)
        text = text[:block.start()] + body + text[block.end():]
    PROFILES.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the fit, write nothing")
    args = parser.parse_args()
    runs = [simulate(v) for v in KNOTS]
    curves = surrogate(runs)
    measured = {k: v[1] for k, v in runs[0].items()}
    source = {k: v[2] for k, v in runs[0].items()}
    root = {k: root_profile(v[3]) for k, v in runs[0].items()}
    keys = list(curves)
    record: dict = {"parameter": "graph_kernel_overhead_s", "values_s": {}, "knots_s": list(KNOTS),
                    "fitted_metrics": list(FITTED_METRICS), "in_sample": {}, "held_out": {}, "per_source": {}}
    values: dict[str, float] = {}
    inside: dict[str, list[float]] = {f: [] for f in FAMILIES}
    held: dict[str, list[float]] = {f: [] for f in FAMILIES}
    held_decode: dict[str, list[float]] = {f: [] for f in FAMILIES}
    decode_rows = decode_dominated()
    record["fitted_rows"] = sorted(decode_rows)
    for name in ROOT_PROFILES:
        mine_root = [k for k in keys if root[k] == name]
        fitted_keys = [k for k in mine_root if k[2] in FITTED_METRICS and k[0] in decode_rows]
        if not fitted_keys:
            continue
        values[name] = fit(curves, measured, fitted_keys)
        record["values_s"][name] = values[name]
        for family, errs in errors_at(curves, measured, mine_root, values[name]).items():
            inside[family].extend(errs)
        for src in sorted({source[k] for k in mine_root}):
            others = [k for k in fitted_keys if source[k] != src]
            mine = [k for k in mine_root if source[k] == src]
            # A source alone on its root keeps the prior: nothing else was measured there.
            v = fit(curves, measured, others) if others else KNOTS[0]
            record["per_source"].setdefault(src, {})[name] = v
            for family, errs in errors_at(curves, measured, mine, v).items():
                held[family].extend(errs)
            decode_mine = [k for k in mine if k[0] in decode_rows]
            for family, errs in errors_at(curves, measured, decode_mine, v).items():
                held_decode[family].extend(errs)
    for family, errs in inside.items():
        if errs:
            record["in_sample"][family] = summary(errs)
    for family, errs in held.items():
        if errs:
            record["held_out"][family] = summary(errs)
    record["held_out_decode_dominated"] = {f: summary(e) for f, e in held_decode.items() if e}
    print(yaml.safe_dump(record, sort_keys=False))
    if not args.dry_run:
        write_profiles(values)
        RECORD.write_text("# Written by scripts/fit_serving_latency.py: the per-kernel cost of a replayed CUDA "
                          "graph, fitted on the\n# serving-latency ledger's ITL/TPOT, with each source's "
                          "value fitted without it (leave-one-source-out).\n"
                          + yaml.safe_dump(record, sort_keys=False))


if __name__ == "__main__":
    main()
