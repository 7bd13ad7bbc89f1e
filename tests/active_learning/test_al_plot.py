"""plot_fit: the extrapolation panel draws the profile band along C where it is given."""

from __future__ import annotations

import numpy as np
import pytest

from active_learning.fit import FitConfig, fit_law
from active_learning.plot import frontier_flops, plot_fit
from active_learning.profile import ProfileInterval, prediction_interval
from active_learning.scaling_law import HOFFMANN_2022


def _profile_lines(fig):
    """The band's two dashed lines (lower end first): the lines drawn in the profile's colour."""
    return [line for line in fig.axes[1].get_lines() if line.get_color() == "C1"]


def test_frontier_flops_runs_from_the_smallest_run_to_exactly_the_target(chinchilla_runs):
    runs = chinchilla_runs(noise=0.0)
    grid = frontier_flops(runs, 3.3e23, 7)
    assert grid[0] == pytest.approx(min(r.flops for r in runs)) and grid[-1] == 3.3e23
    assert np.all(np.diff(np.log(grid)) == pytest.approx(np.log(grid[1] / grid[0])))
    assert frontier_flops(runs, None, 4)[-1] == pytest.approx(100 * max(r.flops for r in runs))


def test_the_profile_band_is_drawn_along_c_and_parts_from_laplace_with_e_at_its_bound(tmp_path, chinchilla_runs):
    """Pure power-law runs, E at its bound: the dashed band spans each [lo, hi], and at the target its top
    is above Laplace's, which holds E at the bound."""
    theta = HOFFMANN_2022.copy()
    theta[0] = -40.0
    runs = chinchilla_runs(theta, noise=0.005, rng=np.random.default_rng(3))
    config = FitConfig()
    fit = fit_law(runs, config)
    band = [prediction_interval(runs, config, fit, float(c)) for c in frontier_flops(runs, 1e24, 4)]
    path = tmp_path / "fit.png"
    fig = plot_fit(fit, runs, str(path), target_flops=1e24, profile_band=band)
    assert path.stat().st_size > 0
    low, high = _profile_lines(fig)
    assert list(low.get_xdata()) == [p.flops for p in band] and list(high.get_xdata()) == [p.flops for p in band]
    assert list(low.get_ydata()) == pytest.approx([p.lo for p in band])
    assert list(high.get_ydata()) == pytest.approx([p.hi for p in band])
    assert band[-1].hi > fit.compute_optimal(1e24).loss.hi
    assert _profile_lines(plot_fit(fit, runs, str(path), target_flops=1e24)) == []  # none given, none drawn


def test_an_open_end_runs_along_the_edge_of_the_axes(tmp_path, chinchilla_runs):
    runs = chinchilla_runs(noise=0.01, rng=np.random.default_rng(0))
    fit = fit_law(runs)
    band = [ProfileInterval(1e22, 2.0, 2.2, None, None), ProfileInterval(1e24, 1.8, None, None, None)]
    fig = plot_fit(fit, runs, str(tmp_path / "fit.png"), target_flops=1e24, profile_band=band)
    low, high = _profile_lines(fig)
    bottom, top = fig.axes[1].get_ylim()
    assert list(low.get_ydata()) == [2.0, 1.8]
    assert list(high.get_ydata()) == [2.2, top] and top > 2.2
    assert bottom < 1.8
