"""The best-design bound: its posterior against a direct one, its gradient, and what an optimum must satisfy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special

from active_learning import oracle
from active_learning.scaling_law import HOFFMANN_2022, Chinchilla, Features

POOL = [(float(n), float(n * r)) for n in (1e7, 4e7, 1.6e8) for r in (5.0, 20.0, 80.0)]
TAU = np.array([0.05, 0.3, 0.3, 0.03, 0.03])
SHARED = np.array([3.0, 3.0, 3.0, 0.3, 0.3])


def _campaign(k: int = 3, seed: int = 0, pool=POOL) -> oracle.Campaign:
    theta = HOFFMANN_2022 + np.random.default_rng(seed).standard_normal((k, 5)) * TAU
    return oracle.Campaign(theta, pool, [(1e7, 2e8)], 1e21, 0.01, TAU, SHARED)


def test_one_candidates_sd_matches_the_direct_gaussian_posterior():
    # With one candidate, theta = mu + delta has prior covariance diag(shared^2 + tau^2): the lifted
    # model must give the textbook posterior g^T (Sigma0^-1 + J^T W J / sigma^2)^-1 g.
    campaign = _campaign(k=1)
    weights = np.random.default_rng(1).uniform(0, 3, (1, len(POOL)))
    law, theta = Chinchilla(), campaign.theta[0]
    n, d = np.array(POOL).T
    jac = law.log_loss_jac(theta, Features.from_arrays(n, d))[1]
    base = law.log_loss_jac(theta, Features.from_arrays([1e7], [2e8]))[1]
    info = (jac.T * weights[0]) @ jac + base.T @ base
    cov = np.linalg.inv(np.diag(1.0 / (SHARED**2 + TAU**2)) + info / 0.01**2)
    g = campaign.belief().target(campaign.target_flops)[1][0]
    assert oracle.evaluate(campaign, weights).mean_sd == pytest.approx(math.sqrt(g @ cov @ g), rel=1e-8)


def test_the_gradient_matches_finite_differences():
    lin = oracle._Linearised.build(_campaign())
    w = np.random.default_rng(2).uniform(0.5, 2.0, lin.jac.shape[:2])
    _, grad = lin.mean_sd(w)
    step = 1e-5
    for k, m in [(0, 0), (1, 4), (2, 8)]:
        up, down = w.copy(), w.copy()
        up[k, m] += step
        down[k, m] -= step
        numeric = (lin.mean_sd(up)[0] - lin.mean_sd(down)[0]) / (2 * step)
        assert grad[k, m] == pytest.approx(numeric, rel=1e-4)


def test_the_line_searchs_closed_form_agrees_with_the_direct_posterior_along_the_segment():
    # Frank-Wolfe's line search reads the mean sd off one factorisation (_Segment): at every t it
    # must be the sd of the design x + t (v - x) computed afresh, for the predictions and the decision.
    campaign = _campaign(seed=11)
    lin = oracle._Linearised.build(campaign)
    rng = np.random.default_rng(12)
    x = rng.uniform(0.2, 2.0, lin.jac.shape[:2])
    vertex = oracle._cheapest_vertex(rng.standard_normal(x.size), lin.cost.ravel(), float(np.sum(x * lin.cost)),
                                     4.0).reshape(x.shape)
    for contrasts in (lin.targets(), oracle.pick_contrast(campaign)[0]):
        segment = oracle._Segment.build(lin, x, vertex, contrasts)
        for t in (0.0, 0.1, 0.5, 0.93, 1.0):
            direct = lin.mean_sd(x + t * (vertex - x), contrasts)[0]
            assert segment.mean_sd(t) == pytest.approx(direct, rel=1e-9)


def test_the_optimum_spends_the_budget_within_the_cap_and_beats_the_grid_at_its_flops():
    campaign = _campaign()
    grid = oracle.evaluate(campaign, np.ones((3, len(POOL))))
    best = oracle.optimal_design(campaign, grid.flops, max_seeds=2.0)
    assert best.flops == pytest.approx(grid.flops, rel=1e-9)
    assert best.weights.min() >= 0 and best.weights.max() <= 2.0 + 1e-12
    assert best.mean_sd <= grid.mean_sd  # the grid is one of the designs it chose from
    assert oracle.evaluate(campaign, best.weights).mean_sd == pytest.approx(best.mean_sd)


def test_more_flops_never_hurt_the_best_design():
    campaign = _campaign(seed=3)
    grid_flops = oracle.evaluate(campaign, np.ones((3, len(POOL)))).flops
    sds = [oracle.optimal_design(campaign, f * grid_flops, rel_gap=1e-3).mean_sd for f in (0.1, 0.3, 1.0)]
    assert sds[0] > sds[1] > sds[2]


def test_the_best_design_agrees_with_a_general_solver_on_a_small_campaign():
    # SLSQP is too slow on the benchmark's 200 weights but converges on 2 x 4; the answers must agree.
    campaign = _campaign(k=2, seed=4, pool=POOL[::2])
    budget = 0.3 * oracle.evaluate(campaign, np.ones((2, 5))).flops
    best = oracle.optimal_design(campaign, budget)
    lin = oracle._Linearised.build(campaign)
    unit = np.tile(campaign.cost(), 2) / budget
    res = optimize.minimize(lambda x: [v.ravel() if i else v for i, v in enumerate(lin.mean_sd(x.reshape(2, 5)))],
                            np.full(10, 1.0 / unit.sum()), jac=True, method="SLSQP", bounds=[(0.0, 4.0)] * 10,
                            constraints=[{"type": "eq", "fun": lambda x: unit @ x - 1.0}],
                            options=dict(maxiter=2000, ftol=1e-14))
    assert res.success
    assert best.mean_sd == pytest.approx(res.fun, rel=1e-4)
    assert best.mean_sd <= res.fun * (1 + 1e-4)


def test_a_budget_the_cap_cannot_spend_is_refused():
    campaign = _campaign(pool=POOL[:2])
    most = 4.0 * 3 * float(campaign.cost().sum())
    with pytest.raises(ValueError, match="max_seeds"):
        oracle.optimal_design(campaign, 1.01 * most)
    with pytest.raises(ValueError, match="flop_budget"):
        oracle.optimal_design(campaign, 0.0)


def test_the_pick_contrast_is_the_difference_of_the_two_best_and_its_sd_the_direct_one():
    campaign = _campaign(k=3, seed=5)
    g, _ = campaign.belief().target(campaign.target_flops)
    order = np.argsort(g)
    contrast, margin = oracle.pick_contrast(campaign)
    assert margin == pytest.approx(g[order[1]] - g[order[0]]) and margin > 0
    weights = np.random.default_rng(6).uniform(0, 2, (3, len(POOL)))
    lin = oracle._Linearised.build(campaign)
    sd_each, _ = lin.sds(weights, lin.targets())
    # Var(g_a - g_b) = Var(g_a) + Var(g_b) - 2 Cov(g_a, g_b); the covariance from the lifted posterior directly.
    cov = lin.covariance(weights)
    def lift(k):  # g_k on mu and on delta_k
        return np.concatenate([lin.grads[k], *[lin.grads[k] if j == k else np.zeros(5) for j in range(3)]])

    a, b = lift(order[0]), lift(order[1])
    direct = math.sqrt(sd_each[order[0]] ** 2 + sd_each[order[1]] ** 2 - 2 * a @ cov @ b)
    assert oracle.evaluate(campaign, weights, contrast).mean_sd == pytest.approx(direct, rel=1e-8)
    assert direct == pytest.approx(math.sqrt((a - b) @ cov @ (a - b)), rel=1e-8)


def test_the_contrast_gradient_matches_finite_differences():
    campaign = _campaign(seed=7)
    lin = oracle._Linearised.build(campaign)
    contrast, _ = oracle.pick_contrast(campaign)
    w = np.random.default_rng(8).uniform(0.5, 2.0, lin.jac.shape[:2])
    _, grad = lin.mean_sd(w, contrast)
    step = 1e-5
    for k, m in [(0, 1), (1, 5), (2, 7)]:
        up, down = w.copy(), w.copy()
        up[k, m] += step
        down[k, m] -= step
        numeric = (lin.mean_sd(up, contrast)[0] - lin.mean_sd(down, contrast)[0]) / (2 * step)
        assert grad[k, m] == pytest.approx(numeric, rel=1e-4)


def test_the_pick_bound_beats_any_design_of_the_same_flops_and_agrees_with_a_general_solver():
    campaign = _campaign(k=2, seed=4, pool=POOL[::2])
    grid = np.ones((2, 5))
    budget = 0.3 * oracle.evaluate(campaign, grid).flops
    bound = oracle.pick_bound(campaign, budget)
    cost = np.tile(campaign.cost(), 2)
    rng = np.random.default_rng(9)
    # Random designs within the cap that spend the budget: vertices of that set, for random directions.
    vertices = [oracle._cheapest_vertex(rng.standard_normal(10), cost, budget, 4.0).reshape(2, 5) for _ in range(5)]
    for weights in (oracle.optimal_design(campaign, budget).weights, grid * 0.3, *vertices):  # the first is best
        # for the predictions, not the decision
        assert np.sum(weights.ravel() * cost) == pytest.approx(budget) and weights.max() <= 4.0 + 1e-12
        assert oracle.pick_probability(campaign, weights) <= bound + 1e-9
    contrast, margin = oracle.pick_contrast(campaign)
    lin = oracle._Linearised.build(campaign)
    unit = cost / budget
    objective = lambda x: [v.ravel() if i else v for i, v in enumerate(lin.mean_sd(x.reshape(2, 5), contrast))]  # noqa: E731
    res = optimize.minimize(objective, np.full(10, 1.0 / unit.sum()), jac=True, method="SLSQP", bounds=[(0.0, 4.0)] * 10,
                            constraints=[{"type": "eq", "fun": lambda x: unit @ x - 1.0}],
                            options=dict(maxiter=2000, ftol=1e-14))
    assert res.success
    assert bound == pytest.approx(float(special.ndtr(margin / res.fun)), rel=1e-4)


def test_whole_runs_round_within_the_budget_and_never_past_the_relaxed_counts():
    weights = np.array([[0.4, 2.7, 0.0], [1.0, 0.6, 3.2]])
    cost = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    budget = float(np.sum(weights * cost))  # 20.8
    counts = oracle.whole_runs(weights, cost, budget)
    assert np.all(counts >= np.floor(weights)) and np.all(counts <= np.ceil(weights))
    assert float(np.sum(counts * cost)) <= budget
    # Down: [0, 2, 0; 1, 0, 3] costs 17. The largest fraction left, 0.7 (cost 2), fits; 0.6 (cost 2) no longer
    # does, with 1.8 left; 0.4 (cost 1) does: 20.
    np.testing.assert_array_equal(counts, [[1, 3, 0], [1, 0, 3]])
    # With 18, one FLOP is left after the floors: the 0.7 and 0.6 runs cost 2, so the 0.4 run (cost 1) is added.
    np.testing.assert_array_equal(oracle.whole_runs(weights, cost, 18.0), [[1, 2, 0], [1, 0, 3]])
    np.testing.assert_array_equal(oracle.whole_runs(np.full((1, 2), 2.0), np.ones((1, 2)), 4.0), [[2, 2]])


def test_the_decision_contrasts_are_each_rival_against_the_best_over_its_margin():
    campaign = _campaign(k=4, seed=5)
    g, _ = campaign.belief().target(campaign.target_flops)
    order = np.argsort(g)
    contrasts = oracle.decision_contrasts(campaign)
    assert contrasts.shape == (3, 4, 5)
    weights = np.random.default_rng(2).uniform(0, 2, (4, len(POOL)))
    pair, margin = oracle.pick_contrast(campaign)
    lin = oracle._Linearised.build(campaign)
    sds, _ = lin.sds(weights, contrasts)
    # The first is the runner-up's: the pick contrast over the pick margin.
    assert sds[0] == pytest.approx(lin.sds(weights, pair)[0][0] / margin, rel=1e-10)
    for i, rival in enumerate(order[1:]):
        one = np.zeros((1, 4, 5))
        one[0, order[0]], one[0, rival] = lin.grads[order[0]], -lin.grads[rival]
        assert sds[i] == pytest.approx(lin.sds(weights, one)[0][0] / (g[rival] - g[order[0]]), rel=1e-10)


def test_the_decision_design_is_best_for_its_objective_and_under_the_pair_bound():
    campaign = _campaign(k=3, seed=4, pool=POOL[::2])
    budget = 0.3 * oracle.evaluate(campaign, np.ones((3, 5))).flops
    contrasts = oracle.decision_contrasts(campaign)
    design = oracle.decision_design(campaign, budget)
    assert np.sum(design.weights * oracle._Linearised.build(campaign).cost) == pytest.approx(budget)
    for other in (oracle.optimal_design(campaign, budget).weights,
                  oracle.optimal_design(campaign, budget, contrasts=oracle.pick_contrast(campaign)[0]).weights):
        assert design.mean_sd <= oracle.evaluate(campaign, other, contrasts).mean_sd * (1 + 1e-4)
    assert oracle.pick_probability(campaign, design.weights) <= oracle.pick_bound(campaign, budget) + 1e-9
