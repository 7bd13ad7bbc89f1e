"""SQUAREM and damping: known answers, and pooled fits that reach their fixed point sooner or at all."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from active_learning import bench, empirical_bayes
from active_learning.accelerate import squarem_step
from active_learning.hierarchical import PoolingConfig
from active_learning.pooled import fit_pooled
from active_learning.scaling_law import Observation

FIXED_POINT = np.array([1.0, -2.0, 0.5])


def _linear_iterates(rho: float, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three iterates of x <- x* + rho (x - x*), a single mode converging at rate rho."""
    x1 = FIXED_POINT + rho * (x0 - FIXED_POINT)
    return x0, x1, FIXED_POINT + rho * (x1 - FIXED_POINT)


def test_one_step_lands_on_the_fixed_point_of_a_single_slow_mode():
    x, step = squarem_step(*_linear_iterates(0.9, np.array([3.0, 0.0, -1.0])), max_step=100.0)
    assert step == pytest.approx(10.0)  # 1 / (1 - rho)
    np.testing.assert_allclose(x, FIXED_POINT, atol=1e-12)


def test_a_capped_step_goes_beyond_the_plain_iterate_but_not_past_the_fixed_point():
    x0, x1, x2 = _linear_iterates(0.9, np.array([3.0, 0.0, -1.0]))
    x, step = squarem_step(x0, x1, x2, max_step=4.0)
    assert step == 4.0
    # Along the one direction the iteration moves: x2 is 19% of the way, the capped jump 64%.
    assert np.linalg.norm(x - FIXED_POINT) == pytest.approx(0.36 * np.linalg.norm(x0 - FIXED_POINT))
    assert np.linalg.norm(x - FIXED_POINT) < np.linalg.norm(x2 - FIXED_POINT)


@pytest.mark.parametrize("rho", [-0.5, 0.0])
def test_oscillating_or_settled_iterations_take_the_plain_step(rho):
    iterates = _linear_iterates(rho, np.array([3.0, 0.0, -1.0]))
    x, step = squarem_step(*iterates, max_step=100.0)
    assert step == 1.0
    np.testing.assert_array_equal(x, iterates[2])


def test_no_movement_returns_the_last_iterate():
    x, step = squarem_step(FIXED_POINT, FIXED_POINT, FIXED_POINT, max_step=4.0)
    assert step == 1.0 and np.array_equal(x, FIXED_POINT)


def _log_predictions(fit, target: float) -> np.ndarray:
    pred = fit.predict_at_target(target)
    return np.array([[math.log(p.loss), p.sd / p.loss] for p in pred.values()])


def _slow_campaign() -> tuple[bench.BenchConfig, dict]:
    cfg = bench.BenchConfig()
    rng = np.random.default_rng(7)
    return cfg, bench._fixed_design(bench.simulate_campaign(cfg, rng), cfg, "random", 0.05, rng).by_candidate


def test_accelerated_pooled_fit_is_nearer_its_fixed_point_in_fewer_iterations():
    """A bench campaign with few runs, learned couplings and every parameter varying (slow hyperparameters)."""
    cfg, runs = _slow_campaign()
    plain = dataclasses.replace(cfg.pooling, accelerate=False)
    fits = {"fast": fit_pooled(runs, cfg.pooling), "plain": fit_pooled(runs, plain),
            "reference": fit_pooled(runs, dataclasses.replace(cfg.pooling, tol=1e-9, max_iter=3000))}
    pred = {name: _log_predictions(fit, cfg.target_flops) for name, fit in fits.items()}
    error = {name: float(np.max(np.abs(pred[name] - pred["reference"]))) for name in ("fast", "plain")}
    assert fits["fast"].iterations < fits["plain"].iterations
    assert all(fit.converged for fit in fits.values())
    # The plain iteration stops when a step is below tolerance, far from its fixed point when
    # it converges slowly; the extrapolated one ends where the tightly converged fit does.
    assert error["fast"] < 1e-4
    assert error["fast"] < error["plain"]


def test_a_fit_stopped_by_its_iteration_cap_says_it_did_not_converge():
    cfg, runs = _slow_campaign()
    capped = fit_pooled(runs, dataclasses.replace(cfg.pooling, max_iter=3))
    assert capped.iterations == 3 and not capped.converged


