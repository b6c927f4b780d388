"""The KV blocks a run of decode-only iterations takes, in closed form.

Each decoding sequence needs a new block every ``block_size`` steps, at a step fixed by its
context's phase (``Engine.phase[i]``: sequences that cross into a new block at steps ``i`` modulo
the block size). The blocks a run takes therefore repeat with the period of the block size: a
run's needs follow from one cycle's prefix sums, whatever its length.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True)
class BlockCycle:
    """Blocks one whole cycle of ``block_size`` steps takes (``cycle``), and the blocks the first
    ``r`` steps take (``prefix[r]``, ``r < block_size``), counted from the step after a run's first."""

    cycle: int
    prefix: list[int]

    @classmethod
    def after(cls, phase: list[int], first: int) -> BlockCycle:
        size = len(phase)
        s = (first + 1) % size
        turned = phase[s:] + phase[:s]  # the blocks of steps first + 1, first + 2, ..., first + size
        prefix = [0, *accumulate(turned[:-1])]
        return cls(prefix[-1] + turned[-1], prefix)

    def taken(self, later: int) -> int:
        """Blocks the ``later`` steps after the run's first take."""
        whole, rest = divmod(later, len(self.prefix))
        return whole * self.cycle + self.prefix[rest]

    def steps_within(self, free: int, later: int) -> int:
        """How many of the ``later`` steps after the run's first find their blocks among ``free``,
        in order (the prefix sums only grow)."""
        if self.cycle == 0:
            return later
        whole = free // self.cycle  # every step inside whole cycles that fit does
        rest = bisect.bisect_right(self.prefix, free - whole * self.cycle) - 1
        return min(later, whole * len(self.prefix) + rest)


def blocks_taken(phase: list[int], first: int, steps: int, cycle: int | None = None) -> int:
    """Blocks the ``steps`` steps after step ``first`` take (``BlockCycle.after(phase,
    first).taken(steps)``, without tabulating the cycle); ``cycle`` is ``sum(phase)`` where the
    caller knows it (an engine's decoding sequences, each in one phase)."""
    if steps == 0:
        return 0
    size = len(phase)
    whole, rest = divmod(steps, size)
    s = (first + 1) % size
    tail = phase[s:s + rest]
    if len(tail) < rest:
        tail = tail + phase[:rest - len(tail)]
    return (whole * (sum(phase) if cycle is None else cycle) if whole else 0) + sum(tail)
