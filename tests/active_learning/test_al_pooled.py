"""Pooling: few-run candidates borrow strength, many-run candidates speak for themselves."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from active_learning import allocate, bench, empirical_bayes, laplace
from active_learning.fit import FitConfig, fit_law
from active_learning.pooled import PoolingConfig, expected_regret_of_draws, fit_pooled
from active_learning.scaling_law import HOFFMANN_2022, Chinchilla

TARGET = 1e22
SEED = 100


def _true_optimum(theta) -> float:
    return math.exp(float(allocate.optimal_log_loss(Chinchilla(), theta, TARGET)))


def _campaign(rng, counts, chinchilla_runs, level_sd=0.2):
    """Candidates sharing E and exponents, with their own A and B (the default pooling model)."""
    truths, runs = {}, {}
    for k, count in enumerate(counts):
        theta = HOFFMANN_2022 + np.array([0.0, *(level_sd * rng.standard_normal(2)), 0.0, 0.0])
        n = 10 ** rng.uniform(7, 8.7, count)
        d = n * 10 ** rng.uniform(0.5, 2.0, count)
        truths[f"c{k}"] = theta
        runs[f"c{k}"] = chinchilla_runs(theta, n, d, noise=0.01, rng=rng)
    return truths, runs


def test_a_one_run_candidate_borrows_the_campaigns_exponents(rng, chinchilla_runs):
    truths, runs = _campaign(rng, [12, 12, 12, 12, 12, 1], chinchilla_runs)
    pooled = fit_pooled(runs).predict_at_target(TARGET)
    lonely = pooled["c5"]
    # One run cannot fix a five-parameter law on its own; pooled, its prediction is as tight as the others'.
    assert lonely.n_runs == 1
    assert lonely.lo <= _true_optimum(truths["c5"]) <= lonely.hi
    assert lonely.sd / lonely.loss < 0.05
    assert lonely.sd < 2.0 * np.median([p.sd for c, p in pooled.items() if c != "c5"])


def test_a_many_run_candidate_matches_its_own_separate_fit(rng, chinchilla_runs, isoflop_points):
    truths, runs = _campaign(rng, [3, 3, 3, 3], chinchilla_runs)
    n, d = isoflop_points()
    truths["rich"] = HOFFMANN_2022
    runs["rich"] = chinchilla_runs(HOFFMANN_2022, n, d, noise=0.01, rng=rng)
    pooled = fit_pooled(runs).predict_at_target(TARGET)["rich"]
    alone = fit_law(runs["rich"], FitConfig(loss="student-t")).compute_optimal(TARGET).loss
    assert abs(math.log(pooled.loss / alone.value)) < 0.5 * alone.sd / alone.value
    assert pooled.lo <= _true_optimum(HOFFMANN_2022) <= pooled.hi


def test_probabilities_of_being_best_sum_to_one_and_favour_the_clear_winner(rng, chinchilla_runs, isoflop_points):
    n, d = isoflop_points(per_budget=5)
    better = HOFFMANN_2022 - np.array([0.0, 0.3, 0.3, 0.0, 0.0])  # lower A and B: lower loss everywhere
    runs = {"base": chinchilla_runs(HOFFMANN_2022, n, d, 0.01, rng), "better": chinchilla_runs(better, n, d, 0.01, rng),
            "few": chinchilla_runs(HOFFMANN_2022, n[:2], d[:2], 0.01, rng)}
    fit = fit_pooled(runs)
    for method in ("linear", "sample"):
        p = fit.prob_best(TARGET, np.random.default_rng(1), method=method)
        assert sum(p.values()) == pytest.approx(1.0)
        assert p["better"] > 0.95


def test_pooling_scales_to_a_hundred_candidates_with_one_to_three_runs(rng, chinchilla_runs):
    truths, runs = _campaign(rng, rng.integers(1, 4, 100), chinchilla_runs)
    fit = fit_pooled(runs)
    pred = fit.predict_at_target(TARGET)
    assert len(pred) == 100 and all(p.lo < p.loss < p.hi for p in pred.values())
    errors = [abs(math.log(pred[c].loss / _true_optimum(t))) for c, t in truths.items()]
    assert np.mean(errors) < 0.05
    assert math.isclose(sum(fit.prob_best(TARGET, rng).values()), 1.0)


def test_departures_can_include_e_and_the_exponents(rng, chinchilla_runs, isoflop_points):
    n, d = isoflop_points(per_budget=5)
    steeper = HOFFMANN_2022 + np.array([0.05, 0.0, 0.0, 0.03, 0.0])
    runs = {"a": chinchilla_runs(HOFFMANN_2022, n, d, 0.01, rng), "b": chinchilla_runs(steeper, n, d, 0.01, rng)}
    fit = fit_pooled(runs, PoolingConfig(varying=("e", "a", "b", "alpha", "beta")))
    assert fit.params("b")["alpha"] > fit.params("a")["alpha"]
    assert set(fit.tau) == {"e", "a", "b", "alpha", "beta"}
    pred = fit.predict_at_target(TARGET)
    for c, theta in (("a", HOFFMANN_2022), ("b", steeper)):
        assert pred[c].lo <= _true_optimum(theta) <= pred[c].hi


def test_natural_departures_leave_the_natural_levels_shared_where_centred_ones_move_them(rng, chinchilla_runs,
                                                                                        isoflop_points):
    # Only alpha departs. Centred: the level at the campaign's centre is shared, so log A at N = 1 moves with
    # alpha. Natural: log A itself is shared and the level at the centre moves instead.
    n, d = isoflop_points(per_budget=5)
    steeper = HOFFMANN_2022 + np.array([0.0, 0.0, 0.0, 0.03, 0.0])
    runs = {"a": chinchilla_runs(HOFFMANN_2022, n, d, 0.01, rng), "b": chinchilla_runs(steeper, n, d, 0.01, rng)}
    centred = fit_pooled(runs, PoolingConfig(varying=("alpha",), departures="centred"))
    natural = fit_pooled(runs, PoolingConfig(varying=("alpha",), departures="natural"))
    a, b = natural.params("a"), natural.params("b")
    assert b["alpha"] - a["alpha"] == pytest.approx(0.03, abs=0.01)  # the truth's departure is natural
    assert b["A"] == pytest.approx(a["A"], rel=1e-9) and b["B"] == pytest.approx(a["B"], rel=1e-9)
    a, b = centred.params("a"), centred.params("b")
    log_n0 = float(np.mean(np.log(n)))  # the campaign's centre
    assert math.log(b["A"] / a["A"]) == pytest.approx((b["alpha"] - a["alpha"]) * log_n0, rel=1e-6)
    assert b["B"] == pytest.approx(a["B"], rel=1e-9)


def test_natural_and_centred_departures_are_the_same_model_when_only_levels_vary(rng, chinchilla_runs):
    # The centring moves levels by multiples of the exponents; with shared exponents the two coincide.
    truths, runs = _campaign(rng, [5, 3, 1], chinchilla_runs)
    centred = fit_pooled(runs, PoolingConfig(varying=("e", "a", "b"), departures="centred"))
    natural = fit_pooled(runs, PoolingConfig(varying=("e", "a", "b"), departures="natural"))
    np.testing.assert_allclose(natural.theta, centred.theta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(natural.stacked_cov(), centred.stacked_cov(), rtol=1e-8, atol=1e-14)


def _coupled_campaign(rng, chinchilla_runs, isoflop_points, frame: str, candidates: int = 16):
    """Candidates (16 by default) whose log A and alpha depart independently at N = 1 ("natural") or at the centre."""
    n, d = isoflop_points(per_budget=5)
    log_n0 = float(np.mean(np.log(n)))
    runs = {}
    for k in range(candidates):
        d_level, d_alpha = 0.3 * rng.standard_normal(), 0.03 * rng.standard_normal()
        if frame == "centred":
            d_level += d_alpha * log_n0  # log A = level at the centre + alpha log N0
        runs[f"c{k}"] = chinchilla_runs(HOFFMANN_2022 + np.array([0.0, d_level, 0.0, d_alpha, 0.0]), n, d, 0.003, rng)
    return runs, log_n0


@pytest.mark.parametrize("frame", ["natural", "centred"])
def test_learned_departures_find_the_scale_where_level_and_exponent_are_independent(rng, chinchilla_runs,
                                                                                   isoflop_points, frame):
    runs, log_n0 = _coupled_campaign(rng, chinchilla_runs, isoflop_points, frame)
    fit = fit_pooled(runs, PoolingConfig(varying=("a", "alpha"), departures="learned"))
    log_pivot = math.log(fit.pivots["alpha"])
    truth = 0.0 if frame == "natural" else log_n0
    # 16 candidates pin the regression of the level on the exponent to about +-2.5 in log N.
    assert abs(log_pivot - truth) < 0.3 * log_n0
    # tau of the level is its independent part's, the simulated 0.3 (centred reads 0.6 from natural data).
    assert fit.tau["a"] == pytest.approx(0.3, rel=0.4)
    assert fit.hyper is not None and fit.hyper.shape[0] == 4  # log tau_a, log tau_alpha, the coupling, log s


def test_learned_departures_fit_as_well_as_the_frame_the_data_came_from(rng, chinchilla_runs, isoflop_points):
    runs, _ = _coupled_campaign(rng, chinchilla_runs, isoflop_points, "natural")
    fits = {frame: fit_pooled(runs, PoolingConfig(varying=("a", "alpha"), departures=frame))
            for frame in ("centred", "natural", "learned")}
    pred = {frame: fit.predict_at_target(TARGET) for frame, fit in fits.items()}
    spread = {frame: np.mean([p.sd / p.loss for p in pr.values()]) for frame, pr in pred.items()}
    # The centred prior shrinks a steep exponent without the level that comes with it, and widens its
    # level prior to make up; learning the coupling recovers the natural frame's tighter predictions.
    assert spread["learned"] < spread["centred"]
    assert spread["learned"] == pytest.approx(spread["natural"], rel=0.25)


@pytest.mark.parametrize("frame", ["natural", "centred"])
def test_evidence_chooses_the_frame_the_data_came_from_and_fits_as_it_does(rng, chinchilla_runs, isoflop_points,
                                                                          frame):
    runs, _ = _coupled_campaign(rng, chinchilla_runs, isoflop_points, frame)
    chosen = fit_pooled(runs, PoolingConfig(varying=("a", "alpha"), departures="evidence"))
    assert chosen.departures == frame
    alone = fit_pooled(runs, PoolingConfig(varying=("a", "alpha"), departures=frame))
    np.testing.assert_array_equal(chosen.theta, alone.theta)
    np.testing.assert_array_equal(chosen.stacked_cov(), alone.stacked_cov())
    assert chosen.pivots == {} and alone.departures == frame
    other_frame = "centred" if frame == "natural" else "natural"
    other = fit_pooled(runs, PoolingConfig(varying=("a", "alpha"), departures=other_frame))
    # The fit carries what it was chosen by, so fits of the same runs compare without refitting.
    assert chosen.neg_log_evidence == alone.neg_log_evidence < other.neg_log_evidence


@pytest.mark.parametrize("frame", ["centred", "natural", "learned"])
def test_the_fitted_departure_scales_maximise_the_evidence_frames_are_compared_by(rng, chinchilla_runs,
                                                                                isoflop_points, frame):
    """laplace.evidence is the criterion the tau updates climb, so it is what ranks starts and frames.

    Its derivative in each log tau_j vanishes at the fit; without the departures' normalisation
    K log tau it would be about K (+8 here), and without integrating mu about +1: either would
    favour wide priors, and so the centred frame on data drawn in the natural one.
    """
    runs, _ = _coupled_campaign(rng, chinchilla_runs, isoflop_points, "natural", candidates=8)
    config = PoolingConfig(varying=("a", "alpha"), departures=frame)
    state, model, value, _, converged = empirical_bayes.fit_starts(empirical_bayes.build_model(runs, config), config)
    assert converged and value == pytest.approx(laplace.evidence(model, state))
    step = 1e-3
    for j in range(len(state.tau)):
        moved = []
        for sign in (-1.0, 1.0):
            trial = dataclasses.replace(state, tau=state.tau * np.exp(sign * step * np.eye(len(state.tau))[j]),
                                        delta=state.delta.copy())
            laplace.solve_departures(model, trial)
            moved.append(laplace.evidence(model, trial))
        assert abs(moved[1] - moved[0]) / (2 * step) < 0.3


def test_evidence_prefers_the_natural_frame_on_benchmark_campaigns_drawn_in_it():
    """32 candidates from the benchmark's simulator, every parameter departing: the natural frame's
    departures are independent, the centred frame's strongly correlated; the evidence says so."""
    cfg = dataclasses.replace(bench.BenchConfig(), n_candidates=32, min_margin=0.0)
    rng = np.random.default_rng(3)
    runs = bench._fixed_design(bench.simulate_campaign(cfg, rng), cfg, "grid", 1.0, rng)
    fits = {frame: empirical_bayes.estimate(runs.by_candidate, dataclasses.replace(cfg.pooling, departures=frame))
            for frame in ("centred", "natural")}
    assert fits["natural"].neg_log_evidence < fits["centred"].neg_log_evidence - 5.0
    assert fit_pooled(runs.by_candidate, dataclasses.replace(cfg.pooling, departures="evidence")).departures == "natural"