def test_a_jump_that_makes_things_worse_is_undone(monkeypatch):
    """Every extrapolation lands absurdly far (tau 1e13 times larger): each is undone, and the fit is the plain one."""
    from active_learning import accelerate

    cfg, runs = _slow_campaign()
    plain = fit_pooled(runs, dataclasses.replace(cfg.pooling, accelerate=False))
    jumps = []

    def absurd(x0, x1, x2, max_step):
        jumps.append(max_step)
        return x2 + 30.0, max_step

    monkeypatch.setattr(accelerate, "squarem_step", absurd)
    undone = fit_pooled(runs, cfg.pooling)
    # The cap starts at 1 (no jump), rises to 4 (a jump), and each undo shrinks it back.
    assert jumps.count(4.0) > 1 and max(jumps) == 4.0
    np.testing.assert_array_equal(undone.theta, plain.theta)
    np.testing.assert_array_equal(undone.stacked_cov(), plain.stacked_cov())


# The first 16 runs of a demo campaign (candidate, N, D, loss, FLOPs per token): 12 candidates,
# most with one base run at the same (N, D). Undamped, the pooled fit's prior-mean start
# alternated between two points until its iteration cap.
ALTERNATING_RUNS = [
    ("1", 154320.0, 245760.0, 2.4260188192129135, 1048800.0),
    ("1", 27888.0, 3997696.0, 1.9090410023927689, 204192.0),
    ("2", 154640.0, 245760.0, 2.4219469875097275, 1050720.0),
    ("2", 27984.0, 3997696.0, 1.7457559518516064, 204768.0),
    ("1", 49472.0, 491520.0, 2.359662413597107, 345984.0),
    ("2", 49600.0, 491520.0, 2.3280384466052055, 346752.0),
    ("4", 49728.0, 491520.0, 2.2042333483695984, 347520.0),
    ("6", 49472.0, 491520.0, 2.3102514147758484, 345984.0),
    ("7", 49344.0, 491520.0, 2.3060822188854218, 345216.0),
    ("8", 49536.0, 491520.0, 2.3555934503674507, 346368.0),
    ("9", 49600.0, 491520.0, 2.371347561478615, 346752.0),
    ("10", 49728.0, 491520.0, 2.3323057666420937, 347520.0),
    ("11", 49472.0, 491520.0, 2.361275836825371, 345984.0),
    ("12", 49536.0, 491520.0, 2.3444980308413506, 346368.0),
    ("13", 50456.0, 491520.0, 2.2787794917821884, 345744.0),
    ("14", 49472.0, 491520.0, 2.430444970726967, 345984.0),
]


def _alternating_campaign() -> tuple[PoolingConfig, dict]:
    runs: dict = {}
    for cand, n, d, loss, fpt in ALTERNATING_RUNS:
        runs.setdefault(cand, []).append(Observation(n, d, loss, flops_per_token=fpt))
    return PoolingConfig(varying=("e", "a", "b")), runs


def test_an_alternating_iteration_is_damped_to_its_fixed_point(monkeypatch):
    config, runs = _alternating_campaign()
    damped = fit_pooled(runs, config)
    reference = fit_pooled(runs, dataclasses.replace(config, tol=1e-9, max_iter=3000))
    assert damped.converged and reference.converged
    error = np.max(np.abs(_log_predictions(damped, 1e15) - _log_predictions(reference, 1e15)))
    assert error < 1e-4
    # Without damping the same fit never settles: the data do exercise the alternation.
    monkeypatch.setattr(empirical_bayes, "MIN_DAMPING", 1.0)
    undamped = fit_pooled(runs, dataclasses.replace(config, max_iter=200))
    assert not undamped.converged


def test_the_alternation_test_catches_a_two_cycle_and_not_steady_progress():
    a, b = np.array([1.0, 2.0]), np.array([1.5, 1.0])
    assert empirical_bayes._alternating(a, b, a + 0.01)
    assert not empirical_bayes._alternating(a, b, b + (b - a))  # moving on in a straight line
    assert not empirical_bayes._alternating(a, b, b + 0.1 * (b - a))  # slowing down
