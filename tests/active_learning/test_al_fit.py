"""Single-law fits: recovery of known parameters, calibrated intervals, bootstrap, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from active_learning import allocate
from active_learning.fit import FitConfig, fit_arrays, fit_law
from active_learning.scaling_law import HOFFMANN_2022, Chinchilla, DataConstrained, Features, Kaplan, Observation


@pytest.mark.parametrize("loss", ["huber", "student-t", "approach3"])
def test_noiseless_isoflop_data_recover_chinchilla_parameters(loss, chinchilla_runs):
    # Known answer: Hoffmann et al.'s published E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28.
    fit = fit_law(chinchilla_runs(), FitConfig(loss=loss))
    p = fit.params()
    assert abs(p["alpha"].value - 0.34) < 1e-3
    assert abs(p["beta"].value - 0.28) < 1e-3
    assert abs(p["E"].value - 1.69) < 1e-4
    assert p["A"].value == pytest.approx(406.4, rel=1e-2)
    assert p["B"].value == pytest.approx(410.7, rel=1e-2)


def test_ninety_percent_intervals_cover_the_truth_about_ninety_percent_of_the_time(isoflop_points):
    # 200 replicates of 35 IsoFLOP runs with 1% log-normal noise, extrapolated 100x beyond the
    # largest budget: the nominal 90% interval for the compute-optimal loss covers the truth
    # 85-95% of the time.
    rng = np.random.default_rng(0)
    n, d = isoflop_points()
    x = Features.from_arrays(n, d)
    clean = Chinchilla().log_loss(HOFFMANN_2022, x)
    target = 1e22
    truth = math.exp(float(allocate.optimal_log_loss(Chinchilla(), HOFFMANN_2022, target)))
    hits = []
    for _ in range(200):
        fit = fit_arrays(x, clean + 0.01 * rng.standard_normal(len(clean)), FitConfig())
        loss = fit.compute_optimal(target).loss
        hits.append(loss.lo <= truth <= loss.hi)
    assert 0.85 <= np.mean(hits) <= 0.95


def test_laplace_intervals_contain_the_parameters_of_a_noisy_fit(rng, chinchilla_runs):
    fit = fit_law(chinchilla_runs(noise=0.01, rng=rng))
    p = fit.params()
    for name, truth in [("alpha", 0.34), ("beta", 0.28), ("E", 1.69)]:
        assert p[name].lo < truth < p[name].hi
        assert p[name].sd > 0


def test_bootstrap_refits_resampled_runs(rng, chinchilla_runs):
    fit = fit_law(chinchilla_runs(noise=0.01, rng=rng), bootstrap=20, rng=rng)
    assert fit.bootstrap.shape == (20, 5)
    lo, hi = fit.bootstrap_params()["alpha"]
    assert lo < fit.params()["alpha"].value < hi


def test_bootstrap_needs_an_explicit_generator(chinchilla_runs):
    with pytest.raises(ValueError, match="rng"):
        fit_law(chinchilla_runs(), bootstrap=5)


def test_too_few_runs_is_an_error_that_says_how_many_are_needed(chinchilla_runs):
    with pytest.raises(ValueError, match="at least 6 runs"):
        fit_law(chinchilla_runs()[:5])


def test_kaplan_law_is_recovered_from_its_own_noiseless_data(isoflop_points):
    theta = np.array([math.log(8.8e13), math.log(5.4e13), 0.076, 0.095])
    n, d = isoflop_points()
    y = Kaplan().log_loss(theta, Features.from_arrays(n, d))
    fit = fit_arrays(Features.from_arrays(n, d), y, FitConfig(law="kaplan"))
    np.testing.assert_allclose(fit.theta[2:], theta[2:], atol=1e-4)
    np.testing.assert_allclose(Kaplan().log_loss(fit.theta, Features.from_arrays(n, d)), y, atol=1e-8)


def test_data_constrained_law_is_recovered_from_repeated_data(rng, isoflop_points):
    theta = np.append(HOFFMANN_2022, [math.log(15.387756), math.log(5.309743)])
    n0, d0 = isoflop_points()
    n, d = np.concatenate([n0, n0]), np.concatenate([d0, d0])
    unique = np.concatenate([d0, d0 / rng.uniform(2, 40, d0.size)])  # half fresh data, half repeated
    x = Features.from_arrays(n, d, unique)
    fit = fit_arrays(x, DataConstrained().log_loss(theta, x), FitConfig(law="data-constrained"))
    np.testing.assert_allclose(fit.theta[3:5], theta[3:5], atol=1e-3)
    np.testing.assert_allclose(DataConstrained().log_loss(fit.theta, x), DataConstrained().log_loss(theta, x),
                               atol=1e-6)


def test_prediction_intervals_widen_with_seed_noise(rng, chinchilla_runs):
    fit = fit_law(chinchilla_runs(noise=0.01, rng=rng))
    law_only, = fit.predict(1e8, 2e9)
    with_noise, = fit.predict(1e8, 2e9, include_noise=True)
    assert with_noise.hi - with_noise.lo > law_only.hi - law_only.lo


def test_compute_optimal_allocation_matches_the_closed_form_on_exact_data(chinchilla_runs):
    fit = fit_law(chinchilla_runs())
    a = fit.compute_optimal(5.76e23)
    assert a.tokens_per_parameter == pytest.approx(92.6, abs=0.1)
    n, d = allocate.closed_form(1.69, 406.4, 410.7, 0.34, 0.28, 5.76e23)
    assert a.n.value == pytest.approx(n, rel=1e-3)
    assert a.n.lo <= a.n.value <= a.n.hi


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="law"):
        FitConfig(law="gpt")
    with pytest.raises(ValueError, match="loss"):
        FitConfig(loss="l2")


def test_fit_is_deterministic(chinchilla_runs):
    runs = chinchilla_runs(noise=0.01, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(fit_law(runs).theta, fit_law(runs).theta)


def test_observations_with_unique_tokens_set_the_allocation_budget(chinchilla_runs):
    runs = [Observation(r.n, r.d, r.loss, unique=1e13) for r in chinchilla_runs()]
    assert fit_law(runs).unique_tokens == 1e13


def test_a_pure_power_law_puts_e_at_its_bound_and_the_fit_says_so(chinchilla_runs):
    """With no irreducible loss in the data (E = 0), E goes to its bound and no interval can bound it."""
    e_floor = Chinchilla().bounds()[0][0]
    theta = HOFFMANN_2022.copy()
    theta[0] = e_floor - 20.0  # E = exp(-40): nothing the fit can see
    fit = fit_law(chinchilla_runs(theta))
    assert fit.at_bound() == {"E": "lower"}
    assert fit.theta[0] == pytest.approx(e_floor, abs=1e-4)
    assert fit_law(chinchilla_runs()).at_bound() == {}  # Hoffmann's E 1.69 is well inside


@pytest.mark.parametrize("vary, lost", [("d", ("A", "alpha")), ("n", ("B", "beta"))])
def test_runs_at_one_n_or_one_d_leave_that_term_undetermined_and_the_fit_says_which(chinchilla_runs, vary, lost):
    """With every run at one N the law's N term is a constant E absorbs: its zero Laplace variance is no information."""
    one, many = np.full(7, 1e8), np.geomspace(1e8, 6.4e10, 7)
    n, d = (one, many) if vary == "d" else (many, one * 100)
    fit = fit_law(chinchilla_runs(n=n, d=d, noise=0.005, rng=np.random.default_rng(1)))
    assert fit.undetermined == lost
    assert fit_law(chinchilla_runs()).undetermined == ()  # IsoFLOP runs inform every direction
