"""Shared fixtures for active_learning tests: an explicit Generator and synthetic campaigns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from active_learning import allocate
from active_learning.scaling_law import HOFFMANN_2022, Chinchilla, Features, Observation


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _isoflop_points(budgets=np.logspace(18, 20, 5), per_budget: int = 7, spread: float = 4.0):
    """(N, D) on IsoFLOP lines around Hoffmann et al.'s compute-optimal N."""
    n, d = [], []
    for c in budgets:
        n_opt, _ = allocate.closed_form(1.69, 406.4, 410.7, 0.34, 0.28, c)
        for f in np.geomspace(1 / spread, spread, per_budget):
            n.append(n_opt * f)
            d.append(c / (6 * n_opt * f))
    return np.array(n), np.array(d)


def _chinchilla_runs(theta=HOFFMANN_2022, n=None, d=None, noise: float = 0.0, rng=None) -> list[Observation]:
    """Runs with losses from a known Chinchilla law, optionally with log-normal noise."""
    if n is None:
        n, d = _isoflop_points()
    log_loss = Chinchilla().log_loss(theta, Features.from_arrays(n, d))
    if noise:
        log_loss = log_loss + noise * rng.standard_normal(len(log_loss))
    return [Observation(float(a), float(b), math.exp(float(y))) for a, b, y in zip(n, d, log_loss)]


@pytest.fixture
def isoflop_points():
    """isoflop_points(budgets, per_budget, spread) -> (N, D) arrays on IsoFLOP lines."""
    return _isoflop_points


@pytest.fixture
def chinchilla_runs():
    """chinchilla_runs(theta, n, d, noise, rng) -> runs whose losses follow a known law."""
    return _chinchilla_runs