def test_evidence_fits_once_when_the_exponents_are_shared(rng, chinchilla_runs):
    truths, runs = _campaign(rng, [5, 3, 1], chinchilla_runs)
    chosen = fit_pooled(runs, PoolingConfig(varying=("e", "a", "b"), departures="evidence"))
    centred = fit_pooled(runs, PoolingConfig(varying=("e", "a", "b"), departures="centred"))
    assert chosen.departures == "centred"
    np.testing.assert_array_equal(chosen.theta, centred.theta)


def test_a_model_cannot_be_built_in_the_evidence_frame(rng, chinchilla_runs):
    # "evidence" chooses a frame; building one model from it must say so, not fall back to the centred one.
    _, runs = _campaign(rng, [3, 2], chinchilla_runs)
    with pytest.raises(ValueError, match="centred.*natural"):
        empirical_bayes.build_model(runs, PoolingConfig(varying=("e", "alpha"), departures="evidence"))
    natural, centred = (empirical_bayes.build_model(runs, PoolingConfig(varying=("e", "alpha"), departures=frame))
                        for frame in ("natural", "centred"))
    assert not np.allclose(natural.departure_map, centred.departure_map)  # a frame named is that frame


def test_learned_departures_are_the_centred_model_when_no_exponent_and_its_level_both_vary(rng, chinchilla_runs):
    truths, runs = _campaign(rng, [5, 3, 1], chinchilla_runs)
    for varying in (("e", "a", "b"), ("e", "alpha")):
        assert PoolingConfig(varying=varying, departures="learned").coupled_pairs(
            Chinchilla().reparam(17.0, 20.0)) == ()
        centred = fit_pooled(runs, PoolingConfig(varying=varying, departures="centred"))
        learned = fit_pooled(runs, PoolingConfig(varying=varying, departures="learned"))
        np.testing.assert_array_equal(learned.theta, centred.theta)
        np.testing.assert_array_equal(learned.stacked_cov(), centred.stacked_cov())
        assert learned.pivots == {}


