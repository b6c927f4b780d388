"""Fit a framework preset's memory overhead to the GPU memory its measured runs showed.

    python scripts/fit_framework_memory.py deepspeed-megatron-2022

Two global parameters of one framework preset (frameworks.yaml), never per run: the memory a
GPU shows beyond the tensors Sextant accounts for (weights, gradients, optimizer state,
activations, ZeRO-3 buffers) is ``allocator_overhead`` x those tensors + ``runtime_reserved_gib``.
The data: the preset's sweep points with a measured memory figure (nvidia-smi, which counts what
the caching allocator holds as well as what is in use), fitted by least squares. Points that ran
out of memory are not fitted on; they test the result: a run that ran out should be predicted
not to fit, and one that ran should be predicted to.

It prints the in-sample errors, a leave-one-sweep-out cross-validation, and the out-of-memory
classification before and after.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from sextant.catalog.frameworks import get_framework
from sextant.resolve.framework import framework_costs
from sextant.train.predict import build_context
from sextant.train.step import evaluate
from sextant.units import GiB
from sextant.validate.sweep import load_sweeps


def points_of(framework: str):
    """(sweep id, label, measured GiB or None, ran out of memory, tensors GiB, capacity GiB)."""
    out = []
    for sweep in load_sweeps():
        if sweep.framework != framework:
            continue
        for point in sweep.points:
            ev = evaluate(*build_context(sweep.scenario(point)))
            tensors = sum(float(v[0]) for k, v in ev.memory_parts_bytes.items() if k not in ("fragmentation", "runtime")) / GiB
            out.append((sweep.id, point.label(), point.memory_gib, point.oom, tensors, ev.capacity_bytes / GiB))
    return out


def fit(points) -> tuple[float, float]:
    """(allocator_overhead, runtime_reserved_gib) minimising the squared error in GiB."""
    measured = [p for p in points if p[2] is not None]
    tensors = np.array([p[4] for p in measured])
    gap = np.array([p[2] for p in measured]) - tensors
    (fraction, fixed), *_ = np.linalg.lstsq(np.c_[tensors, np.ones_like(tensors)], gap, rcond=None)
    return float(fraction), float(fixed)


def predicted(point, fraction: float, fixed: float) -> float:
    return point[4] * (1.0 + fraction) + fixed


def summary(points, fraction: float, fixed: float) -> str:
    lines = []
    for sweep in sorted({p[0] for p in points}):
        members = [p for p in points if p[0] == sweep]
        errors = [predicted(p, fraction, fixed) / p[2] - 1 for p in members if p[2] is not None]
        oom = [p for p in members if p[3]]
        ran = [p for p in members if not p[3]]
        lines.append(
            f"  {sweep:8s} {len(errors):3d} measured: median |error| {statistics.median(abs(e) for e in errors):.1%}, "
            f"worst {max(errors, key=abs):+.1%}; out of memory predicted for "
            f"{sum(predicted(p, fraction, fixed) > p[5] for p in oom)} of {len(oom)}, "
            f"and for {sum(predicted(p, fraction, fixed) > p[5] for p in ran)} of {len(ran)} that ran")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework")
    args = parser.parse_args()
    costs = framework_costs(get_framework(args.framework))
    points = points_of(args.framework)
    print(f"{args.framework}: {len(points)} sweep points, {sum(p[2] is not None for p in points)} with memory")
    current = (costs.allocator_overhead, costs.runtime_reserved_bytes / GiB)
    print(f"current preset: allocator_overhead {current[0]:.3f}, runtime_reserved_gib {current[1]:.2f}")
    print(summary(points, *current))
    fraction, fixed = fit(points)
    print(f"fitted on all: allocator_overhead {fraction:.3f}, runtime_reserved_gib {fixed:.2f}")
    print(summary(points, fraction, fixed))
    print("leave one sweep out (fitted on the others, scored on it):")
    for sweep in sorted({p[0] for p in points}):
        f, c = fit([p for p in points if p[0] != sweep])
        print(f"  without {sweep}: allocator_overhead {f:.3f}, runtime_reserved_gib {c:.2f}")
        print(summary([p for p in points if p[0] == sweep], f, c))


if __name__ == "__main__":
    main()
