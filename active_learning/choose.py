"""Choose the next (candidate, N, D) runs: the ones that most reduce decision uncertainty per FLOP.

The belief is the Laplace posterior of every candidate's law, linearised: the
quantity that ranks candidate k is g_k = log L*_k(C*), its loss at the target
compute with its own compute-optimal allocation, and a proposed run of candidate
k' at (N, D) observes y = f(theta_k', N, D) + noise. Under the linear-Gaussian
approximation, observing y moves the posterior mean of g by s * Z with Z ~ N(0, 1)
and s = Cov(g, y) / sd(y), whatever the outcome turns out to be.

The uncertainty of the decision "which candidate is best at C*" is measured by
its Bayes risk, the expected regret E[min_k g_k] - min_k E[g_k] is reduced, in
expectation, by the knowledge gradient E[max_k(-g_k - s_k Z)] - max_k(-g_k)
(Frazier, Powell & Dayanik 2009); or, counting every wrong pick alike (the zero-one
loss, Chick & Inoue 2001), by the expected fall in the chance of a wrong pick. The
campaign also reports every candidate's predicted loss at C*, so a run is also worth
the expected absolute error of those predictions it removes, sqrt(2/pi) (sd_k - sd_k
after the run), averaged over candidates: under the linear loss both terms are in
log-loss units and their sum is one expected loss.
With pooled fits a run on one candidate also informs the shared parameters, so
it counts towards every candidate's prediction. Runs are picked greedily by that
value per FLOP; after each pick the covariance is updated as if the run had been
observed (the update does not depend on y), so a batch spreads out. Because the
value of information is not concave in the number of runs, a point is valued at
the best rate per run of a few replicate seeds of it (KG(*), Frazier & Powell 2010).

Also here: the single-law version (largest reduction of Var(g) per FLOP). The
baselines (grid, random, IsoFLOP) are in baselines.py and re-exported here.

References:
  Chick & Inoue 2001, "New two-stage and sequential procedures for selecting the best simulated system".
  Frazier, Powell & Dayanik 2009, "The knowledge-gradient policy for correlated normal beliefs".
  Frazier & Powell 2010, "Paradoxes in learning and the marginal value of information".
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special

from active_learning import allocate
from active_learning.baselines import ExperimentPoint, PoolPoint, grid_design, isoflop_design, random_design
from active_learning.fit import Fit
from active_learning.pooled import PooledFit, PoolingConfig, RunsByCandidate, fit_pooled
from active_learning.scaling_law import Features, Reparam, ScalingLaw
from active_learning.threads import one_blas_thread

__all__ = ["DECISION_LOSSES", "Belief", "ExperimentPoint", "PoolPoint", "choose_for_single_law", "choose_next_runs",
           "grid_design", "isoflop_design", "knowledge_gradient", "random_design", "zero_one_gains"]
KG_FLOOR = 1e-12  # below this the decision is settled and design falls back to variance reduction
DECISION_LOSSES = ("linear", "zero-one")  # choose_next_runs' decision_loss values (Chick & Inoue 2001's names)
MAX_REPLICATES = 8  # KG(*) looks at most this many replicate runs ahead


@dataclasses.dataclass(frozen=True)
class Belief:
    """A Gaussian belief about every candidate's parameters, in the fit's internal coordinates.

    Attributes:
      law: the scaling law.
      candidates: candidate ids.
      theta: natural parameters per candidate [K, p].
      reparam: internal <-> natural coordinates.
      cov: covariance of the stacked internal parameters [K*p, K*p], candidate-major.
      noise_var: variance of one run's log loss around the law.
      flops_models: FLOPs per token per candidate.
      unique_tokens: unique-data budget (data-constrained law), or None.
    """

    law: ScalingLaw
    candidates: tuple[str, ...]
    theta: np.ndarray
    reparam: Reparam
    cov: np.ndarray
    noise_var: float
    flops_models: tuple[allocate.FlopsModel, ...]
    unique_tokens: float | None = None

    @classmethod
    def from_pooled(cls, fit: PooledFit) -> Belief:
        return cls(fit.law, fit.candidates, fit.theta, fit.reparam, fit.stacked_cov(), fit.noise_var,
                   fit.flops_models, fit.unique_tokens)

    @classmethod
    def from_fit(cls, fit: Fit, candidate: str = "candidate",
                 flops_model: allocate.FlopsModel = allocate.FlopsModel()) -> Belief:
        p = fit.theta.size
        return cls(fit.law, (candidate,), fit.theta[None], Reparam(np.eye(p), np.zeros(p)), fit.cov, fit.noise_var,
                   (flops_model,), fit.unique_tokens)

    @property
    def n_params(self) -> int:
        return self.theta.shape[1]

    def target(self, target_flops: float, inference_tokens: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """g_k = log L*_k(C*) [K] and its gradient in internal coordinates [K, p]."""
        log_u = None if self.unique_tokens is None else math.log(self.unique_tokens)
        g, grads = np.empty(len(self.candidates)), np.empty_like(self.theta)
        for k, model in enumerate(self.flops_models):
            log_n, log_d = allocate.log_optimal_allocation(self.law, self.theta[k], target_flops, flops_model=model,
                                                           inference_tokens=inference_tokens,
                                                           unique_tokens=self.unique_tokens)
            x = Features.from_arrays([math.exp(float(log_n))], [math.exp(float(log_d))],
                                     None if log_u is None else [self.unique_tokens])
            f, jac = self.law.log_loss_jac(self.theta[k], x)
            g[k], grads[k] = f[0], self.reparam.jacobian(jac)[0]
        return g, grads

    def observations(self, pool: Sequence[PoolPoint]) -> tuple[np.ndarray, np.ndarray]:
        """Jacobians of log L at every pool point for every candidate [K, M, p], and FLOPs [K, M]."""
        n, d = np.array(pool, dtype=float).T
        x = Features.from_arrays(n, d, None if self.unique_tokens is None else np.full_like(d, self.unique_tokens))
        jac = np.stack([self.reparam.jacobian(self.law.log_loss_jac(t, x)[1]) for t in self.theta])
        cost = np.stack([m.per_token(n) * d for m in self.flops_models])
        return jac, cost


def knowledge_gradient(a: np.ndarray, b: np.ndarray, max_lines: int = 12) -> np.ndarray:
    """E[max_l(a_l + b_l Z)] - max_l a_l for Z ~ N(0, 1), for many proposals at once.

    Exact for the lines kept: the integral of the upper envelope of the lines
    a_l + b_l z against the normal density, summed over the intervals between all
    pairwise crossings (Frazier, Powell & Dayanik 2009, who walk the envelope
    instead). Only the max_lines lines that can rise highest within |z| < 8 are kept;
    the rest cannot reach the envelope where the normal density has any mass.

    Args:
      a: current values, higher is better [P, L] (or [L]).
      b: change per unit Z [P, L] (or [L]).

    Returns:
      The knowledge gradient per proposal [P] (a scalar for 1-D input).
    """
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    scalar = a.shape[0] == 1 and b.shape[0] == 1
    a, b = np.broadcast_arrays(a, b)
    a = a - a.max(axis=1, keepdims=True)
    if a.shape[1] > max_lines:
        keep = np.argpartition(-(a + 8.0 * np.abs(b)), max_lines - 1, axis=1)[:, :max_lines]
        a, b = np.take_along_axis(a, keep, 1), np.take_along_axis(b, keep, 1)
    p, n = a.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = (a[:, :, None] - a[:, None, :]) / (b[:, None, :] - b[:, :, None])
    cross = np.sort(np.where(np.isfinite(cross), cross, np.inf).reshape(p, n * n), axis=1)
    edges = np.concatenate([np.full((p, 1), -np.inf), cross, np.full((p, 1), np.inf)], axis=1)
    lo, hi = edges[:, :-1], edges[:, 1:]
    # A point inside each interval; the unbounded ends and empty (inf, inf) intervals get finite stand-ins.
    lo_f, hi_f = np.clip(lo, -1e6, 1e6), np.clip(hi, -1e6, 1e6)
    mid = np.where(np.isfinite(lo) & np.isfinite(hi), 0.5 * (lo_f + hi_f),
                   np.where(np.isfinite(lo), lo_f + 1.0, hi_f - 1.0))
    top = np.argmax(a[:, None, :] + b[:, None, :] * mid[:, :, None], axis=2)
    a_top, b_top = np.take_along_axis(a, top, 1), np.take_along_axis(b, top, 1)
    pdf = lambda z: np.exp(-0.5 * np.minimum(z * z, 1e4)) / math.sqrt(2.0 * math.pi)  # noqa: E731
    value = a_top * (special.ndtr(hi) - special.ndtr(lo)) + b_top * (pdf(lo) - pdf(hi))
    gain = np.maximum(value.sum(axis=1), 0.0)
    return gain[0] if scalar else gain


def _gains(g: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Knowledge gradient of each proposal: s [P, K] moves g by s Z; lower g is better."""
    return knowledge_gradient(np.broadcast_to(-g, s.shape), s)


