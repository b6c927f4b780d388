"""Strategies as columns of NumPy arrays: the form both ``predict`` (one row) and the planner
(millions of rows) evaluate, so that they share every formula."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sextant.spec.strategy import OFFLOAD_CODES, RECOMPUTE_CODES, SCHEDULE_CODES, Strategy


@dataclass(frozen=True)
class Candidates:
    """One strategy per row. Codes: recompute 0/1/2 = none/selective/full; schedule 0/1/2 =
    gpipe/1f1b/interleaved; offload 0/1/2/3 = none/cpu/nvme/interleaved (optimizer only). The
    offload columns default to none, expert tensor parallelism ``etp`` to ``tp``."""

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
    offload_optimizer: np.ndarray = field(default=None)  # type: ignore[assignment]
    offload_params: np.ndarray = field(default=None)  # type: ignore[assignment]
    offload_activations: np.ndarray = field(default=None)  # type: ignore[assignment]
    etp: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name in ("offload_optimizer", "offload_params", "offload_activations"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(len(self.dp), dtype=np.int64))
        if self.etp is None:
            object.__setattr__(self, "etp", np.array(self.tp, dtype=np.int64))

    @property
    def offloads(self) -> np.ndarray:
        return (self.offload_optimizer > 0) | (self.offload_params > 0) | (self.offload_activations > 0)

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
            offload_optimizer=col(OFFLOAD_CODES[strategy.offload_optimizer]),
            offload_params=col(OFFLOAD_CODES[strategy.offload_params]),
            offload_activations=col(OFFLOAD_CODES[strategy.offload_activations]),
            etp=col(strategy.resolved_etp),
        )

    def take(self, index: np.ndarray) -> Candidates:
        """The rows at ``index``, as a new table."""
        return Candidates(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})

    def row(self, i: int) -> dict[str, int | bool]:
        return {name: getattr(self, name)[i].item() for name in self.__dataclass_fields__}
