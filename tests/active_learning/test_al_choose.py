"""Choosing runs: the knowledge gradient, the obviously informative run on toy problems, and baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scipy import special

from active_learning.choose import (Belief, _acquisition, _Design, _gains, choose_for_single_law, choose_next_runs,
                                    grid_design, isoflop_design, knowledge_gradient, random_design, zero_one_gains)
from active_learning.fit import FitConfig, fit_law
from active_learning.pooled import fit_pooled
from active_learning.scaling_law import HOFFMANN_2022

TARGET = 1e22


def test_knowledge_gradient_of_two_tied_lines_is_the_mean_absolute_normal():
    # E[max(Z, -Z)] = E|Z| = sqrt(2 / pi).
    assert knowledge_gradient(np.array([0.0, 0.0]), np.array([1.0, -1.0])) == pytest.approx(math.sqrt(2 / math.pi))


def test_knowledge_gradient_matches_monte_carlo(rng):
    a, b = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
    z = rng.standard_normal(200_000)
    for i in range(3):
        mc = np.max(a[i][None] + b[i][None] * z[:, None], axis=1).mean() - a[i].max()
        assert knowledge_gradient(a, b)[i] == pytest.approx(mc, abs=0.01)


def test_knowledge_gradient_is_zero_when_nothing_can_change_the_decision():
    assert knowledge_gradient(np.array([0.0, -50.0]), np.array([0.0, 1.0])) < 1e-12
    assert knowledge_gradient(np.array([0.0, -1.0]), np.array([0.5, 0.5])) == 0.0  # same move for both


def test_zero_one_gain_matches_monte_carlo(rng):
    # Leader 0 and a rival 0.01 behind, correlated; a run moves them by s Z. After it the pick is wrong
    # with probability Phi(-|d + t Z| / sd_after), t = s_j - s_b; the gain is the fall of its mean.
    g, cov, s = np.array([0.0, 0.01]), np.array([[1e-4, 2e-5], [2e-5, 2e-4]]), np.array([[0.004, -0.006]])
    var, t = 1e-4 + 2e-4 - 4e-5, -0.01
    z = rng.standard_normal(1_000_000)
    after = special.ndtr(-np.abs(0.01 + t * z) / math.sqrt(var - t * t)).mean()
    expected = special.ndtr(-0.01 / math.sqrt(var)) - after
    assert zero_one_gains(g, cov, s)[0] == pytest.approx(expected, abs=1e-3)


def test_zero_one_gain_limits():
    g, cov = np.array([0.0, 0.02, 0.5]), np.diag([1e-4, 1e-4, 1e-4])
    wrong = special.ndtr(-0.02 / math.sqrt(2e-4))  # the far third candidate adds ~1e-200
    nothing, same_move, settles = np.zeros(3), np.full(3, 0.005), np.array([0.0, math.sqrt(2e-4), 0.0])
    gains = zero_one_gains(g, cov, np.stack([nothing, same_move, settles]))
    assert gains[0] == 0.0 and gains[1] == 0.0  # a run that moves both alike cannot change the pick
    assert gains[2] == pytest.approx(wrong, rel=1e-9)  # one that resolves the pair removes its whole error
    tie = zero_one_gains(np.zeros(2), np.eye(2), np.array([[0.0, math.sqrt(2.0)]]))
    assert tie[0] == pytest.approx(0.5)


def test_zero_one_gain_chases_the_close_contender_the_regret_discounts():
    # Rival A is 0.01 behind with sd 0.008; rival B is 0.06 behind with sd 0.04. Resolving B removes more
    # expected regret (B's sd is five times A's), but resolving A removes more chance of a wrong pick
    # (Phi(-1.25) against Phi(-1.5)): the two losses order the same pair of runs oppositely.
    g, cov = np.array([0.0, 0.01, 0.06]), np.diag([0.0, 0.008**2, 0.04**2])
    resolve_a, resolve_b = np.array([0.0, 0.008, 0.0]), np.array([0.0, 0.0, 0.04])
    s = np.stack([resolve_a, resolve_b])
    regret, wrong = _gains(g, s), zero_one_gains(g, cov, s)
    assert regret[1] > regret[0]
    assert wrong[0] > wrong[1]
    assert wrong == pytest.approx(special.ndtr(-np.array([1.25, 1.5])), rel=1e-6)


def _campaign(rng, chinchilla_runs, isoflop_points):
    n, d = isoflop_points(per_budget=5)
    leader = HOFFMANN_2022 - np.array([0.0, 0.05, 0.05, 0.0, 0.0])
    loser = HOFFMANN_2022 + np.array([0.0, 1.0, 1.0, 0.0, 0.0])
    return {
        "leader": chinchilla_runs(leader, n, d, 0.01, rng),
        "loser": chinchilla_runs(loser, n, d, 0.01, rng),
        "rival": chinchilla_runs(HOFFMANN_2022 - np.array([0.0, 0.04, 0.06, 0.0, 0.0]), n[:2], d[:2], 0.01, rng),
    }


@pytest.mark.parametrize("decision_loss", ["linear", "zero-one"])
def test_the_next_run_goes_to_the_uncertain_contender(rng, chinchilla_runs, isoflop_points, decision_loss):
    # Toy problem: a well-measured leader, a clearly worse candidate, and a rival with two runs
    # whose predicted loss at C* is close to the leader's. Equal-cost pool points: the most
    # informative run is obviously one of the rival's, whatever a wrong pick costs.
    fit = fit_pooled(_campaign(rng, chinchilla_runs, isoflop_points))
    pool = [(n, 1e18 / (6 * n)) for n in (2e7, 4e7, 8e7)]
    chosen = choose_next_runs(fit, pool, TARGET, 1e18, np.random.default_rng(0), decision_loss=decision_loss)
    assert [c for c, _, _ in chosen] == ["rival"]


def test_the_design_tracks_the_fits_predictive_variance_at_the_target(rng, chinchilla_runs, isoflop_points):
    # Invariant: before any planned run, the design's Var(g_k) is the pooled fit's own delta-method variance.
    fit = fit_pooled(_campaign(rng, chinchilla_runs, isoflop_points))
    belief = Belief.from_pooled(fit)
    _, grads = belief.target(TARGET)
    jac, cost = belief.observations([(1e7, 2e8)])
    design = _Design(belief, grads, jac, cost, belief.cov.copy())
    _, cov, _, _ = fit.target_moments(TARGET)
    np.testing.assert_allclose(design.target_var(), np.diag(cov), rtol=1e-6)
    design.observe(2, 0)  # planning a run of the rival can only shrink every variance
    assert np.all(design.target_var() <= np.diag(cov) * (1 + 1e-9))


def test_once_the_decision_is_settled_runs_go_to_the_least_certain_prediction(rng, chinchilla_runs, isoflop_points):
    # The leader is far ahead (E 35% lower) of two equally poor candidates, so no run can change the
    # decision (its knowledge gradient is ~1e-9); one of the two has a single run, so its predicted loss at C* is by far the least certain.
    n, d = isoflop_points(per_budget=5)
    loser = HOFFMANN_2022 + np.array([0.3, 1.0, 1.0, 0.0, 0.0])
    runs = {"leader": chinchilla_runs(HOFFMANN_2022 - np.array([0.3, 0.0, 0.0, 0.0, 0.0]), n, d, 0.01, rng),
            "measured": chinchilla_runs(loser, n, d, 0.01, rng),
            "unmeasured": chinchilla_runs(loser, n[:1], d[:1], 0.01, rng)}
    fit = fit_pooled(runs)
    pool = [(n, 1e18 / (6 * n)) for n in (2e7, 4e7, 8e7)]
    both = choose_next_runs(fit, pool, TARGET, 1e18, np.random.default_rng(0))
    assert [c for c, _, _ in both] == ["unmeasured"]


def test_replicates_are_valued_at_their_best_rate_per_run(rng, chinchilla_runs, isoflop_points):
    # KG(*): looking ahead to r replicate runs never lowers a proposal's value per run, and where
    # one run of a point barely moves the decision, a few runs of it are worth more per run.
    fit = fit_pooled(_campaign(rng, chinchilla_runs, isoflop_points))
    belief = Belief.from_pooled(fit)
    g, grads = belief.target(TARGET)
    jac, cost = belief.observations([(n, 1e18 / (6 * n)) for n in (2e7, 4e7, 8e7)])
    design = _Design(belief, grads, jac, cost, belief.cov.copy())
    every = np.ones(cost.shape, dtype=bool)
    one = _acquisition(design, g, 0.0, every, np.full(cost.shape, 1.0))
    four = _acquisition(design, g, 0.0, every, np.full(cost.shape, 4.0))
    assert np.all(four >= one)
    assert np.any(four > 1.01 * one)


def test_seeds_per_point_are_capped_counting_the_runs_already_made(rng, chinchilla_runs, isoflop_points):
    runs = _campaign(rng, chinchilla_runs, isoflop_points)
    pool = [(1e7, 1e8), (2e7, 4e8)]
    budget = 40 * 6 * 2e7 * 4e8  # far more than the cap lets a batch spend
    chosen = choose_next_runs(runs, pool, TARGET, budget, np.random.default_rng(0), max_seeds=3,
                              done={("rival", 1e7, 1e8): 2})
    counts = {key: chosen.count(key) for key in set(chosen)}
    assert counts.get(("rival", 1e7, 1e8), 0) <= 1
    assert max(counts.values()) == 3  # repeats do happen up to the cap: the cheap point is worth a second seed
    assert len(chosen) <= 3 * 6 - 2


def test_a_batch_respects_the_budget_and_the_candidate_filter(rng, chinchilla_runs, isoflop_points):
    runs = _campaign(rng, chinchilla_runs, isoflop_points)
    pool = [(n, r * n) for n in (1e7, 4e7) for r in (5.0, 20.0, 80.0)]
    budget = 2e18
    chosen = choose_next_runs(runs, pool, TARGET, budget, np.random.default_rng(0), candidates=["leader", "loser"])
    assert chosen and sum(6 * n * d for _, n, d in chosen) <= budget
    assert {c for c, _, _ in chosen} <= {"leader", "loser"}
    assert len(set(chosen)) == len(chosen)  # no repeats within a batch unless asked


def test_the_single_law_version_prefers_a_new_point_to_a_well_measured_one(chinchilla_runs, rng):
    # Five seeds at each of six points; the pool offers one of those points again, or a new point
    # of the same cost. The new point obviously reduces Var(L*) more.
    base = [(1e7, 2e8), (2e7, 4e8), (4e7, 8e8), (1e7, 1e9), (2e7, 1e8), (4e7, 4e9)]
    n, d = np.repeat([p[0] for p in base], 5), np.repeat([p[1] for p in base], 5)
    fit = fit_law(chinchilla_runs(HOFFMANN_2022, n, d, 0.01, rng), FitConfig(loss="student-t"))
    pool = [(4e7, 8e8), (1.6e8, 2e8)]  # equal FLOPs
    assert choose_for_single_law(fit, pool, TARGET, 6 * 4e7 * 8e8, rng) == [(1.6e8, 2e8)]


def test_invalid_requests_are_rejected(rng, chinchilla_runs, isoflop_points):
    fit = fit_pooled(_campaign(rng, chinchilla_runs, isoflop_points))
    with pytest.raises(ValueError, match="empty"):
        choose_next_runs(fit, [], TARGET, 1e18, rng)
    with pytest.raises(ValueError, match="> 0"):
        choose_next_runs(fit, [(1e7, 1e8)], TARGET, -1.0, rng)
    with pytest.raises(TypeError, match="PooledFit"):
        choose_next_runs(42, [(1e7, 1e8)], TARGET, 1e18, rng)
    with pytest.raises(ValueError, match="decision_loss"):
        choose_next_runs(fit, [(1e7, 1e8)], TARGET, 1e18, rng, decision_loss="hinge")


def test_grid_design_covers_every_pair_and_its_budgeted_prefix_is_spread_out():
    pool = [(n, r * n) for n in (1e7, 2e7, 4e7) for r in (10.0, 20.0)]
    full = grid_design(["a", "b"], pool)
    assert len(full) == 12 and len(set(full)) == 12
    prefix = grid_design(["a", "b"], pool, flop_budget=6 * 4e7 * 400 * 4e7)
    assert sum(6 * n * d for _, n, d in prefix) <= 6 * 4e7 * 400 * 4e7
    assert len({(n, d) for _, n, d in prefix}) > 1


def test_random_design_is_reproducible_and_within_budget():
    pool = [(n, 20 * n) for n in (1e7, 2e7, 4e7)]
    a = random_design(["a", "b"], pool, 1e18, np.random.default_rng(5))
    assert a == random_design(["a", "b"], pool, 1e18, np.random.default_rng(5))
    assert sum(6 * n * d for _, n, d in a) <= 1e18


def test_isoflop_design_lies_on_its_budgets():
    points = isoflop_design([1e18, 1e19], 1e7, 1e8, points_per_budget=5)
    assert {round(math.log10(6 * n * d), 9) for n, d in points} == {18.0, 19.0}
    with pytest.raises(ValueError):
        isoflop_design([1e18], 1e8, 1e7)
