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

The same test gives the compute-optimal loss at a target C its own interval
(prediction_interval): minimise nll(z) -+ lambda g(z) + mu/2 (g(z) - g_hat)^2, g the
log loss at C's compute-optimal allocation, and move lambda until the statistic reaches
the threshold. Each lambda's minimiser is the profile's point at g(z_lambda) (the
multiplier of the constrained fit g = v), so the search is over one scalar and each
step is a bounded L-BFGS-B fit, the box's bounds honoured as in the parameter
limits. The quadratic (augmented-Lagrangian) term keeps the objective bounded below:
without it a robust nll, which grows at most linearly in g, lets a large multiplier
run the fit off to an absurd law. Where the profile is not convex some values of g are no minimiser's, and the
crossing is read off the convex hull between the two nearest minimisers, which gives
an interval at least as wide as the profile's.

References:
  Venzon & Moolgavkar 1988, "A method for computing profile-likelihood-based confidence intervals".
  Self & Liang 1987, asymptotics of likelihood-ratio tests with a parameter on the boundary.
  Bertsekas 1982, "Constrained Optimization and Lagrange Multiplier Methods" (the multiplier
    traces the constrained minima where the value function is convex).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize

from active_learning import allocate
from active_learning.fit import Fit, FitConfig, _at_bound, _Problem, lbfgs, make_problem
from active_learning.scaling_law import Features, Observation

FIRST_STEP = 1e-3  # internal units (log E, exponents): the first probe's distance from the estimate
UNBOUNDED_REACH = 64.0  # how far to look along a coordinate the box leaves open
ROOT_TOLERANCE = 1e-6
MAX_DOUBLINGS = 60  # of the multiplier, from an eighth of its first-order value: past it the box binds first


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
    return lbfgs(problem.value_and_grad, z0, bounds)


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


def problem_at(runs: Sequence[Observation], config: FitConfig, fit: Fit) -> tuple[_Problem, np.ndarray]:
    """The objective `fit` minimised, and its optimum in internal coordinates (with the log scale)."""
    problem = make_problem(Features.from_observations(runs), np.log([r.loss for r in runs]), config)
    z_hat = problem.reparam.to_internal(fit.theta)
    return problem, (np.append(z_hat, fit.log_scale) if problem.noise.has_scale else z_hat)


def bound_limits(runs: Sequence[Observation], config: FitConfig, fit: Fit) -> dict[str, ProfileLimit]:
    """For each parameter `fit` left on its box bound, the profile limit on the open side.

    E at its lower bound gets an upper limit: the largest irreducible loss the runs allow
    at the fit's level, with the rest of the law refitted (so its theta is a law the runs
    accept, for extrapolating the pessimistic case). Empty when nothing is at a bound.
    """
    at_bound = _at_bound(fit.law, fit.theta)
    if not at_bound:
        return {}
    problem, z_hat = problem_at(runs, config, fit)
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


@dataclasses.dataclass(frozen=True)
class ProfileInterval:
    """Profile-likelihood interval of the loss at a target compute's compute-optimal allocation.

    Attributes:
      flops: the target compute C.
      lo, hi: the interval's ends (loss, not log loss), or None where the likelihood does not
        object anywhere the box allows: the runs do not bound the prediction on that side.
      theta_lo, theta_hi: the law at each end, refitted (a law the runs accept), or None.
    """

    flops: float
    lo: float | None
    hi: float | None
    theta_lo: np.ndarray | None
    theta_hi: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class _Point:
    """One minimiser of nll -+ lambda g: its multiplier, g, the statistic and the coordinates."""

    lam: float
    g: float
    statistic: float
    z: np.ndarray


def _optimal_log_loss_jac(law, theta: np.ndarray, flops: float, unique_tokens: float | None):
    """g = log L at C's compute-optimal allocation under theta, and its gradient in theta (natural).

    The allocation is itself optimal in (N, D), so by the envelope theorem the gradient is
    the law's Jacobian at the allocation, N and D held there.
    """
    log_n, log_d = allocate.log_optimal_allocation(law, theta, flops, unique_tokens=unique_tokens)
    log_u = None if unique_tokens is None else math.log(unique_tokens)
    f, jac = allocate.elementwise_log_loss_jac(law, theta, np.atleast_1d(log_n), np.atleast_1d(log_d), log_u)
    return float(f[0]), jac[0]


def _optimal_log_loss_and_grad(problem: _Problem, z: np.ndarray, flops: float,
                               unique_tokens: float | None) -> tuple[float, np.ndarray]:
    """g(z) and its gradient in z, the internal coordinates (the scale's entry 0)."""
    p = problem.n_params
    g, jac = _optimal_log_loss_jac(problem.law, problem.reparam.to_natural(z[:p]), flops, unique_tokens)
    return g, np.append(problem.reparam.jacobian(jac), np.zeros(z.size - p))


