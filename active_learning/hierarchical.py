"""The hierarchical model behind pooled fits, and its estimation by Laplace approximation.

Model, in the centred internal coordinates of scaling_law.Reparam (one centre for the campaign):

  theta_k = mu + S delta_k            S maps departures to the parameters they move
  delta_kj ~ N(0, tau_j^2)            per-candidate departures; tau is fitted
  log y_i = f(theta_k(i), x_i) + r_i  r_i from a noise density with scale s (noise.py)
  mu ~ weak Gaussian prior;  s^2, tau_j^2 ~ scaled inverse chi-squared hyperpriors

S selects the varying parameters (departures independent at the campaign's centre),
or, with departures="natural", maps departures of the natural parameters into the
internal ones (independent at N = D = 1, where log A and log B are defined: there a
steeper exponent lowers the loss at the campaign's scale too). With departures="learned",
S = S_centred L(g): a varying level's departure at the centre is its own independent
part plus g times its exponent's departure (L = I + g e_level e_exponent^T), so the level
and the exponent are independent at a pivot scale, log N_p = log N0 + g, which the fit
learns (g = 0 is "centred", g = -log N0 "natural"). g follows the EM update of a full
2x2 departure covariance (Gelman et al. 2013, ch. 15), with a weak prior on the pivot
that favours neither frame.

Estimation maximises the Laplace approximation to the marginal likelihood
p(y | mu, s, tau), integrating the departures out: for given mu, delta_hat(mu) is
found by Newton's method (one small block per candidate), and mu takes Newton
steps on Phi(mu, delta_hat(mu)) + 0.5 sum_k log det D_k, where Phi is the
negative log joint density and D_k the Hessian of candidate k's departures.
(Maximising the joint density over mu and delta instead is biased when the
departures are poorly determined.) The Hessian of (mu, delta) is arrow-shaped and
is solved through its Schur complement, so the cost grows linearly with the number
of candidates. tau follows MacKay's type-II maximum-likelihood fixed point and s
the expected log-likelihood under the posterior, each with its hyperprior.

References:
  Gelman et al. 2013, "Bayesian Data Analysis", ch. 5 (hierarchical models).
  Kristensen et al. 2016, "TMB: Automatic differentiation and Laplace approximation" (the
    Laplace marginal likelihood of random-effects models, which this mirrors).
  MacKay 1992, "Bayesian interpolation" (the fixed point for prior scales).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize

from active_learning import accelerate, allocate
from active_learning.fit import FitConfig, fit_arrays
from active_learning.noise import MIN_LOG_SCALE, NoiseModel, StudentT, dispersion, make_noise
from active_learning.scaling_law import (MIN_EXPONENT, MUENNIGHOFF_R_D_STAR, MUENNIGHOFF_R_N_STAR, Features,
                                         Observation, Reparam, ScalingLaw, get_law)

RunsByCandidate = Mapping[str, Sequence[Observation]]
POOLABLE_LAWS = ("chinchilla", "data-constrained")
EXPONENTS = ("alpha", "beta")
DEPARTURE_FRAMES = ("centred", "natural", "learned")
DEFAULT_TAU_PRIOR = {"e": 0.05, "a": 0.3, "b": 0.3, "alpha": 0.05, "beta": 0.05, "log_rd_star": 0.5,
                     "log_rn_star": 0.5}


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
    """How to pool candidates.

    Attributes:
      law: 'chinchilla' or 'data-constrained'.
      loss: noise density of log-loss residuals, 'student-t' or 'huber'.
      huber_delta: Huber threshold on log loss.
      student_t_nu: Student-t degrees of freedom.
      varying: natural parameter names that depart per candidate (the rest are shared).
      departures: where the departures are independent a priori: "centred", at the campaign's
        centre (a candidate's level there and its exponents vary independently), "natural",
        in the natural parameters (log A, log B at N = D = 1 and the exponents vary independently,
        so a steeper exponent also lowers the level at the campaign's scale), or "learned" (the
        default): the correlation of each varying exponent with its varying level (alpha with a,
        beta with b) is fitted, which puts the scale where they are independent wherever the data
        say. With shared exponents (the default varying) the three are the same model.
      tau_prior: prior guess of each departure's sd (hyperprior scale, log or exponent units).
      tau_prior_weight: the hyperprior's weight, in pseudo-candidates.
      noise_prior: (sigma_0, weight): prior guess of the seed noise on log loss and its
        weight in pseudo-runs (1% seed-to-seed noise is typical of small proxies).
      exponent_prior: (mean, sd) of the weak prior on the shared exponents.
      level_prior_sd: sd of the weak prior on the shared log levels (log E, log A, log B at the
        campaign's centre), around simple guesses from the mean observed loss.
      level: nominal coverage of intervals.
      max_iter: iteration cap of the joint Gauss-Newton / EM loop.
      tol: convergence tolerance on parameter steps.
      accelerate: extrapolate the hyperparameters' fixed-point iteration (SQUAREM); False
        iterates plainly, to the same fixed point.
    """

    law: str = "chinchilla"
    loss: str = "student-t"
    huber_delta: float = 1e-3
    student_t_nu: float = 4.0
    varying: tuple[str, ...] = ("a", "b")
    departures: str = "learned"
    tau_prior: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TAU_PRIOR))
    tau_prior_weight: float = 1.0
    noise_prior: tuple[float, float] = (0.01, 2.0)
    exponent_prior: tuple[float, float] = (0.3, 0.3)
    level_prior_sd: float = 3.0
    level: float = 0.9
    max_iter: int = 300
    tol: float = 1e-6
    accelerate: bool = True

    def __post_init__(self) -> None:
        if self.law not in POOLABLE_LAWS:
            raise ValueError(f"pooling supports the laws {POOLABLE_LAWS}, got {self.law!r}")
        if self.loss not in ("student-t", "huber"):
            raise ValueError(f"pooling needs a density with a scale ('student-t' or 'huber'), got {self.loss!r}")
        names = get_law(self.law).param_names
        unknown = [v for v in self.varying if v not in names]
        if unknown or len(set(self.varying)) != len(self.varying):
            raise ValueError(f"varying must be distinct names from {names}, got {self.varying}")
        if self.departures not in DEPARTURE_FRAMES:
            raise ValueError(f"departures must be one of {DEPARTURE_FRAMES}, got {self.departures!r}")
        missing = [v for v in self.varying if not self.tau_prior.get(v, 0) > 0]
        if missing:
            raise ValueError(f"tau_prior needs a positive scale for {missing}")
        if not (self.noise_prior[0] > 0 and self.noise_prior[1] >= 0 and self.tau_prior_weight >= 0):
            raise ValueError("noise_prior needs sigma_0 > 0 and weight >= 0; tau_prior_weight must be >= 0")

    def build_law(self) -> ScalingLaw:
        return get_law(self.law)

    def build_noise(self) -> NoiseModel:
        return make_noise(self.loss, delta=self.huber_delta, nu=self.student_t_nu)

    def departure_map(self, reparam: Reparam) -> np.ndarray:
        """S [p, m]: how each departure moves the internal parameters ("learned" starts centred)."""
        names = self.build_law().param_names
        select = np.zeros((len(names), len(self.varying)))
        select[[names.index(v) for v in self.varying], np.arange(len(self.varying))] = 1.0
        if self.departures != "natural":
            return select
        return np.linalg.solve(reparam.matrix, select)  # natural departures M S_nat z, back to internal

    def coupled_pairs(self, reparam: Reparam) -> tuple[tuple[int, int, float], ...]:
        """(level, exponent, g_natural) for each varying exponent whose level varies too, with "learned".

        Indices are among the departures; g_natural is the coupling of the natural frame (-log N0
        for alpha with a), so the pivot's log scale is g - g_natural.
        """
        if self.departures != "learned":
            return ()
        names = self.build_law().param_names
        natural = np.linalg.solve(reparam.matrix, np.eye(len(names)))
        pairs = []
        for x, exponent in enumerate(self.varying):
            for level, name in enumerate(self.varying):
                g = natural[names.index(name), names.index(exponent)]
                if level != x and g != 0.0:
                    pairs.append((level, x, float(g)))
        return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class _Data:
    """Runs sorted by candidate."""

    candidates: tuple[str, ...]
    index: np.ndarray  # candidate of each run [n]
    starts: np.ndarray  # first run of each candidate [K]
    x: Features
    log_y: np.ndarray
    flops_models: tuple[allocate.FlopsModel, ...]
    unique_tokens: float | None

    @classmethod
    def build(cls, runs_by_candidate: RunsByCandidate) -> _Data:
        if not runs_by_candidate:
            raise ValueError("fit_pooled needs at least one candidate")
        names = tuple(str(c) for c in runs_by_candidate)
        empty = [c for c, runs in runs_by_candidate.items() if len(runs) == 0]
        if empty:
            raise ValueError(f"candidates without runs: {empty}; drop them or give each at least one run")
        runs = [r for c in runs_by_candidate for r in runs_by_candidate[c]]
        counts = [len(runs_by_candidate[c]) for c in runs_by_candidate]
        index = np.repeat(np.arange(len(names)), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
        uniques = [r.unique for r in runs if r.unique is not None]
        models = tuple(allocate.FlopsModel.from_observations(runs_by_candidate[c]) for c in runs_by_candidate)
        return cls(names, index, starts, Features.from_observations(runs), np.log([r.loss for r in runs]),
                   models, max(uniques) if uniques else None)

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.index, minlength=len(self.candidates))


@dataclasses.dataclass(frozen=True)
class _Prior:
    """Gaussian prior on mu (internal coordinates) and the hyperpriors."""

    mean: np.ndarray
    precision: np.ndarray  # diagonal [p]
    tau0: np.ndarray  # [m]
    tau_weight: float
    sigma0: float
    sigma_weight: float

    @classmethod
    def build(cls, config: PoolingConfig, law: ScalingLaw, mean_log_loss: float) -> _Prior:
        guesses = {"e": (mean_log_loss - math.log(2.0), config.level_prior_sd),
                   "a": (mean_log_loss - math.log(4.0), config.level_prior_sd),
                   "b": (mean_log_loss - math.log(4.0), config.level_prior_sd),
                   "alpha": config.exponent_prior, "beta": config.exponent_prior,
                   "log_rd_star": (math.log(MUENNIGHOFF_R_D_STAR), 1.0),
                   "log_rn_star": (math.log(MUENNIGHOFF_R_N_STAR), 1.0)}
        mean, sd = np.array([guesses[name] for name in law.param_names]).T
        tau0 = np.array([config.tau_prior[v] for v in config.varying])
        return cls(mean, 1.0 / sd**2, tau0, config.tau_prior_weight, *config.noise_prior)


@dataclasses.dataclass
class _State:
    """Mutable iterate of the MAP / EM loop (internal coordinates)."""

    mu: np.ndarray  # [p]
    delta: np.ndarray  # [K, m]
    log_s: float
    tau: np.ndarray  # [m]
    noise_var: float  # effective noise variance for the Laplace posterior


# ---------------------------------------------------------------------------- arrow-shaped linear algebra


@dataclasses.dataclass(frozen=True)
class _Arrow:
    """Symmetric matrix [[G, C_1 .. C_K], [C_k^T, D_k]] with G [p,p], C [K,p,m], D [K,m,m]."""

    g: np.ndarray
    c: np.ndarray
    d: np.ndarray

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Schur complement inverse S^-1 [p,p], B_k = D_k^-1 C_k^T [K,m,p], D_k^-1 [K,m,m])."""
        d_inv = np.linalg.inv(self.d)
        b = d_inv @ np.swapaxes(self.c, 1, 2)
        schur = self.g - np.einsum("kpm,kmq->pq", self.c, b)
        return _pd_inverse(schur), b, d_inv

    def solve(self, rhs_g: np.ndarray, rhs_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s_inv, b, d_inv = self.parts()
        x_g = s_inv @ (rhs_g - np.einsum("kpm,km->p", self.c, np.einsum("kmn,kn->km", d_inv, rhs_k)))
        x_k = np.einsum("kmn,kn->km", d_inv, rhs_k) - np.einsum("kmp,p->km", b, x_g)
        return x_g, x_k


def _pd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive (semi)definite matrix, robust to near-singularity."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 1e-12 * max(float(w.max()), 1e-300))
    return (v / w) @ v.T


def _blocks(jac: np.ndarray, weight: np.ndarray, data: _Data, departure_map: np.ndarray) -> _Arrow:
    """J^T W J of the (mu, delta) parametrisation, without priors (departure_map: S [p, m])."""
    outer = jac[:, :, None] * jac[:, None, :] * weight[:, None, None]  # [n, p, p]
    per_candidate = np.add.reduceat(outer, data.starts, axis=0)  # [K, p, p]
    return _Arrow(outer.sum(axis=0), per_candidate @ departure_map,
                  departure_map.T @ per_candidate @ departure_map)


def _with_prior(arrow: _Arrow, prior: _Prior, tau: np.ndarray) -> _Arrow:
    d = arrow.d + np.diag(1.0 / tau**2)[None]
    return _Arrow(arrow.g + np.diag(prior.precision), arrow.c, d)


# ---------------------------------------------------------------------------- objective


@dataclasses.dataclass(frozen=True)
class _Model:
    """The pieces that stay fixed during one pooled fit."""

    law: ScalingLaw
    noise: NoiseModel
    reparam: Reparam
    data: _Data
    prior: _Prior
    departure_map: np.ndarray  # S [p, m]
    exponents: np.ndarray  # indices of the exponents among the parameters
    pairs: tuple[tuple[int, int, float], ...] = ()  # learned (level, exponent, g_natural) couplings
    coupling: tuple[float, ...] = ()  # g of each pair; departure_map = S_centred L(g)

    def with_coupling(self, coupling: Sequence[float]) -> _Model:
        """The model with S = S_centred L(g), L = I + sum_i g_i e_level e_exponent^T.

        L adds g times the level's column to the exponent's; the level's column is a unit
        vector, so taking the old g out and putting the new one in is exact.
        """
        s = self.departure_map.copy()
        for (level, x, _), old, new in zip(self.pairs, self.coupling, coupling):
            s[:, x] -= old * s[:, level]
            s[:, x] += new * s[:, level]
        return dataclasses.replace(self, departure_map=s, coupling=tuple(float(g) for g in coupling))

    def thetas(self, state: _State) -> np.ndarray:
        """Internal parameters of each candidate [K, p], exponents kept positive."""
        theta = np.repeat(state.mu[None], len(self.data.candidates), axis=0)
        theta += state.delta @ self.departure_map.T
        theta[:, self.exponents] = np.maximum(theta[:, self.exponents], MIN_EXPONENT)
        return theta

    def residuals(self, state: _State) -> tuple[np.ndarray, np.ndarray]:
        """Residuals [n] and Jacobian of f in internal coordinates [n, p]."""
        rows = self.reparam.to_natural(self.thetas(state))[self.data.index]
        f, jac = self.law.log_loss_jac(rows, self.data.x)
        return self.data.log_y - f, self.reparam.jacobian(jac)

    def log_scale_penalty(self, log_s: float) -> float:
        """-log of the scaled-inverse-chi^2(nu, sigma0^2) prior on s^2, up to a constant."""
        nu = self.prior.sigma_weight
        return (nu + 2.0) * log_s + 0.5 * nu * self.prior.sigma0**2 * math.exp(-2.0 * log_s)

    def objective(self, state: _State, r: np.ndarray | None = None) -> float:
        if r is None:
            r, _ = self.residuals(state)
        value, _, _ = self.noise.nll(r, state.log_s)
        dmu = state.mu - self.prior.mean
        return (value + 0.5 * float(np.sum(state.delta**2 / state.tau**2))
                + 0.5 * float(dmu @ (self.prior.precision * dmu)) + self.log_scale_penalty(state.log_s))

    def gradient(self, state: _State, r: np.ndarray, jac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, psi, _ = self.noise.nll(r, state.log_s)
        per_run = -psi[:, None] * jac
        g_mu = per_run.sum(axis=0) + self.prior.precision * (state.mu - self.prior.mean)
        g_delta = np.add.reduceat(per_run, self.data.starts, axis=0) @ self.departure_map + state.delta / state.tau**2
        return g_mu, g_delta

    def fit_log_scale(self, r: np.ndarray, fitted_var: np.ndarray | float = 0.0) -> float:
        """The noise scale maximising the expected log-likelihood under the posterior.

        Residuals are inflated by the posterior variance of the fitted values,
        sqrt(r^2 + v): without it, candidates whose departures soak up their few
        runs leave near-zero residuals and the scale collapses (the MAP of a
        variance ignores the degrees of freedom the random effects use).
        """
        r_eff = np.sqrt(r * r + fitted_var)
        res = optimize.minimize_scalar(lambda ls: self.noise.nll(r_eff, ls)[0] + self.log_scale_penalty(ls),
                                       bounds=(MIN_LOG_SCALE, 1.0), method="bounded",
                                       options=dict(xatol=1e-7))
        return float(res.x)


def _newton_weight(noise: NoiseModel, r: np.ndarray, log_s: float) -> np.ndarray:
    """Per-residual curvature for Gauss-Newton: psi' where it is smooth and positive, else IRLS.

    IRLS weights psi/r make a majoriser, which converges only linearly; the
    curvature psi' (floored at a tenth of its peak, where outliers make it
    negative) gives near-Newton steps, and the line search keeps them safe.
    """
    if isinstance(noise, StudentT):
        peak = (noise.nu + 1) / (noise.nu * math.exp(2.0 * log_s))
        return np.maximum(noise.psi_prime(r, log_s), 0.1 * peak)
    return noise.irls_weight(r, log_s)


def _departure_blocks(jac: np.ndarray, weight: np.ndarray, model: _Model, tau: np.ndarray) -> np.ndarray:
    """Each candidate's departure Hessian D_k = sum_i w_i j_i j_i^T + diag(1/tau^2) [K, m, m]."""
    j = jac @ model.departure_map
    blocks = np.add.reduceat(j[:, :, None] * j[:, None, :] * weight[:, None, None], model.data.starts, axis=0)
    return blocks + np.diag(1.0 / tau**2)[None]


def _solve_departures(model: _Model, state: _State, max_steps: int = 20, tol: float = 1e-8) -> None:
    """delta_hat(mu): damped Newton on the departures with mu, s and tau fixed (one block per candidate)."""
    if state.delta.shape[1] == 0:
        return
    for _ in range(max_steps):
        r, jac = model.residuals(state)
        _, g_delta = model.gradient(state, r, jac)
        d = _departure_blocks(jac, _newton_weight(model.noise, r, state.log_s), model, state.tau)
        step = np.linalg.solve(d, g_delta[..., None])[..., 0]
        phi0, slope, t = model.objective(state, r), float(np.sum(g_delta * step)), 1.0
        while t > 1e-8:
            trial = dataclasses.replace(state, delta=state.delta - t * step)
            if model.objective(trial) <= phi0 - 1e-4 * t * slope:
                state.delta = trial.delta
                break
            t *= 0.5
        if t * float(np.max(np.abs(step))) < tol or t <= 1e-8:
            return


def _half_log_det(model: _Model, theta: np.ndarray, state: _State) -> np.ndarray:
    """0.5 log det of each candidate's departure precision J_k^T J_k / sigma^2 + diag(1/tau^2) [K]."""
    rows = model.reparam.to_natural(theta)[model.data.index]
    _, jac = model.law.log_loss_jac(rows, model.data.x)
    d = _departure_blocks(model.reparam.jacobian(jac), np.full(len(rows), 1.0 / state.noise_var), model, state.tau)
    return 0.5 * np.linalg.slogdet(d)[1]


def _occam(model: _Model, state: _State, step: float = 1e-6) -> tuple[float, np.ndarray]:
    """The Laplace term 0.5 sum_k log det D_k and its gradient in each theta_k [K, p] (forward differences).

    It depends on candidate k's parameters only, so one perturbation per coordinate,
    applied to all candidates at once, gives every candidate's gradient.
    """
    theta = model.thetas(state)
    base = _half_log_det(model, theta, state)
    grads = np.empty_like(theta)
    for j in range(theta.shape[1]):
        moved = theta.copy()
        moved[:, j] += step
        grads[:, j] = (_half_log_det(model, moved, state) - base) / step
    return float(base.sum()), grads


def _marginal(model: _Model, state: _State) -> float:
    """Laplace approximation to -log p(y | mu, s, tau) (up to constants), at the current delta_hat."""
    if state.delta.shape[1] == 0:
        return model.objective(state)
    return model.objective(state) + float(_half_log_det(model, model.thetas(state), state).sum())


def _marginal_step(model: _Model, state: _State) -> float:
    """One Newton step on mu for the Laplace marginal likelihood, delta_hat re-solved along the way.

    Maximising the joint density over (mu, delta) instead is biased when departures are
    poorly determined: it favours shared laws under which the departures explain the data
    cheaply, ignoring the volume (Occam) term 0.5 log det D_k. The gradient here is
    d/dmu [Phi(mu, delta_hat(mu)) + 0.5 sum_k log det D_k], with d delta_hat / d mu = -D_k^-1 C_k^T;
    the curvature is the Schur complement (Gauss-Newton).

    Returns:
      the largest change of a parameter.
    """
    r, jac = model.residuals(state)
    g_mu, _ = model.gradient(state, r, jac)
    hess = _with_prior(_blocks(jac, _newton_weight(model.noise, r, state.log_s), model.data, model.departure_map),
                       model.prior, state.tau)
    s_inv, b, _ = hess.parts()
    if state.delta.shape[1]:
        occam, u = _occam(model, state)
        g_mu = g_mu + u.sum(axis=0) - np.einsum("kmp,km->p", b, u @ model.departure_map)
    else:
        occam = 0.0
    d_mu = s_inv @ g_mu
    m0, slope, t = model.objective(state, r) + occam, float(g_mu @ d_mu), 1.0
    d_delta = np.einsum("kmp,p->km", b, d_mu)
    while t > 1e-8:
        trial = dataclasses.replace(state, mu=state.mu - t * d_mu, delta=state.delta + t * d_delta)
        _solve_departures(model, trial, max_steps=5)
        if _marginal(model, trial) <= m0 - 1e-4 * t * slope:
            change = float(np.max(np.abs(np.concatenate([trial.mu - state.mu, (trial.delta - state.delta).ravel()]))))
            state.mu, state.delta = trial.mu, trial.delta
            return change
        t *= 0.5
    return 0.0


@dataclasses.dataclass(frozen=True)
class _Posterior:
    """Laplace posterior pieces (internal coordinates)."""

    shared_cov: np.ndarray  # S^-1 [p, p]
    mixing: np.ndarray  # R_k = I - S B_k [K, p, p]
    own_cov: np.ndarray  # S D_k^-1 S^T [K, p, p]
    delta_var: np.ndarray  # V [K, m], the diagonal of delta_cov
    delta_cov: np.ndarray  # posterior covariance of each candidate's departures [K, m, m]
    noise_var: float  # the sigma^2 these pieces were computed with
    dof: float
    next_noise_var: float  # sigma^2 re-estimated from the residuals

    def fitted_var(self, jac: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Posterior variance of each run's fitted log loss [n], from its Jacobian [n, p]."""
        cov = self.mixing @ self.shared_cov @ np.swapaxes(self.mixing, 1, 2) + self.own_cov  # [K, p, p]
        return np.einsum("na,nab,nb->n", jac, cov[index], jac)


def _posterior(model: _Model, state: _State, sigma2: float, passes: int = 1) -> _Posterior:
    """Laplace approximation with the M-estimator dispersion as the noise variance.

    The dispersion's degrees of freedom, n minus the effective number of parameters
    (shared ones plus the shrunken departures), depend on sigma^2 in turn; each pass
    re-estimates sigma^2 from the previous one. The fitting loop carries sigma^2 from
    one iteration to the next, so one pass per iteration suffices there.
    """
    r, jac = model.residuals(state)
    n, p = len(r), len(state.mu)
    base = _blocks(jac, np.ones(n), model.data, model.departure_map)
    nu0, sigma0 = model.prior.sigma_weight, model.prior.sigma0
    for _ in range(passes):
        arrow = _with_prior(_Arrow(base.g / sigma2, base.c / sigma2, base.d / sigma2), model.prior, state.tau)
        s_inv, b, d_inv = arrow.parts()
        delta_cov = np.einsum("kmp,pq,knq->kmn", b, s_inv, b) + d_inv
        delta_var = np.diagonal(delta_cov, axis1=1, axis2=2)
        dof = max(n - p - float(np.sum(1.0 - delta_var / state.tau**2)), 0.0)
        est = dispersion(model.noise, r, state.log_s, dof=max(dof, 1.0)) if dof > 0 else 0.0
        used = sigma2
        sigma2 = (dof * est + nu0 * sigma0**2) / max(dof + nu0, 1e-12)
    mixing = np.eye(p)[None] - model.departure_map[None] @ b
    own = model.departure_map[None] @ d_inv @ model.departure_map.T[None]
    return _Posterior(s_inv, mixing, own, delta_var.copy(), delta_cov, used, dof, sigma2)


def _update_tau(model: _Model, state: _State, post: _Posterior) -> np.ndarray:
    """Type-II maximum-likelihood step for tau (MacKay's fixed point, with the hyperprior).

    At the Laplace marginal likelihood's stationary point, tau_j^2 = sum_k delta_kj^2 / gamma_j,
    where gamma_j = sum_k (1 - V_kj / tau_j^2) counts the departures the data determine.
    This is the EM fixed point rearranged; it converges in far fewer iterations when
    the departures are poorly determined (MacKay 1992, "Bayesian interpolation").
    """
    w = model.prior.tau_weight
    gamma = np.sum(np.clip(1.0 - post.delta_var / state.tau**2, 0.0, 1.0), axis=0)
    ss = np.sum(state.delta**2, axis=0) + w * model.prior.tau0**2
    return np.sqrt(ss / np.maximum(gamma + w, 1e-12))


def _update_coupling(model: _Model, state: _State, post: _Posterior) -> tuple[_Model, float]:
    """EM step for each learned coupling g (departures="learned"); re-expresses the departures.

    In the centred frame a pair's departures are delta_l = u_l + g u_x, delta_x = u_x with u
    independent: a full 2x2 covariance. Its M-step for g is the regression of delta_l on
    delta_x under g's prior N(g0, s0^2):

      g = (sum_k E[delta_l delta_x] / tau_l^2 + g0 / s0^2) / (sum_k E[delta_x^2] / tau_l^2 + 1 / s0^2),

    and in the u coordinates the fit works in, E[delta_l delta_x] = E[u_l u_x] + g E[u_x^2].
    The candidates' laws do not move: u_l is re-expressed for the new g.

    Returns:
      the new model, and the largest change in a coupling times tau_x / tau_l (the change in
      the level's departure per sd of its exponent's, in sds of the level's own).
    """
    coupling, change = list(model.coupling), 0.0
    for i, (level, x, g_natural) in enumerate(model.pairs):
        m_lx = float(np.sum(state.delta[:, level] * state.delta[:, x] + post.delta_cov[:, level, x]))
        m_xx = float(np.sum(state.delta[:, x] ** 2 + post.delta_cov[:, x, x]))
        g0, s0 = _coupling_prior(g_natural)
        t2 = state.tau[level] ** 2
        g = ((m_lx + coupling[i] * m_xx) / t2 + g0 / s0**2) / (m_xx / t2 + 1.0 / s0**2)
        change = max(change, abs(g - coupling[i]) * state.tau[x] / state.tau[level])
        coupling[i] = g
    return _recouple(model, state, coupling), change


def _recouple(model: _Model, state: _State, coupling: Sequence[float]) -> _Model:
    """The model with new couplings, and the departures re-expressed so the candidates' laws do not move.

    The centred departure delta_l = u_l + g u_x stays put: u_l absorbs (g_old - g_new) u_x.
    """
    for (level, x, _), old, new in zip(model.pairs, model.coupling, coupling):
        state.delta[:, level] += (old - new) * state.delta[:, x]
    return model.with_coupling(coupling)


def _coupling_prior(g_natural: float) -> tuple[float, float]:
    """(mean, sd) of a coupling's weak prior: the pivot halfway between N = 1 and the centre, sd log N0.

    Neither frame is favoured, and a campaign with two or three candidates cannot put the
    pivot at an absurd scale.
    """
    return 0.5 * g_natural, abs(g_natural)


def _t_inflate(model: _Model, state: _State, post: _Posterior) -> _Posterior:
    """The Laplace covariance at the posterior mean of the noise variance rather than its estimate.

    sigma^2 is known to nu = dof + nu_0 degrees of freedom (the dispersion's plus the
    hyperprior's pseudo-runs); under its scaled-inverse-chi^2 posterior, E[sigma^2] is
    nu / (nu - 2) times the estimate, and the predictions' variance averaged over sigma^2
    is the covariance computed with E[sigma^2] (their marginal is Student-t with nu degrees
    of freedom). Directions the data determine widen by that factor, prior-dominated ones
    stay as they were. A campaign with a few runs per candidate has nu around 10, a
    10-12% wider sd; a large one is unchanged. The reported noise variance stays the estimate.
    """
    nu = post.dof + model.prior.sigma_weight
    factor = nu / (nu - 2.0) if nu > 4.0 else 2.0
    wide = _posterior(model, state, post.noise_var * factor)
    return dataclasses.replace(post, shared_cov=wide.shared_cov, mixing=wide.mixing, own_cov=wide.own_cov)


def _hyper_sensitivity(model: _Model, state: _State, post: _Posterior, step: float = 1e-4) -> np.ndarray:
    """How the fitted parameters move with the hyperparameters, scaled by their uncertainty [h, K, p].

    The fit conditions on the type-II ML estimates of log tau_j and log s; with a few
    candidates holding one to three runs each, those are uncertain, and conditioning
    on them makes the Laplace posterior overconfident. The first-order correction of
    Kass and Steffey (1989) adds sum_h (d theta_hat / d lambda_h) Var(lambda_h)
    (d theta_hat / d lambda_h)^T to the covariance. Row h here is d theta_hat_k / d lambda_h
    times sd(lambda_h), in internal coordinates, for each candidate k:

      d (mu, delta)_hat / d lambda = -H^-1 d grad / d lambda  (implicit function theorem),

    with H the Hessian of the joint objective at the fit. Var(log tau_j) is the inverse
    Fisher information of the departures' scale, 1 / (2 sum_k shrink_kj^2 + 2 w), where
    shrink_kj = 1 - V_kj / tau_j^2 and w the hyperprior's weight; Var(log s) likewise is
    1 / (2 (dof + nu_0)). Learned couplings g (departures="learned") add a row each.
    """
    r, jac = model.residuals(state)
    k, m = state.delta.shape
    p = len(state.mu)
    hess = _with_prior(_blocks(jac, _newton_weight(model.noise, r, state.log_s), model.data, model.departure_map),
                       model.prior, state.tau)
    rhs: list[tuple[np.ndarray, np.ndarray, float]] = []
    shrink = np.clip(1.0 - post.delta_var / state.tau**2, 0.0, 1.0)
    for j in range(m):
        var = 1.0 / (2.0 * float(np.sum(shrink[:, j] ** 2)) + 2.0 * model.prior.tau_weight + 1e-12)
        rhs_k = np.zeros((k, m))
        rhs_k[:, j] = 2.0 * state.delta[:, j] / state.tau[j] ** 2  # -d grad_delta / d log tau_j
        rhs.append((np.zeros(p), rhs_k, var))
    for level, x, g_natural in model.pairs:
        # Learned couplings g: -d grad_u / dg at fixed centred departures delta (so at fixed laws);
        # Var(g) is the regression's of delta_l on delta_x with g's prior: 1 / (sum_k delta_x^2 / tau_l^2 + 1 / s0^2).
        t2 = state.tau[level] ** 2
        rhs_k = np.zeros((k, m))
        rhs_k[:, x], rhs_k[:, level] = state.delta[:, level] / t2, state.delta[:, x] / t2
        info = float(np.sum(state.delta[:, x] ** 2)) / t2 + 1.0 / _coupling_prior(g_natural)[1] ** 2
        rhs.append((np.zeros(p), rhs_k, 1.0 / info))
    g_mu0, g_d0 = model.gradient(state, r, jac)
    g_mu1, g_d1 = model.gradient(dataclasses.replace(state, log_s=state.log_s + step), r, jac)
    var_s = 1.0 / (2.0 * (post.dof + model.prior.sigma_weight) + 1e-12)
    rhs.append((-(g_mu1 - g_mu0) / step, -(g_d1 - g_d0) / step, var_s))
    out = np.zeros((len(rhs), k, p))
    for h, (rhs_g, rhs_k, var) in enumerate(rhs):
        d_mu, d_delta = hess.solve(rhs_g, rhs_k)
        out[h] = d_mu[None]
        out[h] += d_delta @ model.departure_map.T
        out[h] *= math.sqrt(var)
    return out


def _initial_mu(model: _Model, config: PoolingConfig) -> list[np.ndarray]:
    """Prior mean, and where there are enough runs, a single law fitted to all runs at once."""
    inits = [model.prior.mean.copy()]
    if len(model.data.log_y) >= len(model.law.param_names) + 1:
        fit_config = FitConfig(law=config.law, loss=config.loss, huber_delta=config.huber_delta,
                               student_t_nu=config.student_t_nu, n_starts=3, start_grid=False)
        try:
            single = fit_arrays(model.data.x, model.data.log_y, fit_config)
            inits.append(model.reparam.to_internal(single.theta))
        except (ValueError, np.linalg.LinAlgError):
            pass
    return inits


def _iterate(model: _Model, state: _State) -> tuple[_Model, float, float]:
    """One iteration: a marginal-likelihood step on mu, then updates of s, tau (and learned couplings).

    Returns:
      the model with its new couplings, the largest change of a parameter, and of a hyperparameter.
    """
    change = _marginal_step(model, state)
    post = _posterior(model, state, state.noise_var)
    r, jac = model.residuals(state)
    log_s = model.fit_log_scale(r, post.fitted_var(jac, model.data.index))
    tau = _update_tau(model, state, post) if state.delta.shape[1] else state.tau
    # Hyperparameters need far less precision than the parameters they regularise.
    hyper = max(abs(log_s - state.log_s), float(np.max(np.abs(np.log(tau / state.tau)), initial=0.0)),
                abs(math.log(post.next_noise_var / state.noise_var)))
    if model.pairs:
        model, moved = _update_coupling(model, state, post)
        hyper = max(hyper, moved)
    state.log_s, state.tau, state.noise_var = log_s, tau, post.next_noise_var
    _solve_departures(model, state, max_steps=5)
    return model, change, hyper


def _hypers(model: _Model, state: _State) -> np.ndarray:
    """The hyperparameters as one vector for extrapolation: log tau, g_i tau_x / tau_l, log s, log sigma^2.

    A coupling is scaled as the convergence test measures it: the level's departure it
    implies per sd of the exponent's, in sds of the level's own.
    """
    return np.concatenate([np.log(state.tau), np.asarray(model.coupling) * _coupling_scale(model, state.tau),
                           [state.log_s, math.log(state.noise_var)]])


def _coupling_scale(model: _Model, tau: np.ndarray) -> np.ndarray:
    return np.array([tau[x] / tau[level] for level, x, _ in model.pairs])


def _set_hypers(model: _Model, state: _State, h: np.ndarray) -> _Model:
    """Put an extrapolated hyperparameter vector (_hypers' layout) into the state; re-solve the departures."""
    m, n_pairs = len(state.tau), len(model.pairs)
    tau = np.exp(h[:m])
    model = _recouple(model, state, h[m:m + n_pairs] / _coupling_scale(model, tau))
    state.tau = tau
    state.log_s = float(np.clip(h[-2], MIN_LOG_SCALE, 1.0))
    state.noise_var = math.exp(h[-1])
    _solve_departures(model, state, max_steps=5)
    return model


def _copy(state: _State) -> _State:
    return dataclasses.replace(state, mu=state.mu.copy(), delta=state.delta.copy(), tau=state.tau.copy())


# Extrapolate from iterates this many iterations apart: the hyperparameters' path jitters from
# one iteration to the next (mu follows them with a Newton step each), and over two iterations
# the slow drift shows above the jitter (on 16 bench fits, spans 1, 2 and 3 took 37%, 39% and
# 42% fewer iterations than no extrapolation; on 20 others span 2 was the fastest of 2, 3 and 4).
SQUAREM_SPAN = 2
# The step cap grows fourfold each time it binds, up to this: the step of a mode that keeps
# 98.5% of its error per iteration (the steps of traced bench fits stayed below 9).
MAX_SQUAREM_STEP = 64.0


def _run(model: _Model, mu0: np.ndarray, config: PoolingConfig) -> tuple[_State, _Model, int]:
    """Iterate until the parameters and hyperparameters all settle, SQUAREM-accelerated (accelerate.py).

    The hyperparameters' fixed point converges linearly, slowly when few candidates inform
    them (learned couplings took 20 to 100 iterations). Every 2 * SQUAREM_SPAN plain iterations,
    the hyperparameters are extrapolated along the path they took; mu and the departures
    follow within an iteration or two, their Newton steps converging fast. An extrapolation
    that leaves the hyperparameters moving more than before it (or that the next iteration
    cannot start from) is undone and the step cap shrinks: a failed jump costs one iteration,
    and the iterates kept are the plain iteration's.

    Returns:
      the state, the model with the couplings it settled on, and the iterations taken.
    """
    k, m = len(model.data.candidates), model.departure_map.shape[1]
    state = _State(mu0.copy(), np.zeros((k, m)), math.log(model.prior.sigma0), model.prior.tau0.copy(),
                   model.prior.sigma0**2)
    _solve_departures(model, state)
    trail, max_step, jump, hyper = [_hypers(model, state)], 1.0, None, math.inf
    for it in range(config.max_iter):
        if jump is None:
            model, change, hyper = _iterate(model, state)
        else:
            saved, before = (model, _copy(state)), hyper
            try:
                model = _set_hypers(model, state, jump)
                trail = [_hypers(model, state)]
                model, change, hyper = _iterate(model, state)
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                change = hyper = math.inf  # a jump too far to iterate from
            jump = None
            if not hyper <= before:  # worse than before it: back to the plain iterate it started from
                (model, state), hyper, max_step = saved, before, max(1.0, max_step / 4.0)
                trail = [_hypers(model, state)]
                continue
        if change < config.tol and hyper < 100 * config.tol:
            return state, model, it + 1
        if not config.accelerate:
            continue
        trail.append(_hypers(model, state))
        if len(trail) == 2 * SQUAREM_SPAN + 1:
            h, step = accelerate.squarem_step(trail[0], trail[SQUAREM_SPAN], trail[-1], max_step)
            jump = h if step > 1.0 else None  # applied at the next iteration, which starts a new trail
            max_step = min(max_step * 4.0, MAX_SQUAREM_STEP) if step >= max_step else max_step
            trail = trail[-1:]
    return state, model, config.max_iter


@dataclasses.dataclass(frozen=True)
class Estimated:
    """What fit_pooled needs from an estimation.

    Attributes:
      candidates: candidate ids.
      reparam: internal <-> natural coordinates.
      theta: internal parameters per candidate [K, p].
      mu: internal campaign-level parameters [p].
      tau: fitted prior sd of each varying parameter's departures [m].
      log_scale: fitted log scale of the noise density.
      posterior: the Laplace posterior.
      flops_models: FLOPs per token per candidate.
      n_runs: runs per candidate.
      unique_tokens: unique-data budget, or None.
      iterations: iterations of the chosen start.
      hyper: sensitivity of theta to the hyperparameters times their sd [h, K, p] (_hyper_sensitivity).
      log_pivots: with departures="learned", for each coupled exponent the log N (alpha) or log D (beta)
        at which its departures and its level's are independent a priori (0 is "natural").
    """

    candidates: tuple[str, ...]
    reparam: Reparam
    theta: np.ndarray
    mu: np.ndarray
    tau: np.ndarray
    log_scale: float
    posterior: _Posterior
    flops_models: tuple[allocate.FlopsModel, ...]
    n_runs: tuple[int, ...]
    unique_tokens: float | None
    iterations: int
    hyper: np.ndarray | None = None
    log_pivots: Mapping[str, float] = dataclasses.field(default_factory=dict)


def estimate(runs_by_candidate: RunsByCandidate, config: PoolingConfig) -> Estimated:
    """Maximise the Laplace marginal likelihood from each start; keep the best."""
    data = _Data.build(runs_by_candidate)
    law = config.build_law()
    reparam = law.reparam(float(np.mean(data.x.log_n)), float(np.mean(data.x.log_d)))
    prior = _Prior.build(config, law, float(np.mean(data.log_y)))
    exponents = np.array([j for j, name in enumerate(law.param_names) if name in EXPONENTS], dtype=int)
    pairs = config.coupled_pairs(reparam)
    start = _Model(law, config.build_noise(), reparam, data, prior, config.departure_map(reparam), exponents,
                   pairs, (0.0,) * len(pairs))
    best, model, best_value, iters = None, start, math.inf, 0
    for mu0 in _initial_mu(start, config):
        state, fitted, it = _run(start, mu0, config)
        value = _marginal(fitted, state)
        if value < best_value:
            best, model, best_value, iters = state, fitted, value, it
    post = _posterior(model, best, best.noise_var, passes=3)
    hyper = _hyper_sensitivity(model, best, post)
    pivots = tuple(g - g_natural for g, (_, _, g_natural) in zip(model.coupling, pairs))
    return Estimated(data.candidates, reparam, model.thetas(best), best.mu, best.tau, best.log_s,
                     _t_inflate(model, best, post), data.flops_models, tuple(int(c) for c in data.counts),
                     data.unique_tokens, iters, hyper,
                     {config.varying[x]: p for (_, x, _), p in zip(pairs, pivots)})
