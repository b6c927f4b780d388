"""Pipeline-parallel layer assignment and schedule time.

Layers are split so that the first stage (which also holds the embedding) and the last stage
(output layer and loss) take the remainder when the layer count does not divide: Llama 3 405B
ran its 126 layers on 16 stages with one layer fewer on the first and last stage (Dubey et al.
2024, section 3.3.2). Every function broadcasts over NumPy arrays of pipeline degrees.

Schedule time for m micro-batches on p stages whose per-micro-batch times are t_i (forward plus
backward), with v virtual stages per rank:

    T = m * max_i t_i + (sum_i t_i - max_i t_i) / v

For equal stages this is (m + (p - 1) / v) * t: the bubble fraction (p - 1) / (v m) of
Narayanan et al. 2021 (section 2.2) for 1F1B (v = 1) and interleaved 1F1B. GPipe (Huang et al.
2019) has the same bubble and differs in memory (all m micro-batches in flight).
"""

from __future__ import annotations

import numpy as np


def stage_layers(num_layers: int, pp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layers on the first stage, on the fullest middle stage, and on the last stage.

    Every stage gets floor(L/p) layers; the L mod p left over go one each to middle stages first
    (the first and last stage also carry the embedding and the output layer), and only when every
    middle stage has one, to the first stage. With p = 1 the single stage is first and last;
    with p <= 2 there is no middle stage (its count is 0).
    """
    pp = np.asarray(pp, dtype=float)
    base = np.floor(num_layers / pp)
    extra = num_layers - base * pp
    middles = np.maximum(pp - 2, 0)
    n_mid = np.where(middles > 0, base + (extra > 0), 0.0)
    n_first = base + np.where(extra > middles, 1.0, 0.0)
    n_last = base.copy()
    n_first = np.where(pp == 1, num_layers, n_first)
    n_last = np.where(pp == 1, num_layers, n_last)
    return n_first, n_mid, n_last


def schedule_time(t_max, t_sum, num_microbatches, vpp) -> np.ndarray:
    """Time of the pipeline's forward and backward passes (see module docstring)."""
    return num_microbatches * t_max + (t_sum - t_max) / np.asarray(vpp, dtype=float)
