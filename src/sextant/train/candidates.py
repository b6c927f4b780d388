"""Strategies as columns of NumPy arrays: the form both ``predict`` (one row) and the planner
(millions of rows) evaluate, so that they share every formula."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sextant.spec.strategy import RECOMPUTE_CODES, SCHEDULE_CODES, Strategy


@dataclass(frozen=True)
class Candidates:
    """One strategy per row. Codes: recompute 0/1/2 = none/selective/full; schedule 0/1/2 =
    gpipe/1f1b/interleaved."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    vpp: np.ndarray
    zero: np.ndarray
    micro_batch: np.ndarray
    recompute: np.ndarray
    sequence_parallel: np.ndarray
    schedule: np.ndarray

    def __len__(self) -> int:
        return int(self.dp.shape[0])

    @classmethod
    def from_strategy(cls, strategy: Strategy, dp: int) -> Candidates:
        def col(value, dtype=np.int64) -> np.ndarray:
            return np.array([value], dtype=dtype)

        return cls(
            dp=col(dp),
            tp=col(strategy.tp),
            pp=col(strategy.pp),
            cp=col(strategy.cp),
            ep=col(strategy.ep),
            vpp=col(strategy.vpp),
            zero=col(strategy.zero),
            micro_batch=col(strategy.micro_batch),
            recompute=col(RECOMPUTE_CODES[strategy.recompute]),
            sequence_parallel=col(strategy.sequence_parallel, bool),
            schedule=col(SCHEDULE_CODES[strategy.resolved_schedule]),
        )

    def take(self, index: np.ndarray) -> Candidates:
        """The rows at ``index``, as a new table."""
        return Candidates(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})

    def row(self, i: int) -> dict[str, int | bool]:
        return {name: getattr(self, name)[i].item() for name in self.__dataclass_fields__}
