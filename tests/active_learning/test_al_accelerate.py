"""SQUAREM: the extrapolation's known answers, and pooled fits that reach their fixed point sooner."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from active_learning import bench
from active_learning.accelerate import squarem_step
from active_learning.pooled import fit_pooled

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
