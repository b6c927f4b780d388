"""The KV blocks a run of decode-only iterations takes, in closed form.

Each decoding sequence needs a new block every ``block_size`` steps, at a step fixed by its
context's phase (``Engine.phase[i]``: sequences that cross into a new block at steps ``i`` modulo
the block size). The blocks a run takes therefore repeat with the period of the block size: a
run's needs follow from one cycle's prefix sums, whatever its length.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockCycle:
    """Blocks one whole cycle of ``block_size`` steps takes (``cycle``), and the blocks the first
    ``r`` steps take (``prefix[r]``, ``r < block_size``), counted from the step after a run's first."""

    cycle: int
    prefix: list[int]

    @classmethod
    def after(cls, phase: list[int], first: int) -> BlockCycle:
        size = len(phase)
        prefix = [0] * size
        for r in range(1, size):
            prefix[r] = prefix[r - 1] + phase[(first + r) % size]
        return cls(prefix[-1] + phase[first % size], prefix)

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
