"""plot_fit: the extrapolation panel draws the profile interval of the loss at the target where it is given."""

from __future__ import annotations

import numpy as np
import pytest

from active_learning.fit import FitConfig, fit_law
from active_learning.plot import plot_fit
from active_learning.profile import prediction_interval
from active_learning.scaling_law import HOFFMANN_2022


def _profile_lines(fig):
    right = fig.axes[1]
    return [line for line in right.get_lines() if "profile interval" in str(line.get_label())]


def test_the_profile_interval_is_drawn_at_the_target_with_its_ends(tmp_path, chinchilla_runs):
    """Pure power-law runs, E at its bound: the profile bar spans [lo, hi], above Laplace's band at the top."""
    theta = HOFFMANN_2022.copy()
    theta[0] = -40.0
    runs = chinchilla_runs(theta, noise=0.005, rng=np.random.default_rng(3))
    config = FitConfig()
    fit = fit_law(runs, config)
    interval = prediction_interval(runs, config, fit, 1e24)
    path = tmp_path / "fit.png"
    fig = plot_fit(fit, runs, str(path), target_flops=1e24, target_interval=(interval.lo, interval.hi))
    assert path.stat().st_size > 0
    (line,) = _profile_lines(fig)
    assert list(line.get_ydata()) == pytest.approx([interval.lo, interval.hi])
    assert interval.hi > fit.compute_optimal(1e24).loss.hi
    assert _profile_lines(plot_fit(fit, runs, str(path), target_flops=1e24)) == []  # none given, none drawn


def test_an_open_end_runs_to_the_edge_of_the_axes(tmp_path, chinchilla_runs):
    runs = chinchilla_runs(noise=0.01, rng=np.random.default_rng(0))
    fit = fit_law(runs)
    fig = plot_fit(fit, runs, str(tmp_path / "fit.png"), target_flops=1e24, target_interval=(1.8, None))
    (line,) = _profile_lines(fig)
    low, high = line.get_ydata()
    assert low == 1.8 and high >= fit.compute_optimal(1e24).loss.hi
