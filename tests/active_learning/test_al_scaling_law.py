"""The law forms: Jacobians, the published data-constrained answer, and the coordinate maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from active_learning.scaling_law import (HOFFMANN_2022, LAWS, Chinchilla, DataConstrained, Features, Kaplan,
                                         Observation, get_law)

KAPLAN_2020 = np.array([math.log(8.8e13), math.log(5.4e13), 0.076, 0.095])
# Muennighoff et al. 2023, app. A, as published: e = log E, a = log A, b = log B, alpha = beta, R_D*, R_N*
# (E 1.869, A 520.8, B 1487.7 rounded).
MUENNIGHOFF_2023 = np.array([0.6254804, 6.255414, 7.3049974, 0.3526596, 0.3526596,
                             math.log(15.387756), math.log(5.309743)])
PARAMS = {"chinchilla": HOFFMANN_2022, "kaplan": KAPLAN_2020, "data-constrained": MUENNIGHOFF_2023}


def _random_runs(rng, size=25) -> Features:
    n = 10 ** rng.uniform(7, 10.5, size)
    d = 10 ** rng.uniform(8, 12, size)
    return Features.from_arrays(n, d, d / rng.uniform(1, 60, size))


@pytest.mark.parametrize("name", sorted(LAWS))
def test_analytic_jacobian_matches_central_differences(name, rng):
    law, theta, x = get_law(name), PARAMS[name], _random_runs(rng)
    f, jac = law.log_loss_jac(theta, x)
    numeric = np.empty_like(jac)
    for j in range(theta.size):
        step = np.zeros(theta.size)
        step[j] = 1e-6
        numeric[:, j] = (law.log_loss(theta + step, x) - law.log_loss(theta - step, x)) / 2e-6
    np.testing.assert_allclose(f, law.log_loss(theta, x))
    np.testing.assert_allclose(jac, numeric, atol=1e-7)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_one_theta_per_run_equals_shared_theta(name, rng):
    law, theta, x = get_law(name), PARAMS[name], _random_runs(rng, 7)
    f1, j1 = law.log_loss_jac(theta, x)
    f2, j2 = law.log_loss_jac(np.tile(theta, (7, 1)), x)
    np.testing.assert_allclose(f1, f2)
    np.testing.assert_allclose(j1, j2)
    assert law.log_loss(np.tile(theta, (3, 1)), x).shape == (3, 7)


def test_muennighoff_published_law_gives_published_loss():
    # Muennighoff et al. 2023: L(N = 6.34e9, D = 242e9, U = 25e9) with their fitted constants.
    x = Features.from_arrays([6.34e9], [242e9], [25e9])
    loss = math.exp(float(DataConstrained().log_loss(MUENNIGHOFF_2023, x)[0]))
    assert round(loss, 5) == 2.22564
    # The rounded constants (E 1.869, A 520.8, B 1487.7, alpha 0.35266) move the 4th decimal: E alone
    # is rounded by 1.1e-4.
    rounded = np.array([math.log(1.869), math.log(520.8), math.log(1487.7), 0.35266, 0.35266,
                        math.log(15.387756), math.log(5.309743)])
    assert math.exp(float(DataConstrained().log_loss(rounded, x)[0])) == pytest.approx(2.22564, abs=2e-4)


def test_data_constrained_law_without_repetition_is_chinchilla(rng):
    # One epoch and no excess parameters: D' = D and N' = N.
    x = Features.from_arrays([1e8], [1e10])
    dc = DataConstrained().log_loss(np.append(HOFFMANN_2022, [2.0, 1.0]), x)
    np.testing.assert_allclose(dc, Chinchilla().log_loss(HOFFMANN_2022, x))


def test_kaplan_law_matches_its_formula():
    n, d = 1e9, 2e10
    expected = ((8.8e13 / n) ** (0.076 / 0.095) + 5.4e13 / d) ** 0.095
    got = math.exp(float(Kaplan().log_loss(KAPLAN_2020, Features.from_arrays([n], [d]))[0]))
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_reparam_round_trips_and_preserves_the_loss(name, rng):
    law, theta, x = get_law(name), PARAMS[name], _random_runs(rng, 5)
    rep = law.reparam(18.0, 21.0)
    internal = rep.to_internal(theta)
    np.testing.assert_allclose(rep.to_natural(internal), theta)
    _, jac = law.log_loss_jac(theta, x)
    step = 1e-6 * np.arange(1, theta.size + 1)
    moved = law.log_loss(rep.to_natural(internal + step), x) - law.log_loss(theta, x)
    np.testing.assert_allclose(moved, rep.jacobian(jac) @ step, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("field", ["n", "d", "loss", "unique", "flops_per_token"])
def test_observation_rejects_non_positive_values(field):
    values = dict(n=1e8, d=1e9, loss=3.0)
    values[field] = -1.0
    with pytest.raises(ValueError, match=field):
        Observation(**values)


def test_observation_flops_default_to_6nd():
    assert Observation(1e8, 1e9, 3.0).flops == 6e17
    assert Observation(1e8, 1e9, 3.0, flops_per_token=8e8).flops == 8e17


def test_unknown_law_names_the_choices():
    with pytest.raises(ValueError, match="chinchilla"):
        get_law("gpt")


@pytest.mark.parametrize("name", sorted(LAWS))
def test_bounded_coordinates_are_left_alone_by_the_reparametrisation(name):
    """Fit.at_bound compares natural values with the internal bounds: that holds only where M's row is e_i."""
    law = get_law(name)
    rep = law.reparam(18.0, 21.0)
    bounded = [i for i, (lo, hi) in enumerate(law.bounds()) if lo is not None or hi is not None]
    assert bounded  # every law bounds something (an exponent at least)
    for i in bounded:
        np.testing.assert_array_equal(rep.matrix[i], np.eye(len(law.param_names))[i])
        assert rep.offset[i] == 0.0