def test_fully_shared_law_has_no_departures(rng, chinchilla_runs):
    truths, runs = _campaign(rng, [4, 4, 4], chinchilla_runs, level_sd=0.0)
    fit = fit_pooled(runs, PoolingConfig(varying=()))
    np.testing.assert_allclose(fit.theta, np.repeat(fit.mean[None], 3, axis=0))


def test_posterior_samples_have_the_laplace_covariance(rng, chinchilla_runs):
    truths, runs = _campaign(rng, [6, 6, 2], chinchilla_runs)
    fit = fit_pooled(runs)
    draws = fit.reparam.to_internal(fit.sample(np.random.default_rng(2), 40000))  # [S, K, p]
    empirical = np.cov(draws.reshape(len(draws), -1), rowvar=False)
    np.testing.assert_allclose(empirical, fit.stacked_cov(), atol=0.05 * np.abs(fit.stacked_cov()).max())


def test_flops_per_token_moves_each_candidates_allocation(rng, chinchilla_runs, isoflop_points):
    from active_learning.scaling_law import Observation

    n, d = isoflop_points(per_budget=5)
    plain = chinchilla_runs(HOFFMANN_2022, n, d, 0.01, rng)
    heavy = [Observation(r.n, r.d, r.loss, flops_per_token=6 * r.n + 3e8) for r in plain]
    pred = fit_pooled({"plain": plain, "heavy": heavy}).predict_at_target(TARGET)
    assert pred["heavy"].d_opt < pred["plain"].d_opt
    assert (6 * pred["heavy"].n_opt + 3e8) * pred["heavy"].d_opt == pytest.approx(TARGET, rel=1e-6)


