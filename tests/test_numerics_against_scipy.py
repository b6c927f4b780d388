"""The core's hand-written numerics, checked against SciPy's (a test dependency only: the core
install stays NumPy-only, and these run on every prediction, validation or fit)."""

from __future__ import annotations

import numpy as np
import pytest

scipy = pytest.importorskip("scipy")

from scipy import optimize, stats  # noqa: E402
from scipy.interpolate import RegularGridInterpolator  # noqa: E402

from sextant.spec.profile import EfficiencyTable  # noqa: E402
from sextant.validate.fitting import nelder_mead  # noqa: E402
from sextant.validate.sweep import spearman  # noqa: E402


@pytest.mark.parametrize("seed", range(5))
def test_spearman_equals_scipys_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=25).astype(float)  # many ties
    b = a + rng.normal(0.0, 2.0, size=25)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    c, d = rng.normal(size=40), rng.normal(size=40)
    assert spearman(c, d) == pytest.approx(stats.spearmanr(c, d).statistic, abs=1e-12)


def test_efficiency_table_interpolation_equals_scipys_multilinear_in_log2():
    rng = np.random.default_rng(3)
    axes = [[64, 256, 1024, 4096], [128, 512, 8192], [256, 2048]]
    values = rng.uniform(0.2, 0.9, size=(4, 3, 2))
    table = EfficiencyTable(dims=["m", "n", "k"], axes=axes, efficiency=values.ravel().tolist())
    reference = RegularGridInterpolator([np.log2(a) for a in axes], values, method="linear")
    points = np.column_stack([rng.uniform(64, 4096, 200), rng.uniform(128, 8192, 200), rng.uniform(256, 2048, 200)])
    ours = table.interpolate(points[:, 0], points[:, 1], points[:, 2])
    np.testing.assert_allclose(ours, reference(np.log2(points)), rtol=1e-12)
    # Outside the grid the edge holds (SciPy would extrapolate or refuse: clamp for it).
    far = np.array([[1e6, 1.0, 1e9]])
    clamped = np.log2([[4096, 128, 2048]])
    assert float(table.interpolate(*far.T)[0]) == pytest.approx(float(reference(clamped)[0]))


@pytest.mark.parametrize("start", [(-1.2, 1.0), (2.0, 2.0), (0.0, -1.0)])
def test_nelder_mead_finds_what_scipys_finds(start):
    def rosenbrock(x):
        return float((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2)

    def bowl(x):  # the shape the fits meet: a smooth valley in scaled coordinates
        return float(3 * (x[0] - 0.3) ** 2 + (x[1] + 0.2) ** 2 + 0.5 * (x[0] - 0.3) * (x[1] + 0.2))

    x0 = np.array(start)
    ours = nelder_mead(bowl, x0, max_evals=400, xtol=1e-6, ftol=1e-12)
    theirs = optimize.minimize(bowl, x0, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-14}).x
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    hard = nelder_mead(rosenbrock, x0, max_evals=4000, xtol=1e-8, ftol=1e-14)
    assert rosenbrock(hard) < 1e-6
