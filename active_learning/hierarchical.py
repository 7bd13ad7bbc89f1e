"""The hierarchical model behind pooled fits: its configuration, data, priors and objective.

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

The fit is split by what it does: laplace.py integrates the departures out (the Laplace
marginal likelihood and posterior), empirical_bayes.py fits the hyperparameters (tau, s,
the couplings) by type-II maximum likelihood and drives the whole estimation (estimate).

References:
  Gelman et al. 2013, "Bayesian Data Analysis", ch. 5 (hierarchical models), ch. 15.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize

from active_learning import allocate
from active_learning.noise import MIN_LOG_SCALE, NoiseModel, make_noise
from active_learning.scaling_law import (MIN_EXPONENT, MUENNIGHOFF_R_D_STAR, MUENNIGHOFF_R_N_STAR, Features,
                                         Observation, Reparam, ScalingLaw, get_law)

RunsByCandidate = Mapping[str, Sequence[Observation]]
POOLABLE_LAWS = ("chinchilla", "data-constrained")
EXPONENTS = ("alpha", "beta")
DEPARTURE_FRAMES = ("centred", "natural", "learned", "evidence")
EVIDENCE_FRAMES = ("centred", "natural")  # what departures="evidence" chooses between
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
        say; or "evidence": both fixed frames are fitted and the one of greater marginal likelihood
        kept (the same hyperparameters each, so the evidence compares them fairly; MacKay 1992).
        With shared exponents (the default varying) they are all the same model.
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
        if self.departures == "evidence":
            # Not a frame but a choice between two: a model built from it would silently be the centred one.
            raise ValueError('departures="evidence" chooses between the centred and natural frames in '
                             'empirical_bayes.estimate; a model needs one frame: pass "centred" or "natural"')
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
class Data:
    """Runs sorted by candidate."""

    candidates: tuple[str, ...]
    index: np.ndarray  # candidate of each run [n]
    starts: np.ndarray  # first run of each candidate [K]
    x: Features
    log_y: np.ndarray
    flops_models: tuple[allocate.FlopsModel, ...]
    unique_tokens: float | None

    @classmethod
    def build(cls, runs_by_candidate: RunsByCandidate) -> Data:
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
class Prior:
    """Gaussian prior on mu (internal coordinates) and the hyperpriors."""

    mean: np.ndarray
    precision: np.ndarray  # diagonal [p]
    tau0: np.ndarray  # [m]
    tau_weight: float
    sigma0: float
    sigma_weight: float

    @classmethod
    def build(cls, config: PoolingConfig, law: ScalingLaw, mean_log_loss: float) -> Prior:
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
class State:
    """Mutable iterate of the MAP / EM loop (internal coordinates)."""

    mu: np.ndarray  # [p]
    delta: np.ndarray  # [K, m]
    log_s: float
    tau: np.ndarray  # [m]
    noise_var: float  # effective noise variance for the Laplace posterior


@dataclasses.dataclass(frozen=True)
class Model:
    """The pieces that stay fixed during one pooled fit."""

    law: ScalingLaw
    noise: NoiseModel
    reparam: Reparam
    data: Data
    prior: Prior
    departure_map: np.ndarray  # S [p, m]
    exponents: np.ndarray  # indices of the exponents among the parameters
    pairs: tuple[tuple[int, int, float], ...] = ()  # learned (level, exponent, g_natural) couplings
    coupling: tuple[float, ...] = ()  # g of each pair; departure_map = S_centred L(g)

    def with_coupling(self, coupling: Sequence[float]) -> Model:
        """The model with S = S_centred L(g), L = I + sum_i g_i e_level e_exponent^T.

        L adds g times the level's column to the exponent's; the level's column is a unit
        vector, so taking the old g out and putting the new one in is exact.
        """
        s = self.departure_map.copy()
        for (level, x, _), old, new in zip(self.pairs, self.coupling, coupling):
            s[:, x] -= old * s[:, level]
            s[:, x] += new * s[:, level]
        return dataclasses.replace(self, departure_map=s, coupling=tuple(float(g) for g in coupling))

    def thetas(self, state: State) -> np.ndarray:
        """Internal parameters of each candidate [K, p], exponents kept positive."""
        theta = np.repeat(state.mu[None], len(self.data.candidates), axis=0)
        theta += state.delta @ self.departure_map.T
        theta[:, self.exponents] = np.maximum(theta[:, self.exponents], MIN_EXPONENT)
        return theta

    def residuals(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """Residuals [n] and Jacobian of f in internal coordinates [n, p]."""
        rows = self.reparam.to_natural(self.thetas(state))[self.data.index]
        f, jac = self.law.log_loss_jac(rows, self.data.x)
        return self.data.log_y - f, self.reparam.jacobian(jac)

    def log_scale_penalty(self, log_s: float) -> float:
        """-log of the scaled-inverse-chi^2(nu, sigma0^2) prior on s^2, up to a constant."""
        nu = self.prior.sigma_weight
        return (nu + 2.0) * log_s + 0.5 * nu * self.prior.sigma0**2 * math.exp(-2.0 * log_s)

    def objective(self, state: State, r: np.ndarray | None = None) -> float:
        if r is None:
            r, _ = self.residuals(state)
        value, _, _ = self.noise.nll(r, state.log_s)
        dmu = state.mu - self.prior.mean
        return (value + 0.5 * float(np.sum(state.delta**2 / state.tau**2))
                + 0.5 * float(dmu @ (self.prior.precision * dmu)) + self.log_scale_penalty(state.log_s))

    def gradient(self, state: State, r: np.ndarray, jac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def coupling_prior(g_natural: float) -> tuple[float, float]:
    """(mean, sd) of a coupling's weak prior: the pivot halfway between N = 1 and the centre, sd log N0.

    Neither frame is favoured, and a campaign with two or three candidates cannot put the
    pivot at an absurd scale.
    """
    return 0.5 * g_natural, abs(g_natural)