@pytest.mark.parametrize("runs, match", [({}, "at least one candidate"), ({"x": []}, "without runs")])
def test_bad_campaigns_are_rejected_with_a_reason(runs, match):
    with pytest.raises(ValueError, match=match):
        fit_pooled(runs)


def test_config_rejects_unknown_varying_parameters():
    with pytest.raises(ValueError, match="varying"):
        PoolingConfig(varying=("gamma",))
    with pytest.raises(ValueError, match="pooling supports"):
        PoolingConfig(law="kaplan")
    with pytest.raises(ValueError, match="departures must be"):
        PoolingConfig(departures="origin")


def _calibration_z(chinchilla_runs, replicates: int = 24, candidates: int = 8) -> np.ndarray:
    """z = (predicted - true log L*) / sd at the target, over simulated campaigns of few-run candidates."""
    z = []
    for rep in range(replicates):
        rng = np.random.default_rng(SEED + rep)
        counts = [6, *rng.integers(1, 4, candidates - 1)]
        truths, runs = _campaign(rng, counts, chinchilla_runs, level_sd=0.3)
        g, cov, _, _ = fit_pooled(runs).target_moments(TARGET)
        true = np.array([math.log(_true_optimum(truths[c])) for c in runs])
        z.extend((g - true) / np.sqrt(np.diag(cov)))
    return np.array(z)


