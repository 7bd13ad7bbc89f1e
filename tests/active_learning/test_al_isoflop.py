"""Approach 2: IsoFLOP parabolas recover the allocation exponents of the generating law."""

from __future__ import annotations

import numpy as np
import pytest

from active_learning.isoflop import fit_isoflop, group_by_budget
from active_learning.scaling_law import Observation


def test_isoflop_profiles_recover_the_compute_optimal_exponents(chinchilla_runs, isoflop_points):
    # Hoffmann et al.'s law: N_opt ~ C^(beta/(alpha+beta)) = C^0.4516, D_opt ~ C^0.5484.
    n, d = isoflop_points(budgets=np.logspace(18, 21, 4), per_budget=9, spread=3.0)
    fit = fit_isoflop(chinchilla_runs(n=n, d=d))
    assert len(fit.profiles) == 4
    assert fit.a == pytest.approx(0.28 / 0.62, abs=0.01)
    assert fit.b == pytest.approx(0.34 / 0.62, abs=0.01)
    assert fit.a + fit.b == pytest.approx(1.0, abs=1e-6)
    assert fit.n_opt(1e20) * fit.d_opt(1e20) * 6 == pytest.approx(1e20, rel=1e-3)


def test_runs_group_by_budget():
    runs = [Observation(n, 1e18 / (6 * n), 3.0) for n in (1e7, 2e7)] + [Observation(1e7, 1e10, 3.0)]
    assert [len(g) for g in group_by_budget(runs)] == [1, 2]  # 6e17 FLOPs, then two at 1e18


def test_too_few_profiles_is_an_error():
    runs = [Observation(n, 1e18 / (6 * n), 3.0 + 0.1 * i) for i, n in enumerate((1e7, 2e7, 4e7))]
    with pytest.raises(ValueError, match="two budgets"):
        fit_isoflop(runs)
