"""Where an engine's seconds went: per part of an iteration and per busy resource, summed over
its iterations in the order they ran.

Each iteration adds its seconds to each running total, one iteration at a time, so a run of
iterations planned at once gives the totals, to the last bit, that the same iterations planned one
by one give (floating-point addition is not associative: a sum in another order, or NumPy's
pairwise ``np.sum``, differs in the last bits). The additions are made in C where that is cheap:
``functools.reduce`` over a list or a float repeated a few times, a closed form for a float repeated
many times (``repeated_sum``), a cumulative sum over an array.
"""

from __future__ import annotations

import math
import operator
from functools import reduce
from itertools import repeat

import numpy as np

#: Past this many iterations a repeated float is added in closed form (see repeated_sum).
CLOSED_FORM_MIN = 64


def repeated_sum(total: float, value: float, count: int) -> float:
    """``total`` plus ``value`` (positive), ``count`` times, one addition at a time, to the last
    bit, in a few steps whatever ``count``. While the running total and the next sum stay in one
    binade [2^e, 2^(e+1)) they are integer multiples ``m`` of its ulp ``u``, and each addition
    rounds ``m * u + value`` to the nearest multiple: it adds the same ``q = round(value / u)``
    every time, unless ``value / u`` falls exactly halfway (ties round to even, which depends on
    ``m``; those additions, and the ones that cross into the next binade, are made one at a
    time). IEEE 754 round-to-nearest-even; checked against one-at-a-time addition in tests."""
    while count:
        if total < value:  # the sum lands in a higher binade than the total
            total += value
            count -= 1
            continue
        ulp = math.ulp(total)
        m = int(total / ulp)  # exact: a multiple of its ulp, below 2^53
        scaled = value / ulp  # exact: a power-of-two scaling
        whole = int(scaled)
        rest = scaled - whole
        q = whole + (rest > 0.5)
        if q == 0 and rest != 0.5:
            return total  # each addition rounds back to the total
        steps = min(count, ((1 << 53) - 1 - m) // q) if q and rest != 0.5 else 0
        if steps == 0:
            total += value
            count -= 1
            continue
        total = float(m + steps * q) * ulp
        count -= steps
    return total


def added(total: float, value, count: int) -> float:
    """``total`` plus ``count`` iterations' seconds, one at a time in order: ``value`` is a float
    that each iteration adds, or a list or array of one per iteration. (This runs per column of
    every group of iterations a simulation plans: the cases are in order of frequency.)"""
    cls = value.__class__
    if cls is float:
        if not value:
            return total  # adding 0.0 changes no total (all seconds are non-negative)
        if count == 1:
            return total + value
        if count < CLOSED_FORM_MIN:
            return reduce(operator.add, repeat(value, count), total)
        return repeated_sum(total, value, count)
    if cls is list:
        return reduce(operator.add, value, total)
    if isinstance(value, np.ndarray):
        # A cumulative sum adds one element at a time, in order.
        ends = np.empty(len(value) + 1)
        ends[0] = total
        ends[1:] = value
        return float(ends.cumsum()[-1])
    return added(total, float(value), count)  # another real number (an int, a NumPy scalar)


class SecondsLog:
    """Seconds per key (an iteration's parts, the resources it keeps busy), added one group of
    iterations at a time: ``add(count, parts, busy)``, or one with ``add_one``; ``totals()`` is
    every key's sum. A caller that adds iteration by iteration itself (a decode run evaluated in
    plain Python or NumPy) reads and writes ``running``, or ``values`` and ``store``."""

    def __init__(self, parts: tuple[str, ...], resources: tuple[str, ...]) -> None:
        self.parts, self.resources = parts, resources
        #: Each key's sum so far (a caller adding iteration by iteration reads and writes it).
        self.running = dict.fromkeys((*parts, *resources), 0.0)

    def add(self, count: int, parts: tuple, busy: dict) -> None:
        """``count`` iterations that add ``parts`` (in the order of ``self.parts``) and ``busy``
        seconds per resource; a value is a float for every iteration or a list or array of one
        per iteration."""
        t = self.running
        for key, value in zip(self.parts, parts):
            t[key] = added(t[key], value, count)
        for key, value in busy.items():
            t[key] = added(t[key], value, count)

    def add_one(self, parts: tuple, busy: dict) -> None:
        """One iteration's seconds: ``add(1, parts, busy)`` with real numbers, without a call per
        key (this runs for every iteration planned alone)."""
        t = self.running
        for key, value in zip(self.parts, parts):
            if value:  # adding 0.0 changes no total
                t[key] = t[key] + (value if value.__class__ is float else float(value))
        for key, value in busy.items():
            if value:
                t[key] = t[key] + (value if value.__class__ is float else float(value))

    def values(self, keys: tuple[str, ...]) -> list[float]:
        """The running totals of ``keys``, in order."""
        t = self.running
        return [t[key] for key in keys]

    def store(self, keys: tuple[str, ...], totals: list[float]) -> None:
        """Set the running totals of ``keys`` (a caller that added to them itself)."""
        self.running.update(zip(keys, totals))

    def totals(self) -> tuple[dict[str, float], dict[str, float]]:
        """(seconds per part, seconds per resource) so far."""
        t = self.running
        return {k: t[k] for k in self.parts}, {k: t[k] for k in self.resources}
