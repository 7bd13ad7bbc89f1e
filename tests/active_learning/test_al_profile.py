"""Profile-likelihood limits: agreement with Laplace where it holds, coverage where it fails (E at its bound)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from active_learning import allocate
from active_learning.fit import FitConfig, fit_law, make_problem
from active_learning.profile import _ratio_scale, _refit, bound_limits, profile_limit
from active_learning.scaling_law import HOFFMANN_2022, Features


def _problem_at(runs, config, fit):
    problem = make_problem(Features.from_observations(runs), np.log([r.loss for r in runs]), config)
    z_hat = problem.reparam.to_internal(fit.theta)
    return problem, (np.append(z_hat, fit.log_scale) if problem.noise.has_scale else z_hat)


def _power_law_runs(chinchilla_runs, seed):
    """Hoffmann's law with no irreducible loss (E = exp(-40)) and 0.5% noise: E goes to its bound."""
    theta = HOFFMANN_2022.copy()
    theta[0] = -40.0
    return chinchilla_runs(theta, noise=0.005, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("index", [3, 4])  # alpha, beta: internal coordinates the centring leaves alone
def test_on_a_well_determined_parameter_the_profile_limits_agree_with_laplace_to_first_order(chinchilla_runs,
                                                                                            index):
    """35 IsoFLOP runs, 1% noise: both profile ends sit near theta -+ q sd (within 20%: the law is not linear)."""
    runs = chinchilla_runs(noise=0.01, rng=np.random.default_rng(0))
    config = FitConfig(loss="student-t")
    fit = fit_law(runs, config)
    problem, z_hat = _problem_at(runs, config, fit)
    half_width = fit.quantile * math.sqrt(fit.cov[index, index])
    for direction in (1, -1):
        value, _ = profile_limit(problem, z_hat, index, direction, sigma2=fit.noise_var, quantile=fit.quantile)
        assert direction * (value - fit.theta[index]) / half_width == pytest.approx(1.0, abs=0.2)


def test_the_statistic_at_the_limit_equals_the_threshold(chinchilla_runs):
    runs = _power_law_runs(chinchilla_runs, seed=3)
    config = FitConfig()
    fit = fit_law(runs, config)
    problem, z_hat = _problem_at(runs, config, fit)
    value, z = profile_limit(problem, z_hat, 0, 1, sigma2=fit.noise_var, quantile=fit.quantile)
    assert z[0] == value and z[-1] == z_hat[-1]  # E fixed at the limit, the scale at its estimate
    statistic = 2 * (problem.value_and_grad(z)[0] - fit.objective) / _ratio_scale(problem, z_hat, fit.noise_var)
    assert statistic == pytest.approx(fit.quantile**2, rel=1e-3)
    # The others were refitted: nudging E back in lets the likelihood improve, not stay put.
    assert _refit(problem, z, 0, value - 0.1).fun < problem.value_and_grad(z)[0]


def test_a_threshold_the_box_never_reaches_gives_no_limit_not_the_box_edge(chinchilla_runs):
    runs = _power_law_runs(chinchilla_runs, seed=3)
    config = FitConfig()
    fit = fit_law(runs, config)
    problem, z_hat = _problem_at(runs, config, fit)
    # alpha's upper bound (4.0) is within reach of a probe; no refit there costs a million sds.
    assert profile_limit(problem, z_hat, 3, 1, sigma2=fit.noise_var, quantile=1e6) is None


def test_e_at_its_bound_gets_a_finite_upper_limit_and_a_pessimistic_law_to_extrapolate(chinchilla_runs):
    runs = _power_law_runs(chinchilla_runs, seed=3)
    config = FitConfig()
    fit = fit_law(runs, config)
    assert fit.at_bound() == {"E": "lower"}
    (limit,) = bound_limits(runs, config, fit).values()
    assert limit.name == "E" and limit.side == "upper"
    assert fit.params()["E"].hi < limit.value < min(r.loss for r in runs)
    assert math.exp(limit.theta[0]) == pytest.approx(limit.value)
    at_limit = allocate.optimal_log_loss(fit.law, limit.theta, 1e24)
    assert at_limit > allocate.optimal_log_loss(fit.law, fit.theta, 1e24)  # more floor, more loss at scale
    assert bound_limits(chinchilla_runs(), config, fit_law(chinchilla_runs())) == {}  # E 1.69: nothing at a bound


def test_where_laplace_misses_a_small_e_the_profile_upper_limit_covers_it(chinchilla_runs):
    """True E 0.02, 0.5% noise: 24 of 80 fits put E on its bound, where the Laplace upper end misses the truth
    each time. The profile's upper end, at the same (1 + 0.9) / 2 point, should miss 5% of the time (none here)."""
    theta = HOFFMANN_2022.copy()
    theta[0] = math.log(0.02)
    config = FitConfig()
    laplace_misses = profile_misses = 0
    replicates = 80
    for seed in range(replicates):
        runs = chinchilla_runs(theta, noise=0.005, rng=np.random.default_rng(seed))
        fit = fit_law(runs, config)
        problem, z_hat = _problem_at(runs, config, fit)
        laplace_misses += fit.params()["E"].hi < 0.02
        found = profile_limit(problem, z_hat, 0, 1, sigma2=fit.noise_var, quantile=fit.quantile)
        profile_misses += found is not None and found[0] < theta[0]
    assert laplace_misses / replicates > 0.15
    assert profile_misses / replicates <= 0.1
