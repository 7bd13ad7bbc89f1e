"""Maximum-likelihood fit of one scaling law: multi-start L-BFGS, Laplace and bootstrap uncertainty.

The objective is the negative log-likelihood of log-loss residuals under a
noise model from noise.py (Huber or Student-t density with a fitted scale, or
Chinchilla's scale-free Approach 3 objective), with analytic gradients from the
law's Jacobian. Starting points are the law's grid (Hoffmann et al.'s 4500-point
grid for the Chinchilla form) plus variable-projection starts (for fixed
exponents the Chinchilla law is linear in E, A, B, so each exponent pair gets its
best non-negative least-squares levels); all are scored in one vectorised pass
and L-BFGS-B runs from the best few.

Uncertainty: the Laplace approximation N(theta_hat, sigma^2 (J^T J)^-1) in the
centred coordinates, with sigma^2 the M-estimator dispersion (noise.dispersion),
and optionally the bootstrap over runs.

References:
  Hoffmann et al. 2022, sec. 3.3 and app. D.2 (Approach 3, L-BFGS, initialisation grid).
  Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt" (tight intervals need the
    optimiser to converge; bootstrap over runs).
  Golub & Pereyra 1973, variable projection for separable nonlinear least squares.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, special

from active_learning import allocate
from active_learning.noise import MIN_LOG_SCALE, NoiseModel, dispersion, make_noise
from active_learning.scaling_law import Features, Observation, Params, Reparam, ScalingLaw, get_law
from active_learning.threads import one_blas_thread

LOG_SCALED = ("e", "a", "b")  # natural parameters that are logs of positive constants
# A fitted coordinate within this of a box bound (internal units: log E, exponents) is at the bound.
# L-BFGS-B projects onto an active bound exactly; the slack covers a stop just short of it.
AT_BOUND_TOLERANCE = 1e-4
LAPLACE_RCOND = 1e-13  # eigenvalues of J^T J under this fraction of the largest carry no information
NULL_LOADING = 1e-6  # a parameter loads on a dropped direction (a unit vector) above this


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to fit one law.

    Attributes:
      law: 'chinchilla', 'kaplan' or 'data-constrained'.
      loss: 'huber' or 'student-t' (maximum likelihood with a fitted scale), or
        'approach3' (Chinchilla's summed Huber, no scale).
      huber_delta: Huber threshold on log loss (1e-3 in Hoffmann et al. 2022).
      student_t_nu: Student-t degrees of freedom.
      n_starts: number of L-BFGS-B runs, from the best-scoring starting points.
      level: nominal coverage of the reported intervals.
      start_grid: screen the law's full starting grid (else variable-projection starts only,
        where the law has them).
    """

    law: str = "chinchilla"
    loss: str = "huber"
    huber_delta: float = 1e-3
    student_t_nu: float = 4.0
    n_starts: int = 6
    level: float = 0.9
    start_grid: bool = True

    def __post_init__(self) -> None:
        get_law(self.law)
        self.build_noise()
        if self.n_starts < 1:
            raise ValueError(f"n_starts must be >= 1, got {self.n_starts}")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), got {self.level}")

    def build_law(self) -> ScalingLaw:
        return get_law(self.law)

    def build_noise(self) -> NoiseModel:
        return make_noise(self.loss, delta=self.huber_delta, nu=self.student_t_nu)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A scalar with its uncertainty.

    Attributes:
      value: the point estimate.
      sd: standard deviation (delta method on the log scale for positive quantities).
      lo: lower end of the interval.
      hi: upper end of the interval.
    """

    value: float
    sd: float
    lo: float
    hi: float


def log_normal_estimate(log_value: float, log_sd: float, quantile: float) -> Estimate:
    """Estimate of exp(g) from g ~ N(log_value, log_sd^2): interval exp(g -+ q sd)."""
    value = math.exp(log_value)
    return Estimate(value, value * log_sd, math.exp(log_value - quantile * log_sd),
                    math.exp(log_value + quantile * log_sd))


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Compute-optimal training run at a budget.

    Attributes:
      flops: the budget C.
      n: N_opt with its interval.
      d: D_opt with its interval.
      loss: the predicted loss L(N_opt, D_opt) with its interval.
    """

    flops: float
    n: Estimate
    d: Estimate
    loss: Estimate

    @property
    def tokens_per_parameter(self) -> float:
        return self.d.value / self.n.value


