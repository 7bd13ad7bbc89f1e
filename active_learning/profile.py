"""Profile-likelihood limits: how far a parameter can move before the runs object, the rest refitted.

The Laplace interval is the curvature at the optimum. For a parameter the fit pushes
onto its box bound (E -> 0 on runs that show no irreducible loss) the curvature sees
no room to move, so the interval has zero width on that side, and a user cannot tell
"E is 0" from "E is anything up to 1.5". The profile answers it: fix the parameter at
v, refit the others, and find the v where the likelihood-ratio statistic reaches the
interval's quantile squared. The quantile is the one the Laplace intervals use (the
(1 + level)/2 point), so with the bound as the other end, [bound, limit] is an interval
at the fit's level, read the same way as the others.

For a robust density the likelihood ratio is rescaled as in the drop-in-dispersion
test: Lambda(v) = 2 (nll(v) - nll_hat) / (E[psi^2] / E[psi']), the scale held at its
full-model estimate, which is chi^2_1 under the null like the Gaussian ratio
(Schrader & Hettmansperger 1980, "Robust analysis of variance based upon a likelihood
ratio criterion", Biometrika 67; Heritier & Ronchetti 1994). Here
E[psi^2] / E[psi'] = mean(psi') sigma^2, with sigma^2 the same M-estimator dispersion
the Laplace covariance uses, so on an interior parameter of a well-determined fit the
profile limit and the Laplace interval's end agree to first order (tested).

References:
  Venzon & Moolgavkar 1988, "A method for computing profile-likelihood-based confidence intervals".
  Self & Liang 1987, asymptotics of likelihood-ratio tests with a parameter on the boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import optimize

from active_learning.fit import Fit, FitConfig, _at_bound, _clip_to_bounds, _Problem, make_problem
from active_learning.scaling_law import Features, Observation

FIRST_STEP = 1e-3  # internal units (log E, exponents): the first probe's distance from the estimate
UNBOUNDED_REACH = 64.0  # how far to look along a coordinate the box leaves open
ROOT_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class ProfileLimit:
    """One-sided profile-likelihood limit of a parameter.

    Attributes:
      name: the paper's name of the parameter (E, alpha, ...).
      side: 'upper' or 'lower': which limit this is.
      value: the limit in the paper's units (E itself, not log E), or None when the likelihood
        does not object anywhere up to the other box bound: the runs do not bound it at all.
      theta: the law's natural parameters refitted with the parameter at its limit, or None.
    """

    name: str
    side: str
    value: float | None
    theta: np.ndarray | None


def _refit(problem: _Problem, z_start: np.ndarray, index: int, v: float) -> optimize.OptimizeResult:
    """Minimise over every coordinate but `index` (held at v) and the log scale (held at z_start's)."""
    p = problem.n_params
    bounds = problem.bounds()
    bounds[index] = (v, v)
    if problem.noise.has_scale:
        bounds[p] = (float(z_start[p]), float(z_start[p]))
    z0 = z_start.copy()
    z0[index] = v
    return optimize.minimize(problem.value_and_grad, _clip_to_bounds(z0, bounds), jac=True, method="L-BFGS-B",
                             bounds=bounds, options=dict(maxiter=3000, maxcor=20, ftol=1e-15, gtol=1e-11))


def _ratio_scale(problem: _Problem, z_hat: np.ndarray, sigma2: float) -> float:
    """E[psi^2] / E[psi'] = mean(psi') sigma^2: the robust likelihood ratio's divisor."""
    p = problem.n_params
    log_s = float(z_hat[p]) if problem.noise.has_scale else 0.0
    residuals = problem.log_y - problem.law.log_loss(problem.reparam.to_natural(z_hat[:p]), problem.x)
    return float(np.mean(problem.noise.psi_prime(residuals, log_s))) * sigma2


def profile_limit(problem: _Problem, z_hat: np.ndarray, index: int, direction: int, *, sigma2: float,
                  quantile: float) -> tuple[float, np.ndarray] | None:
    """The internal value of coordinate `index` where the profile statistic reaches quantile^2.

    Walks from the estimate in `direction` (+1 up, -1 down) in doubling steps, each refit
    started from the last, until the statistic crosses the threshold or the box ends; then
    finds the crossing by Brent's method. The coordinate must be one the law's
    reparametrisation leaves alone (every bounded one is), so internal and natural agree.

    Returns:
      (value, z) with z the refitted internal coordinates there, or None if the statistic
      stays under the threshold up to the box bound (or UNBOUNDED_REACH where there is none).
    """
    nll_hat = problem.value_and_grad(z_hat)[0]
    scale = _ratio_scale(problem, z_hat, sigma2)
    threshold = quantile * quantile
    lo, hi = problem.bounds()[index]
    start = float(z_hat[index])
    edge = hi if direction > 0 else lo
    if edge is None:
        edge = start + direction * UNBOUNDED_REACH

    def excess(res) -> float:
        return 2.0 * max(res.fun - nll_hat, 0.0) / scale - threshold

    inside_v, inside_z, step = start, z_hat, FIRST_STEP
    while True:
        v = start + direction * step
        last = direction * (v - edge) >= 0
        v = edge if last else v
        res = _refit(problem, inside_z, index, v)
        if excess(res) > 0:
            break
        if last:
            return None
        inside_v, inside_z, step = v, res.x, 2.0 * step
    root = optimize.brentq(lambda u: excess(_refit(problem, inside_z, index, u)), inside_v, v, xtol=ROOT_TOLERANCE)
    return float(root), _refit(problem, inside_z, index, root).x


def bound_limits(runs: Sequence[Observation], config: FitConfig, fit: Fit) -> dict[str, ProfileLimit]:
    """For each parameter `fit` left on its box bound, the profile limit on the open side.

    E at its lower bound gets an upper limit: the largest irreducible loss the runs allow
    at the fit's level, with the rest of the law refitted (so its theta is a law the runs
    accept, for extrapolating the pessimistic case). Empty when nothing is at a bound.
    """
    at_bound = _at_bound(fit.law, fit.theta)
    if not at_bound:
        return {}
    x = Features.from_observations(runs)
    problem = make_problem(x, np.log([r.loss for r in runs]), config)
    z_hat = problem.reparam.to_internal(fit.theta)
    if problem.noise.has_scale:
        z_hat = np.append(z_hat, fit.log_scale)
    names = list(fit.law.describe(fit.theta))
    out = {}
    for name, bound_side in at_bound.items():
        index = names.index(name)
        side, direction = ("upper", 1) if bound_side == "lower" else ("lower", -1)
        found = profile_limit(problem, z_hat, index, direction, sigma2=fit.noise_var, quantile=fit.quantile)
        if found is None:
            out[name] = ProfileLimit(name, side, None, None)
            continue
        theta = problem.reparam.to_natural(found[1][: problem.n_params])
        out[name] = ProfileLimit(name, side, fit.law.describe(theta)[name], theta)
    return out