def zero_one_gains(g: np.ndarray, cov: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Expected fall in the probability of a wrong pick per proposal [P], lower g being better.

    Summed over the pairs of the current leader b and each rival j (the Bonferroni bound on the
    probability of incorrect selection, Chick & Inoue 2001). For one pair, with d = g_j - g_b,
    sigma^2 = Var(g_j - g_b) and t = s_j - s_b, the posterior difference after the run is
    d + t Z with variance sigma^2 - t^2, and the pick is then wrong with probability
    Phi(-|d + t Z| / sqrt(sigma^2 - t^2)); its expectation over Z is 2 T(d / sigma, sqrt(sigma^2 - t^2) / |t|),
    with T Owen's (1956) function, against Phi(-d / sigma) before the run.

    Args:
      g: current posterior means [K].
      cov: their covariance [K, K].
      s: each proposal's move of g per unit Z [P, K].
    """
    b = int(np.argmin(g))
    rival = np.arange(len(g)) != b
    var = np.maximum(np.diag(cov)[rival] + cov[b, b] - 2.0 * cov[rival, b], 1e-300)  # [J]
    h = (g[rival] - g[b]) / np.sqrt(var)
    t = np.abs(s[:, rival] - s[:, [b]])  # [P, J]
    with np.errstate(divide="ignore"):
        ratio = np.where(t > 0, np.sqrt(np.maximum(var - t**2, 0.0)) / t, np.inf)
    return np.maximum(special.ndtr(-h) - 2.0 * special.owens_t(h, ratio), 0.0).sum(axis=1)


@dataclasses.dataclass
class _Design:
    """Greedy batch design state: the belief's covariance updated as runs are planned."""

    belief: Belief
    grads: np.ndarray  # [K, p]
    jac: np.ndarray  # [K, M, p]
    cost: np.ndarray  # [K, M]
    cov: np.ndarray  # [K*p, K*p]

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Cov(g_l, y_km) [K, M, K] and Var(y_km) [K, M] under the current covariance."""
        k, p = self.grads.shape
        c = self.cov.reshape(k, p, k, p)
        g_c = np.einsum("la,lakb->lkb", self.grads, c)  # Cov(g_l, theta_k) [K, K, p]
        cross = np.einsum("lkb,kmb->kml", g_c, self.jac)
        own = np.einsum("kma,kakb,kmb->km", self.jac, c, self.jac)
        return cross, own + self.belief.noise_var

    def target_cov(self) -> np.ndarray:
        """Cov(g_l, g_k) under the current covariance [K, K]."""
        k, p = self.grads.shape
        c = self.cov.reshape(k, p, k, p)
        return np.einsum("la,lakb,kb->lk", self.grads, c, self.grads)

    def target_var(self) -> np.ndarray:
        """Var(g_l) under the current covariance [K]."""
        return np.diag(self.target_cov())

    def observe(self, k: int, m: int) -> None:
        """Condition the covariance on a planned run (the update does not depend on its outcome)."""
        kk, p = self.grads.shape
        h = np.zeros(kk * p)
        h[k * p:(k + 1) * p] = self.jac[k, m]
        ch = self.cov @ h
        self.cov = self.cov - np.outer(ch, ch) / (h @ ch + self.belief.noise_var)


def _as_belief(fit_or_runs, config: PoolingConfig) -> Belief:
    if isinstance(fit_or_runs, Belief):
        return fit_or_runs
    if isinstance(fit_or_runs, PooledFit):
        return Belief.from_pooled(fit_or_runs)
    if isinstance(fit_or_runs, Fit):
        return Belief.from_fit(fit_or_runs)
    if isinstance(fit_or_runs, Mapping):
        return Belief.from_pooled(fit_pooled(fit_or_runs, config))
    raise TypeError(f"expected a PooledFit, Fit, Belief or runs by candidate, got {type(fit_or_runs).__name__}")


def _validate(pool: Sequence[PoolPoint], target_flops: float, flop_budget: float) -> None:
    if len(pool) == 0:
        raise ValueError("the pool of feasible (N, D) points is empty")
    if not (target_flops > 0 and flop_budget > 0):
        raise ValueError(f"target_flops and flop_budget must be > 0, got {target_flops}, {flop_budget}")
    bad = [pt for pt in pool if not (len(pt) == 2 and pt[0] > 0 and pt[1] > 0)]
    if bad:
        raise ValueError(f"pool points must be (N, D) with N, D > 0; bad: {bad[:3]}")


@one_blas_thread
def choose_next_runs(
    fit_or_runs: PooledFit | Fit | Belief | RunsByCandidate,
    pool: Sequence[PoolPoint],
    target_flops: float,
    flop_budget: float,
    rng: np.random.Generator,
    *,
    config: PoolingConfig = PoolingConfig(),
    inference_tokens: float = 0.0,
    candidates: Sequence[str] | None = None,
    allow_repeats: bool = False,
    max_seeds: int = 1,
    done: Mapping[ExperimentPoint, int] | None = None,
    prediction_weight: float = 1.0,
    decision_loss: str = "linear",
) -> list[ExperimentPoint]:
    """The next runs, for whichever candidates, that most reduce the decision's uncertainty per FLOP.

    Args:
      fit_or_runs: a PooledFit (or Fit / Belief), or runs by candidate to fit with `config`.
      pool: feasible (N, D) points, between the smallest and largest affordable proxies.
      target_flops: the compute C* the winner will be trained at.
      flop_budget: FLOPs the batch may spend in total.
      rng: breaks ties between equally valuable runs.
      config: pooling settings, used only when runs are given.
      inference_tokens: inference tokens for inference-aware allocation at C* (0: none).
      candidates: restrict proposals to these candidates (default: all).
      allow_repeats: whether a batch may hold the same (candidate, N, D) without limit.
      max_seeds: otherwise, at most this many runs (seeds) per (candidate, N, D), counting `done`.
        1 by default: per FLOP, the linear-Gaussian model would otherwise repeat the cheapest run
        many times, trusting the law's form at the smallest scale more than a campaign should.
      done: runs already made per (candidate, N, D), counted against max_seeds.
      prediction_weight: weight of the predictions' expected absolute error (mean over
        candidates) against the decision's value; 0 values the decision alone. Under the zero-one
        loss the decision's value is a probability, so the weight prices a log-loss unit of error in it.
      decision_loss: what a wrong pick costs. "linear": its regret, the loss it gives away at C*,
        valued by the knowledge gradient. "zero-one": one, whatever the margin, valued by the
        expected fall in the probability of picking wrongly (Chick & Inoue 2001's 0-1 procedure):
        it chases close contenders that "linear" deems not worth telling apart.

    Returns:
      (candidate, N, D) triples in the order chosen; their FLOPs sum to at most flop_budget.
    """
    _validate(pool, target_flops, flop_budget)
    if decision_loss not in DECISION_LOSSES:
        raise ValueError(f"decision_loss must be one of {DECISION_LOSSES}, got {decision_loss!r}")
    belief = _as_belief(fit_or_runs, config)
    g, grads = belief.target(target_flops, inference_tokens)
    jac, cost = belief.observations(pool)
    design = _Design(belief, grads, jac, cost, belief.cov.copy())
    seeds_left = _seeds_left(belief.candidates, pool, candidates, math.inf if allow_repeats else max_seeds, done)
    jitter = 1.0 + 1e-9 * rng.random(cost.shape)
    chosen, spent = [], 0.0
    while (affordable := (cost <= flop_budget - spent) & (seeds_left > 0)).any():
        value = _acquisition(design, g, prediction_weight, affordable, seeds_left, decision_loss)
        score = np.where(affordable, value / cost * jitter, -np.inf)
        k, m = np.unravel_index(int(np.argmax(score)), score.shape)
        design.observe(k, m)
        spent += float(cost[k, m])
        seeds_left[k, m] -= 1
        chosen.append((belief.candidates[k], float(pool[m][0]), float(pool[m][1])))
    return chosen


def _seeds_left(names: Sequence[str], pool: Sequence[PoolPoint], allowed: Sequence[str] | None, max_seeds: float,
                done: Mapping[ExperimentPoint, int] | None) -> np.ndarray:
    """Runs each (candidate, pool point) may still receive [K, M]; 0 for candidates not allowed."""
    left = np.full((len(names), len(pool)), float(max_seeds))
    if allowed is not None:
        left[~np.isin(np.array(names), list(allowed))] = 0.0
    for (c, n, d), count in (done or {}).items():
        if c in names and (n, d) in pool:
            left[names.index(c), pool.index((n, d))] -= count
    return left


def _acquisition(design: _Design, g: np.ndarray, prediction_weight: float, affordable: np.ndarray,
                 seeds_left: np.ndarray, decision_loss: str = "linear") -> np.ndarray:
    """Expected reduction of the decision's risk plus weighted mean absolute prediction error, per proposal [K, M].

    A run that moves the posterior mean of g by s Z cuts the Bayes risk of the decision by the
    knowledge gradient (Frazier, Powell & Dayanik 2009) under the linear loss, or by the expected
    fall of the probability of a wrong pick under the zero-one loss, and shrinks each Var(g_l) by
    s_l^2; a Gaussian's expected absolute error is sqrt(2/pi) sd, in log-loss units like the regret.

    The value of information is not concave: one run of a close contender can look worthless
    while a few runs settle the decision. As in the KG(*) policy (Frazier & Powell 2010, "Paradoxes
    in learning and the marginal value of information"), a proposal is valued at the best
    average value per run of r = 1 .. seeds_left replicate runs (their mean observes y with
    noise variance sigma^2 / r), and the greedy loop then plans the first of them.
    """
    cross, own = design.moments()
    noise = design.belief.noise_var
    target_cov = design.target_cov()
    most = int(min(np.max(seeds_left, initial=1), MAX_REPLICATES))
    best = np.zeros(own.shape)
    for r in range(1, most + 1):
        value = _value(g, cross, own - noise + noise / r, prediction_weight, target_cov, decision_loss) / r
        best = np.where(seeds_left >= r, np.maximum(best, value), best)
    if prediction_weight <= 0 and best[affordable].max() < KG_FLOOR:  # settled: sharpen the leader's prediction
        best = cross[:, :, int(np.argmin(g))] ** 2 / own
    return best


def _value(g: np.ndarray, cross: np.ndarray, var: np.ndarray, prediction_weight: float, target_cov: np.ndarray,
           decision_loss: str) -> np.ndarray:
    """The decision's gain (the knowledge gradient, or the zero-one gain) plus weighted prediction-error
    reduction of observing y with variance var [K, M]; target_cov is Cov(g) [K, K] before the run."""
    s = cross / np.sqrt(var)[..., None]  # [K, M, K]
    flat = s.reshape(-1, len(g))
    value = (zero_one_gains(g, target_cov, flat) if decision_loss == "zero-one" else _gains(g, flat)).reshape(var.shape)
    if prediction_weight > 0:
        target_var = np.diag(target_cov)
        sd_after = np.sqrt(np.maximum(target_var - s**2, 0.0))
        value = value + prediction_weight * math.sqrt(2.0 / math.pi) * np.mean(np.sqrt(target_var) - sd_after, axis=-1)
    return value


@one_blas_thread
def choose_for_single_law(fit: Fit, pool: Sequence[PoolPoint], target_flops: float, flop_budget: float,
                          rng: np.random.Generator, *,
                          flops_model: allocate.FlopsModel = allocate.FlopsModel()) -> list[PoolPoint]:
    """Runs that most reduce the variance of one law's predicted log L* at C*, per FLOP (greedy).

    The reduction from observing y is Cov(g, y)^2 / Var(y), with the covariance
    updated after each pick.
    """
    _validate(pool, target_flops, flop_budget)
    belief = Belief.from_fit(fit, flops_model=flops_model)
    _, grads = belief.target(target_flops)
    jac, cost = belief.observations(pool)
    design = _Design(belief, grads, jac, cost, belief.cov.copy())
    jitter = 1.0 + 1e-9 * rng.random(cost.shape)
    chosen, spent = [], 0.0
    while (affordable := cost <= flop_budget - spent).any():
        cross, var = design.moments()
        score = np.where(affordable, cross[:, :, 0] ** 2 / var / cost * jitter, -np.inf)
        k, m = np.unravel_index(int(np.argmax(score)), score.shape)
        design.observe(k, m)
        spent += float(cost[k, m])
        chosen.append((float(pool[m][0]), float(pool[m][1])))
    return chosen