@dataclasses.dataclass(frozen=True)
class Fit:
    """A fitted law with its Laplace (and optionally bootstrap) uncertainty.

    Attributes:
      law_name: registered law name.
      theta: natural parameters [p].
      cov: Laplace covariance of theta [p, p].
      log_scale: fitted log scale of the noise density (0 for approach3).
      noise_var: effective noise variance of one log-loss observation.
      n_obs: number of runs fitted.
      objective: the minimised negative log-likelihood.
      level: nominal coverage of intervals.
      bootstrap: natural parameters refitted on resampled runs [K, p], or None.
      unique_tokens: unique-data budget used for allocation (data-constrained law).
      undetermined: the paper's names of the parameters the runs carry no information on (a
        direction the Laplace covariance drops, e.g. A and alpha when every run has one N;
        not those at_bound names): their zero variance means nothing, nor does any
        prediction through them.
    """

    law_name: str
    theta: np.ndarray
    cov: np.ndarray
    log_scale: float
    noise_var: float
    n_obs: int
    objective: float
    level: float = 0.9
    bootstrap: np.ndarray | None = None
    unique_tokens: float | None = None
    undetermined: tuple[str, ...] = ()

    @property
    def law(self) -> ScalingLaw:
        return get_law(self.law_name)

    @property
    def quantile(self) -> float:
        """Two-sided quantile for `level`: Student-t with n - p degrees of freedom."""
        dof = self.n_obs - self.theta.size
        tail = 0.5 + 0.5 * self.level
        return float(special.stdtrit(dof, tail)) if dof > 0 else float(special.ndtri(tail))

    def at_bound(self) -> dict[str, str]:
        """The paper's parameters whose estimate sits on the fit's box bound: name -> 'lower' or 'upper'.

        There the likelihood still improves past the bound, so the Laplace interval, whose
        curvature sees no room to move, holds the parameter fixed: intervals and predictions
        are conditional on it. The bounded coordinates are the law's own (no centring
        shift), so the natural value is compared with the internal bound directly.
        """
        return _at_bound(self.law, self.theta)

    def params(self) -> dict[str, Estimate]:
        """The paper's parameters (E, A, B, alpha, beta, ...) with Laplace intervals."""
        names = list(self.law.describe(self.theta))
        sd = np.sqrt(np.maximum(np.diag(self.cov), 0.0))
        out = {}
        for name, raw, value, s in zip(names, self.law.param_names, self.theta, sd):
            if raw in LOG_SCALED or raw.startswith("log_"):
                out[name] = log_normal_estimate(float(value), float(s), self.quantile)
            else:
                q = self.quantile * s
                out[name] = Estimate(float(value), float(s), float(value - q), float(value + q))
        return out

    def bootstrap_params(self) -> dict[str, tuple[float, float]]:
        """Percentile intervals of the paper's parameters over bootstrap refits."""
        if self.bootstrap is None:
            return {}
        described = [self.law.describe(t) for t in self.bootstrap]
        tail = 50.0 * (1.0 - self.level)
        return {k: (float(np.percentile([d[k] for d in described], tail)),
                    float(np.percentile([d[k] for d in described], 100.0 - tail))) for k in described[0]}

    def predict(self, n, d, unique=None, *, include_noise: bool = False) -> list[Estimate]:
        """Predicted loss at each (N, D) with intervals; include_noise adds one run's seed noise."""
        x = Features.from_arrays(np.atleast_1d(n), np.atleast_1d(d), None if unique is None else np.atleast_1d(unique))
        f, jac = self.law.log_loss_jac(self.theta, x)
        var = np.einsum("ij,jk,ik->i", jac, self.cov, jac) + (self.noise_var if include_noise else 0.0)
        return [log_normal_estimate(float(g), float(math.sqrt(max(v, 0.0))), self.quantile) for g, v in zip(f, var)]

    def compute_optimal(self, flops: float, *, flops_model: allocate.FlopsModel = allocate.FlopsModel(),
                        inference_tokens: float = 0.0) -> Allocation:
        """N_opt, D_opt and the loss there, with delta-method intervals.

        The loss's gradient is the law's Jacobian at the optimum (envelope theorem);
        the allocation's gradient is taken by central differences.
        """
        kw = dict(flops_model=flops_model, inference_tokens=inference_tokens, unique_tokens=self.unique_tokens)
        law = self.law
        log_n, log_d = (float(v) for v in allocate.log_optimal_allocation(law, self.theta, flops, **kw))
        log_u = None if self.unique_tokens is None else math.log(self.unique_tokens)
        g, jac = allocate.elementwise_log_loss_jac(law, self.theta, np.array([log_n]), np.array([log_d]), log_u)
        q = self.quantile
        loss = log_normal_estimate(float(g[0]), math.sqrt(max(float(jac[0] @ self.cov @ jac[0]), 0.0)), q)
        grad_n = np.zeros(self.theta.size)
        grad_d = np.zeros(self.theta.size)
        for j in range(self.theta.size):
            h = 1e-5 * max(1.0, abs(self.theta[j]))
            step = np.zeros(self.theta.size)
            step[j] = h
            up = allocate.log_optimal_allocation(law, self.theta + step, flops, **kw)
            down = allocate.log_optimal_allocation(law, self.theta - step, flops, **kw)
            grad_n[j] = (float(up[0]) - float(down[0])) / (2 * h)
            grad_d[j] = (float(up[1]) - float(down[1])) / (2 * h)
        sd_n = math.sqrt(max(float(grad_n @ self.cov @ grad_n), 0.0))
        sd_d = math.sqrt(max(float(grad_d @ self.cov @ grad_d), 0.0))
        return Allocation(flops, log_normal_estimate(log_n, sd_n, q), log_normal_estimate(log_d, sd_d, q), loss)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draws of theta from the Laplace approximation, [size, p]."""
        return rng.multivariate_normal(self.theta, self.cov, size=size, method="eigh")


# ---------------------------------------------------------------------------- objective


@dataclasses.dataclass(frozen=True)
class _Problem:
    """Everything the objective needs: law, noise, data, and the centring."""

    law: ScalingLaw
    noise: NoiseModel
    x: Features
    log_y: np.ndarray
    reparam: Reparam

    @property
    def n_params(self) -> int:
        return len(self.law.param_names)

    def value_and_grad(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """NLL and its gradient in z = (internal theta, [log scale])."""
        p = self.n_params
        theta = self.reparam.to_natural(z[:p])
        log_s = float(z[p]) if self.noise.has_scale else 0.0
        f, jac = self.law.log_loss_jac(theta, self.x)
        value, dr, dlog_s = self.noise.nll(self.log_y - f, log_s)
        grad = -(self.reparam.jacobian(jac).T @ dr)
        if self.noise.has_scale:
            grad = np.append(grad, dlog_s)
        if not math.isfinite(value):
            return 1e300, np.zeros_like(z)
        return value, grad

    def bounds(self) -> list[tuple[float | None, float | None]]:
        out = list(self.law.bounds())
        return out + [(MIN_LOG_SCALE, 2.0)] if self.noise.has_scale else out


def _huber_scores(problem: _Problem, starts_internal: np.ndarray, delta: float = 1e-3) -> np.ndarray:
    """Approach-3 objective of many starts at once (cheap screening)."""
    f = problem.law.log_loss(problem.reparam.to_natural(starts_internal), problem.x)
    r = np.abs(problem.log_y - f)
    with np.errstate(invalid="ignore"):
        rho = np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).sum(axis=-1)
    return np.where(np.isfinite(rho), rho, np.inf)


def variable_projection_starts(x: Features, log_y: np.ndarray, exponents=np.linspace(0.05, 1.5, 16)) -> np.ndarray:
    """Chinchilla starts (e, a, b, alpha, beta): for each (alpha, beta), NNLS for (E, A, B).

    Relative residuals (divided by L) approximate residuals on log loss.
    """
    y = np.exp(log_y)
    starts = []
    for alpha in exponents:
        for beta in exponents:
            design = np.stack([np.ones_like(y), np.exp(-alpha * x.log_n), np.exp(-beta * x.log_d)], axis=1)
            coef, _ = optimize.nnls(design / y[:, None], np.ones_like(y))
            logs = np.log(np.maximum(coef, 1e-8))
            starts.append([logs[0], logs[1], logs[2], alpha, beta])
    return np.array(starts)


def _clip_to_bounds(z: np.ndarray, bounds) -> np.ndarray:
    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds])
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds])
    return np.clip(z, lo, hi)


def _candidate_starts(problem: _Problem, n_starts: int, use_grid: bool = True) -> np.ndarray:
    """The n_starts best distinct starting points in internal coordinates."""
    grid = problem.law.start_grid()
    starts = grid
    if problem.law.name in ("chinchilla", "data-constrained"):
        vp = variable_projection_starts(problem.x, problem.log_y)
        if problem.law.name == "data-constrained":
            vp = np.concatenate([vp, grid[: len(vp), 5:]], axis=1)
        starts = np.concatenate([grid, vp]) if use_grid else vp
    internal = _clip_to_bounds(problem.reparam.to_internal(starts), problem.law.bounds())
    order = np.argsort(_huber_scores(problem, internal))
    chosen: list[np.ndarray] = []
    for i in order:
        if all(np.max(np.abs(internal[i] - c)) > 1e-6 for c in chosen):
            chosen.append(internal[i])
        if len(chosen) == n_starts:
            break
    return np.array(chosen)


def _minimise(problem: _Problem, theta_internal: np.ndarray) -> optimize.OptimizeResult:
    """L-BFGS-B from one start, with the log scale started from the residuals there."""
    z0 = theta_internal
    if problem.noise.has_scale:
        f = problem.law.log_loss(problem.reparam.to_natural(theta_internal), problem.x)
        z0 = np.append(z0, problem.noise.initial_log_scale(problem.log_y - f))
    return lbfgs(problem.value_and_grad, z0, problem.bounds())


def lbfgs(value_and_grad, z0: np.ndarray, bounds) -> optimize.OptimizeResult:
    """L-BFGS-B from z0 (clipped into the box), run to the tight tolerances every fit here uses.

    Tight, because loose stops leave intervals that reflect the optimiser, not the data
    (Besiroglu et al. 2024).
    """
    return optimize.minimize(value_and_grad, _clip_to_bounds(z0, bounds), jac=True, method="L-BFGS-B",
                             bounds=bounds, options=dict(maxiter=3000, maxcor=20, ftol=1e-15, gtol=1e-11))


def make_problem(x: Features, log_y: np.ndarray, config: FitConfig) -> _Problem:
    """The objective for runs x with observed log losses log_y, centred at the data."""
    law = config.build_law()
    reparam = law.reparam(float(np.mean(x.log_n)), float(np.mean(x.log_d)))
    return _Problem(law, config.build_noise(), x, np.asarray(log_y, dtype=float), reparam)


def laplace(problem: _Problem, z: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Natural-coordinate covariance sigma^2 M (J^T J)^+ M^T, the dispersion sigma^2, and what it leaves out.

    The pseudo-inverse drops the directions J^T J all but lacks (eigenvalues under
    LAPLACE_RCOND of the largest) and gives them zero variance: there the runs carry no
    information, not certainty. Those directions are returned in natural coordinates,
    [p, k] (k = 0 when the runs inform every direction), so callers can say so.
    """
    p = problem.n_params
    theta = problem.reparam.to_natural(z[:p])
    log_s = float(z[p]) if problem.noise.has_scale else 0.0
    f, jac = problem.law.log_loss_jac(theta, problem.x)
    sigma2 = dispersion(problem.noise, problem.log_y - f, log_s, dof=len(f) - p, n_params=p)
    jac_int = problem.reparam.jacobian(jac)
    # One eigendecomposition gives both the pseudo-inverse (as np.linalg.pinv(hermitian=True)
    # builds it) and the directions it drops, so the two cannot disagree on which those are.
    eigval, eigvec = np.linalg.eigh(jac_int.T @ jac_int)
    kept = np.abs(eigval) > LAPLACE_RCOND * np.max(np.abs(eigval))
    cov_int = sigma2 * (eigvec[:, kept] / eigval[kept]) @ eigvec[:, kept].T
    return problem.reparam.covariance(cov_int), sigma2, problem.reparam.matrix @ eigvec[:, ~kept]