def test_intervals_at_the_target_are_calibrated_when_candidates_have_one_to_three_runs(chinchilla_runs):
    # 24 campaigns of 8 candidates, one with 6 runs and the rest 1-3, default pooling (A, B depart).
    # Conditioning on the fitted prior strength tau and noise scale covered the truth with 82% of
    # nominal 90% intervals here (mean |z| 0.98, where a standard normal has 0.80); carrying their
    # uncertainty (Kass-Steffey term, covariance at E[sigma^2]) gives 93% (0.82). The 192
    # predictions are correlated within a campaign (shared exponents), so other seed sets vary
    # by about +-0.05 in coverage; the band is wide for that and still excludes the old posterior.
    z = _calibration_z(chinchilla_runs)
    coverage = float(np.mean(np.abs(z) < 1.6449))
    assert 0.85 <= coverage <= 0.97, coverage
    assert 0.68 <= float(np.mean(np.abs(z))) <= 0.90, float(np.mean(np.abs(z)))


def test_hyperparameter_uncertainty_only_widens_the_posterior(rng, chinchilla_runs):
    import dataclasses

    truths, runs = _campaign(rng, [6, 2, 1, 1], chinchilla_runs)
    fit = fit_pooled(runs)
    assert fit.hyper is not None and fit.hyper.shape == (3, 4, 5)  # log tau_a, log tau_b, log s
    plain = dataclasses.replace(fit, hyper=None)  # a PooledFit built without the term still works
    _, cov, _, _ = fit.target_moments(TARGET)
    _, cov0, _, _ = plain.target_moments(TARGET)
    assert np.all(np.linalg.eigvalsh(cov - cov0) >= -1e-15)
    assert np.all(np.diag(cov) > np.diag(cov0))
    for c in runs:
        assert plain.predict_at_target(TARGET)[c].loss == fit.predict_at_target(TARGET)[c].loss


def test_expected_regret_of_draws_has_its_known_values():
    # Two draws: candidate 0 is best in the first, 1 is 10% worse there; in the second 0 is 20% worse.
    draws = np.log([[1.0, 1.1], [1.2, 1.0]])
    np.testing.assert_allclose(expected_regret_of_draws(draws), [0.1, 0.05], rtol=1e-12)
    # Two independent normals of sd s, means apart by m: E[max(0, g1 - g2)] = sd_d phi(m / sd_d) + m Phi(m / sd_d)
    # (sd_d = s sqrt 2), which expm1 of small differences matches to second order.
    s, m = 0.01, 0.005
    g = np.random.default_rng(0).standard_normal((400_000, 2)) * s + np.array([m, 0.0])
    sd_d = s * math.sqrt(2.0)
    exact = sd_d * stats.norm.pdf(m / sd_d) + m * stats.norm.cdf(m / sd_d)
    assert expected_regret_of_draws(g)[0] == pytest.approx(exact, rel=0.02)


def test_expected_regret_is_small_for_the_clear_winner_and_the_loss_gap_for_the_clear_loser(rng, chinchilla_runs,
                                                                                           isoflop_points):
    n, d = isoflop_points(per_budget=5)
    better = HOFFMANN_2022 - np.array([0.0, 0.3, 0.3, 0.0, 0.0])  # lower A and B: lower loss everywhere
    runs = {"base": chinchilla_runs(HOFFMANN_2022, n, d, 0.01, rng), "better": chinchilla_runs(better, n, d, 0.01, rng)}
    fit = fit_pooled(runs)
    pred = fit.predict_at_target(TARGET)
    for method in ("linear", "sample"):
        standings = fit.standings(TARGET, np.random.default_rng(1), method=method)
        assert 0.0 <= standings["better"].expected_regret < 1e-4
        # The loser is expected to cost about the predicted gap between the two.
        gap = pred["base"].loss / pred["better"].loss - 1.0
        assert standings["base"].expected_regret == pytest.approx(gap, rel=0.05)
