"""Fitting microbenchmark records into profile parameters (NumPy and SciPy; no PyTorch here).

* GEMMs: the measured efficiencies on the grid become a :class:`EfficiencyTable` per dtype (the cost
  model interpolates it), and the saturating curve ``e_max * s(m) s(n) s(k)``, ``s(x) = x/(x+h)``,
  is fitted by least squares in log space for the profile's scalar fields (SciPy's
  ``least_squares``, part of the calibrate extra), with its R^2 and the parameters' standard errors.
* Element-wise kernels and collectives: the affine alpha-beta model ``t = alpha + bytes / beta``
  (Hockney 1994), fitted by least squares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sextant.spec.profile import EfficiencyTable


def r_squared(observed: np.ndarray, predicted: np.ndarray) -> float:
    observed = np.asarray(observed, float)
    residual = float(np.sum((observed - predicted) ** 2))
    total = float(np.sum((observed - observed.mean()) ** 2))
    return 1.0 - residual / total if total > 0 else 1.0


def gemm_table(records: Sequence[dict], peak_flops: float) -> EfficiencyTable:
    """The efficiency table of one dtype from records with keys m, n, k, seconds."""
    ms = sorted({r["m"] for r in records})
    ns = sorted({r["n"] for r in records})
    ks = sorted({r["k"] for r in records})
    by_shape = {(r["m"], r["n"], r["k"]): r for r in records}
    missing = [(m, n, k) for m in ms for n in ns for k in ks if (m, n, k) not in by_shape]
    if missing:
        raise ValueError(f"GEMM grid incomplete: {len(missing)} shapes missing, e.g. {missing[0]}")
    eff = [min(1.5, 2.0 * m * n * k / by_shape[(m, n, k)]["seconds"] / peak_flops) for m in ms for n in ns for k in ks]
    return EfficiencyTable(dims=["m", "n", "k"], axes=[ms, ns, ks], efficiency=eff)


#: The half-efficiency size searched: 0 (no under-filling) to a GEMM dimension of 8192.
MAX_HALF_DIM = 8192.0


def fit_gemm_curve(records: Sequence[dict], peak_flops: float) -> dict[str, float]:
    """Least-squares fit of ``e_max * s(m) s(n) s(k)`` to measured efficiencies, in log space
    (over- and under-prediction weigh alike), by SciPy's trust-region reflective ``least_squares``
    with ``h`` bounded to [0, MAX_HALF_DIM]. Also returns each parameter's standard error from the
    Jacobian at the optimum (``s^2 (J^T J)^-1``, ``s^2`` the residual variance; ``e_max``'s by the
    delta method), the fit's R^2 and its point count."""
    from scipy.optimize import least_squares

    dims = np.array([[r["m"], r["n"], r["k"]] for r in records], float)
    eff = 2.0 * dims.prod(axis=1) / np.array([r["seconds"] for r in records]) / peak_flops
    log_eff = np.log(eff)

    def residuals(p: np.ndarray) -> np.ndarray:
        log_max, half = p
        return log_max + np.log(dims / (dims + half)).sum(axis=1) - log_eff

    def jacobian(p: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(dims)), -(1.0 / (dims + p[1])).sum(axis=1)])

    start = np.array([float(np.max(log_eff)), 64.0])
    solution = least_squares(residuals, start, jac=jacobian, bounds=([-np.inf, 0.0], [np.inf, MAX_HALF_DIM]),
                             method="trf", x_scale=[1.0, 64.0])
    log_max, half = (float(v) for v in solution.x)
    free = len(dims) - 2
    covariance = (np.linalg.pinv(solution.jac.T @ solution.jac) * (2.0 * solution.cost / free)
                  if free > 0 else np.full((2, 2), np.nan))
    stderr_log_max, stderr_half = np.sqrt(np.maximum(np.diag(covariance), 0.0))
    e_max = float(np.exp(log_max))
    predicted = e_max * (dims / (dims + half)).prod(axis=1)
    return {"gemm_max_efficiency": min(1.0, e_max), "gemm_half_dim": half,
            "gemm_max_efficiency_stderr": e_max * float(stderr_log_max), "gemm_half_dim_stderr": float(stderr_half),
            "r_squared": r_squared(eff, predicted), "points": float(len(records))}


def fit_affine(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float, float]:
    """(alpha seconds, beta bytes/s, R^2) of ``t = alpha + size / beta``; alpha clipped at 0."""
    x = np.asarray(sizes, float)
    y = np.asarray(seconds, float)
    if len(x) < 2:
        return 0.0, float(x[0] / y[0]), 1.0
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 0:  # no size dependence resolved: treat the largest transfer as bandwidth-bound
        i = int(np.argmax(x))
        return 0.0, float(x[i] / y[i]), 0.0
    alpha = max(0.0, float(intercept))
    predicted = alpha + x * slope
    return alpha, float(1.0 / slope), r_squared(y, predicted)


def attention_table(efficiency_by_shape: dict[tuple[int, int], list[float]]) -> EfficiencyTable:
    """The attention table of one dtype over (seq, head_dim): the median efficiency measured at
    each point (several batch x heads products may share one)."""
    seqs = sorted({s for s, _ in efficiency_by_shape})
    dims = sorted({d for _, d in efficiency_by_shape})
    missing = [(s, d) for s in seqs for d in dims if (s, d) not in efficiency_by_shape]
    if missing:
        raise ValueError(f"attention grid incomplete: {len(missing)} shapes missing, e.g. {missing[0]}")
    eff = [min(1.5, float(np.median(efficiency_by_shape[(s, d)]))) for s in seqs for d in dims]
    return EfficiencyTable(dims=["seq", "head_dim"], axes=[seqs, dims], efficiency=eff)