def _at_bound(law: ScalingLaw, theta: np.ndarray) -> dict[str, str]:
    out = {}
    for name, value, (lo, hi) in zip(law.describe(theta), theta, law.bounds()):
        if lo is not None and value - lo <= AT_BOUND_TOLERANCE:
            out[name] = "lower"
        elif hi is not None and hi - value <= AT_BOUND_TOLERANCE:
            out[name] = "upper"
    return out


def _undetermined(law: ScalingLaw, theta: np.ndarray, null: np.ndarray) -> tuple[str, ...]:
    """The parameters with a share in a direction the runs do not inform (laplace's dropped directions).

    One on its bound is left out: the curvature cannot see past a bound either, and
    at_bound says more (which way the likelihood would take it).
    """
    bound = _at_bound(law, theta)
    return tuple(name for name, row in zip(law.describe(theta), null)
                 if np.max(np.abs(row), initial=0.0) > NULL_LOADING and name not in bound)


def _solve(problem: _Problem, starts: np.ndarray) -> optimize.OptimizeResult:
    results = [_minimise(problem, s) for s in starts]
    return min(results, key=lambda res: res.fun)


@one_blas_thread
def fit_arrays(x: Features, log_y: np.ndarray, config: FitConfig = FitConfig(), *, bootstrap: int = 0,
               rng: np.random.Generator | None = None, unique_tokens: float | None = None) -> Fit:
    """Fit `config.law` to runs x with observed log losses log_y.

    Args:
      x: covariates of the runs.
      log_y: observed log losses [n].
      config: law, loss and optimiser settings.
      bootstrap: number of bootstrap refits over resampled runs (0: none).
      rng: randomness for the bootstrap; required when bootstrap > 0.
      unique_tokens: unique-data budget for compute-optimal allocation (data-constrained law).

    Raises:
      ValueError: if there are fewer runs than parameters + 1, or bootstrap > 0 without rng.
    """
    problem = make_problem(x, log_y, config)
    p = problem.n_params
    if len(x) < p + 1:
        raise ValueError(f"the {config.law} law has {p} parameters and needs at least {p + 1} runs; got {len(x)}")
    best = _solve(problem, _candidate_starts(problem, config.n_starts, config.start_grid))
    cov, sigma2, null = laplace(problem, best.x)
    boot = None
    if bootstrap > 0:
        if rng is None:
            raise ValueError("bootstrap > 0 needs an explicit rng (np.random.Generator)")
        boot = _bootstrap(problem, best.x[:p], bootstrap, rng)
    theta = problem.reparam.to_natural(best.x[:p])
    log_s = float(best.x[p]) if problem.noise.has_scale else 0.0
    undetermined = _undetermined(problem.law, theta, null)
    return Fit(config.law, theta, cov, log_s, sigma2, len(x), float(best.fun), config.level, boot, unique_tokens,
               undetermined)


def _bootstrap(problem: _Problem, theta_internal: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Refits on runs resampled with replacement, each started at the full-data optimum."""
    n, draws = len(problem.x), []
    for _ in range(k):
        idx = rng.integers(0, n, size=n)
        sub = dataclasses.replace(problem, x=problem.x.take(idx), log_y=problem.log_y[idx])
        draws.append(problem.reparam.to_natural(_minimise(sub, theta_internal).x[: problem.n_params]))
    return np.array(draws)


def fit_law(runs: Sequence[Observation], config: FitConfig = FitConfig(), *, bootstrap: int = 0,
            rng: np.random.Generator | None = None) -> Fit:
    """Fit one law to a list of runs (see fit_arrays). The unique-data budget is the largest U seen."""
    x = Features.from_observations(runs)
    uniques = [r.unique for r in runs if r.unique is not None]
    return fit_arrays(x, np.log([r.loss for r in runs]), config, bootstrap=bootstrap, rng=rng,
                      unique_tokens=max(uniques) if uniques else None)


def true_log_loss(law: ScalingLaw, theta: Params, x: Features) -> np.ndarray:
    """log L of a known law at runs x (for simulations and tests)."""
    return law.log_loss(np.asarray(theta, float), x)
