"""Whether a calibration can be trusted: goodness of fit, spread over repeats, and the load other
processes put on the machine while it ran.

A calibration on a shared or busy machine measures the neighbours as much as the device: one
``calibrate --quick`` accepted a GEMM fit with R^2 of -0.05, and the per-layer overhead moved 280x
between two runs minutes apart. Each check below has a bound; a profile that fails one is written
with ``trust.trusted = False`` and its problems, and a prediction made with it says so
(``sextant.resolve.hardware``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from sextant.spec.profile import CalibrationTrust

#: Least R^2 of the GEMM efficiency curve: below it the curve explains less than half the
#: variation of the measured efficiencies, so the profile's GEMM times are guesses.
MIN_GEMM_R2 = 0.5
#: Least R^2 of the element-wise time-vs-bytes line (a memory-bound copy is close to a line).
MIN_ELEMENTWISE_R2 = 0.8
#: Largest ratio between two measurements of the same overhead, taken at the start and the end.
MAX_REPEAT_SPREAD = 2.0
#: Largest share of the machine's CPU time that other processes may take while it runs.
MAX_FOREIGN_LOAD = 0.25


def _cpu_busy_seconds() -> float | None:
    """CPU-seconds all processes spent busy since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class LoadMeter:
    """The share of the machine's CPU time other processes used between :meth:`start` and
    :meth:`share`: all busy time (/proc/stat) less this process's and its children's."""

    wall: float = 0.0
    busy: float | None = None
    own: float = 0.0

    def start(self) -> LoadMeter:
        self.wall, self.busy, self.own = time.perf_counter(), _cpu_busy_seconds(), _own_cpu_seconds()
        return self

    def share(self) -> float | None:
        busy = _cpu_busy_seconds()
        if self.busy is None or busy is None:
            return None
        capacity = (time.perf_counter() - self.wall) * (os.cpu_count() or 1)
        foreign = (busy - self.busy) - (_own_cpu_seconds() - self.own)
        return max(0.0, foreign / capacity) if capacity > 0 else None


def assess(*, gemm_r2: float, elementwise_r2: float, repeats: dict[str, tuple[float, float]],
           foreign_load: float | None) -> CalibrationTrust:
    """The verdict on one calibration. ``repeats`` maps a quantity to two measurements of it."""
    problems = []
    if not gemm_r2 >= MIN_GEMM_R2:
        problems.append(f"the GEMM efficiency curve fits with R^2 {gemm_r2:.2f} (at least {MIN_GEMM_R2} needed)")
    if not elementwise_r2 >= MIN_ELEMENTWISE_R2:
        problems.append(f"the element-wise bandwidth line fits with R^2 {elementwise_r2:.2f} "
                        f"(at least {MIN_ELEMENTWISE_R2} needed)")
    spreads = {}
    for name, (first, second) in repeats.items():
        low, high = min(first, second), max(first, second)
        spreads[name] = high / low if low > 0 else 1e9
        if not spreads[name] <= MAX_REPEAT_SPREAD:
            problems.append(f"{name.replace('_', ' ')} moved {spreads[name]:.1f}x between two measurements "
                            f"(at most {MAX_REPEAT_SPREAD:g}x)")
    if foreign_load is not None and foreign_load > MAX_FOREIGN_LOAD:
        problems.append(f"other processes used {foreign_load:.0%} of the CPUs while it ran "
                        f"(at most {MAX_FOREIGN_LOAD:.0%}); calibrate on an idle machine")
    checks = {"gemm_r_squared": gemm_r2, "elementwise_r_squared": elementwise_r2,
              **{f"{k}_spread": v for k, v in spreads.items()}}
    if foreign_load is not None:
        checks["foreign_cpu_load"] = foreign_load
    checks = {k: v for k, v in checks.items() if math.isfinite(v)}  # a failed fit's NaN is a problem above
    return CalibrationTrust(trusted=not problems, problems=problems, checks=checks)
