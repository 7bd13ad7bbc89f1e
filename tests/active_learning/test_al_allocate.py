"""Compute-optimal allocation: published ratio, closed form against numeric, FLOPs models, inference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from active_learning import allocate
from active_learning.scaling_law import HOFFMANN_2022, Chinchilla, DataConstrained, Kaplan

LAW = Chinchilla()


def test_hoffmann_tokens_per_parameter_at_gopher_compute():
    # Hoffmann et al.'s rounded Approach-3 law gives ~92.6 tokens per parameter at 5.76e23 FLOPs.
    ratio = float(allocate.tokens_per_parameter(LAW, HOFFMANN_2022, 5.76e23))
    assert ratio == pytest.approx(92.6, abs=0.05)
    n, d = allocate.closed_form(1.69, 406.4, 410.7, 0.34, 0.28, 5.76e23)
    assert d / n == pytest.approx(ratio, rel=1e-10)


@pytest.mark.parametrize("flops", [1e18, 1e21, 1e24])
def test_numeric_search_finds_the_closed_form_optimum(flops):
    # A vanishing intercept forces the numeric path without moving the optimum.
    numeric = allocate.log_optimal_allocation(LAW, HOFFMANN_2022, flops,
                                              flops_model=allocate.FlopsModel(6.0, 1e-12))
    closed = allocate.log_optimal_allocation(LAW, HOFFMANN_2022, flops)
    np.testing.assert_allclose(numeric, closed, atol=1e-6)


def test_kaplan_closed_form_matches_numeric_search():
    theta = np.array([math.log(8.8e13), math.log(5.4e13), 0.076, 0.095])
    closed = allocate.log_optimal_allocation(Kaplan(), theta, 1e21)
    numeric = allocate.log_optimal_allocation(Kaplan(), theta, 1e21, flops_model=allocate.FlopsModel(6.0, 1e-12))
    np.testing.assert_allclose(numeric, closed, atol=1e-6)


def test_allocation_is_vectorised_over_parameter_draws():
    draws = np.stack([HOFFMANN_2022, HOFFMANN_2022 + [0, 0, 0, 0.02, 0]])
    log_n, _ = allocate.log_optimal_allocation(LAW, draws, 1e22, flops_model=allocate.FlopsModel(6.0, 1e-12))
    single = [float(allocate.log_optimal_allocation(LAW, t, 1e22)[0]) for t in draws]
    np.testing.assert_allclose(log_n, single, atol=1e-6)


def test_costlier_tokens_shift_the_optimum_to_smaller_models():
    # With per-token overhead that does not scale with N, each token costs more: fewer tokens, and
    # the optimum spends the budget on the same loss trade-off at a smaller size.
    std = allocate.log_optimal_allocation(LAW, HOFFMANN_2022, 1e20)
    heavy = allocate.log_optimal_allocation(LAW, HOFFMANN_2022, 1e20, flops_model=allocate.FlopsModel(6.0, 2e9))
    assert float(heavy[1]) < float(std[1])
    n, d = math.exp(float(heavy[0])), math.exp(float(heavy[1]))
    assert (6.0 * n + 2e9) * d == pytest.approx(1e20, rel=1e-9)


def test_flops_model_is_fitted_from_reported_flops_per_token():
    from active_learning.scaling_law import Observation

    runs = [Observation(n, 1e9, 3.0, flops_per_token=6 * n + 1e7) for n in (1e7, 3e7, 1e8)]
    model = allocate.FlopsModel.from_observations(runs)
    assert model.slope == pytest.approx(6.0)
    assert model.intercept == pytest.approx(1e7, rel=1e-6)
    assert allocate.FlopsModel.from_observations([Observation(1e7, 1e9, 3.0)]).is_standard


def test_inference_aware_trains_smaller_models_on_more_tokens():
    # Sardana et al. 2024: the more inference demand, the smaller and longer-trained the model.
    n_opt, d_opt = allocate.closed_form(1.69, 406.4, 410.7, 0.34, 0.28, 1e23)
    target = math.exp(float(allocate.optimal_log_loss(LAW, HOFFMANN_2022, 1e23)))
    none = allocate.inference_aware(LAW, HOFFMANN_2022, target, 0.0)
    heavy = allocate.inference_aware(LAW, HOFFMANN_2022, target, 1e13)
    assert none.n == pytest.approx(n_opt, rel=1e-3)
    assert none.d == pytest.approx(d_opt, rel=1e-3)
    assert heavy.n < 0.7 * n_opt and heavy.d > d_opt
    assert heavy.total_flops < 6 * n_opt * d_opt + 2 * n_opt * 1e13


def test_inference_aware_rejects_unreachable_losses():
    with pytest.raises(ValueError, match="below"):
        allocate.inference_aware(LAW, HOFFMANN_2022, 1.5, 1e12)


def test_inference_budget_lowers_the_training_share():
    log_n, log_d = allocate.log_optimal_allocation(LAW, HOFFMANN_2022, 1e22, inference_tokens=1e12)
    n, d = math.exp(float(log_n)), math.exp(float(log_d))
    assert 6 * n * d + 2 * n * 1e12 == pytest.approx(1e22, rel=1e-9)
    assert n < math.exp(float(allocate.log_optimal_allocation(LAW, HOFFMANN_2022, 1e22)[0]))


def test_data_constrained_allocation_uses_the_unique_budget():
    theta = np.append(HOFFMANN_2022, [math.log(15.387756), math.log(5.309743)])
    law = DataConstrained()
    free = allocate.optimal_log_loss(law, theta, 1e22, unique_tokens=1e15)
    scarce = allocate.optimal_log_loss(law, theta, 1e22, unique_tokens=1e10)
    assert float(scarce) > float(free)
    assert float(free) == pytest.approx(float(allocate.optimal_log_loss(LAW, HOFFMANN_2022, 1e22)), abs=1e-6)