def _multiplier_fit(problem: _Problem, z_start: np.ndarray, weight: float, flops: float,
                    unique_tokens: float | None, centre: float, curvature: float) -> optimize.OptimizeResult:
    """argmin nll(z) + weight g(z) + curvature/2 (g(z) - centre)^2, the log scale held at z_start's.

    The quadratic term is the augmented Lagrangian's (Bertsekas 1982, ch. 2). Without it the
    objective is unbounded below wherever nll grows slower than linearly in g: the Student-t
    nll grows as log |residual|, the Huber one linearly with slope n delta / sigma^2, which a
    large multiplier (a C inside the runs, where g is pinned) exceeds, so L-BFGS-B ran off to
    log L ~ 1e32. With it every minimiser is still the profile's point at its own g (any z with
    the same g and a lower nll would beat it), and it also reaches non-convex parts of the profile.
    """
    p = problem.n_params
    bounds = problem.bounds()
    if problem.noise.has_scale:
        bounds[p] = (float(z_start[p]), float(z_start[p]))

    def objective(z):
        value, grad = problem.value_and_grad(z)
        g, g_grad = _optimal_log_loss_and_grad(problem, z, flops, unique_tokens)
        pull = weight + curvature * (g - centre)
        return value + weight * g + 0.5 * curvature * (g - centre) ** 2, grad + pull * g_grad

    return lbfgs(objective, z_start, bounds)


def hull_crossing(solve, first: float, threshold: float, origin: _Point) -> _Point | None:
    """Where the statistic along the multiplier's path reaches `threshold`.

    solve(lam, start) -> _Point minimises at multiplier lam from the point `start`. From
    `first`, the multiplier doubles until the statistic crosses, then Brent's method
    closes in; the end is interpolated linearly in the statistic between the nearest
    minimisers either side (exact where the profile is smooth, the convex hull across a
    jump where it is not). The returned point carries the inside minimiser's z.
    Returns None if the statistic stays under the threshold for MAX_DOUBLINGS doublings.
    """
    inside, lam = origin, first
    for _ in range(MAX_DOUBLINGS):
        point = solve(lam, inside)
        if point.statistic > threshold:
            break
        inside, lam = point, 2.0 * lam
    else:
        return None
    outside, tried = point, [inside, point]

    def excess(u: float) -> float:
        nearest = max((t for t in tried if t.statistic <= threshold), key=lambda t: t.lam)
        tried.append(solve(u, nearest))
        return tried[-1].statistic - threshold

    optimize.brentq(excess, inside.lam, outside.lam, xtol=ROOT_TOLERANCE * outside.lam, rtol=1e-12)
    inside = max((t for t in tried if t.statistic <= threshold), key=lambda t: t.lam)
    outside = min((t for t in tried if t.statistic > threshold), key=lambda t: t.lam)
    share = (threshold - inside.statistic) / (outside.statistic - inside.statistic)
    return _Point(inside.lam, inside.g + share * (outside.g - inside.g), threshold, inside.z)


def prediction_interval(runs: Sequence[Observation], config: FitConfig, fit: Fit, flops: float,
                        limits: dict[str, ProfileLimit] | None = None) -> ProfileInterval:
    """Profile-likelihood interval of the loss at C's compute-optimal allocation under `fit`.

    Unlike the Laplace interval it lets a parameter on its bound (E at 0) move off it, and
    it follows the likelihood's shape rather than its curvature at the optimum; on a
    well-determined fit the two agree to first order (tested). Same level as the fit's.

    A parameter on its bound is a log (log E at -20): the likelihood and g are flat in it
    there, so no gradient takes the multiplier's path off the bound. Every minimisation
    therefore also starts from the laws at those parameters' profile limits (`limits`, from
    bound_limits; computed when None), which lie where the parameter is off its bound.
    """
    limits = bound_limits(runs, config, fit) if limits is None else limits
    problem, z_hat = problem_at(runs, config, fit)
    nll_hat = problem.value_and_grad(z_hat)[0]
    scale = _ratio_scale(problem, z_hat, fit.noise_var)
    threshold = fit.quantile * fit.quantile
    g_hat, jac = _optimal_log_loss_jac(fit.law, fit.theta, flops, fit.unique_tokens)
    var_g = float(jac @ fit.cov @ jac)  # Laplace's, as Fit.compute_optimal has it
    sd_g = math.sqrt(var_g) if var_g > 0 else 1.0
    # The augmented term's curvature: the profile's own to first order (stat = (g - g_hat)^2 / var_g,
    # nll = scale stat / 2). At the threshold the multiplier is then (curvature + scale / var_g) q sd_g,
    # twice the plain Lagrangian's, so start an eighth of the way there.
    curvature = scale / (sd_g * sd_g)
    first = 2.0 * fit.quantile * scale / sd_g / 8.0
    off_bound = [np.append(problem.reparam.to_internal(lim.theta), z_hat[problem.n_params:])
                 for lim in limits.values() if lim.theta is not None]
    ends = {}
    for side, sign in (("lo", 1.0), ("hi", -1.0)):
        def solve(lam: float, start: _Point, sign=sign) -> _Point:
            z = min((_multiplier_fit(problem, z0, sign * lam, flops, fit.unique_tokens, g_hat, curvature) for z0 in [start.z, *off_bound]),
                    key=lambda res: res.fun).x
            g = _optimal_log_loss_and_grad(problem, z, flops, fit.unique_tokens)[0]
            return _Point(lam, g, 2.0 * max(problem.value_and_grad(z)[0] - nll_hat, 0.0) / scale, z)

        ends[side] = hull_crossing(solve, first, threshold, _Point(0.0, g_hat, 0.0, z_hat))

    def loss_and_theta(point: _Point | None):
        if point is None:
            return None, None
        return math.exp(point.g), problem.reparam.to_natural(point.z[: problem.n_params])

    (lo, theta_lo), (hi, theta_hi) = loss_and_theta(ends["lo"]), loss_and_theta(ends["hi"])
    return ProfileInterval(flops, lo, hi, theta_lo, theta_hi)
