"""Pooled fit of a campaign: one law for all candidates, with per-candidate departures (hierarchical.py).

fit_pooled returns a PooledFit: each candidate's law, the joint Laplace posterior
of all of them, each candidate's predicted loss at the target compute C* (at its
own compute-optimal allocation) with an interval, the probability that each
candidate is the best at C*, and what picking it is expected to cost (its expected
regret: how much higher its loss at C* is expected to be than the best's). A
candidate with one run borrows the campaign's exponents; a candidate with many
runs is close to its own separate fit.

By default E and the exponents are shared and log A, log B vary (varying=("a", "b")):
with shared exponents, candidates differ in level but not in slope. Add "e",
"alpha" or "beta" to `varying` to let them depart too (their laws can then cross); with
its level varying too, an exponent's departures are correlated with the level's as the
data say (departures="learned": see hierarchical.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import special

from active_learning import allocate
from active_learning.empirical_bayes import estimate
from active_learning.hierarchical import EXPONENTS, PoolingConfig, RunsByCandidate
from active_learning.scaling_law import MIN_EXPONENT, Reparam, ScalingLaw, get_law
from active_learning.threads import one_blas_thread

__all__ = ["PoolingConfig", "PooledFit", "RunsByCandidate", "Standing", "TargetPrediction",
           "expected_regret_of_draws", "fit_pooled", "prob_best_of_draws"]


@dataclasses.dataclass(frozen=True)
class Standing:
    """Where one candidate stands in the decision "which is best at C*" (PooledFit.standings).

    Attributes:
      prob_best: posterior probability that it has the lowest loss at C*.
      expected_regret: how much higher its loss at C* is expected to be than the best candidate's, as a
        fraction (expected_regret_of_draws): what picking it now is expected to cost.
    """

    prob_best: float
    expected_regret: float


@dataclasses.dataclass(frozen=True)
class TargetPrediction:
    """One candidate's predicted loss at the target compute, at its own compute-optimal (N, D).

    Attributes:
      loss: predicted loss L*(C).
      sd: its standard deviation (delta method).
      lo: lower end of the interval.
      hi: upper end of the interval.
      n_opt: compute-optimal parameters.
      d_opt: compute-optimal tokens.
      n_runs: the candidate's number of runs.
    """

    loss: float
    sd: float
    lo: float
    hi: float
    n_opt: float
    d_opt: float
    n_runs: int


@one_blas_thread
def fit_pooled(runs_by_candidate: RunsByCandidate, config: PoolingConfig = PoolingConfig()) -> PooledFit:
    """Fit one law jointly to every candidate's runs (see the module docstring for the model).

    Args:
      runs_by_candidate: candidate id -> its runs (at least one each).
      config: law, noise density, which parameters vary, and the priors.

    Returns:
      The PooledFit, with per-candidate parameters and the joint Laplace posterior.

    Raises:
      ValueError: for an empty mapping or a candidate without runs.
    """
    est = estimate(runs_by_candidate, config)
    post = est.posterior
    tau = {name: float(t) for name, t in zip(config.varying, est.tau)}
    return PooledFit(config.law, est.candidates, est.reparam.to_natural(est.theta), est.reparam.to_natural(est.mu),
                     tau, post.noise_var, est.log_scale, est.reparam, post.shared_cov, post.mixing, post.own_cov,
                     est.flops_models, est.n_runs, config.level, est.unique_tokens, est.iterations, est.hyper,
                     {name: float(math.exp(v)) for name, v in est.log_pivots.items()}, est.converged, est.departures,
                     est.neg_log_evidence)


# ---------------------------------------------------------------------------- the fitted campaign


@dataclasses.dataclass(frozen=True)
class PooledFit:
    """Jointly fitted laws of a campaign's candidates, with their joint Laplace posterior.

    The posterior of candidate k's internal parameters is theta_k = theta_hat_k + R_k u + S e_k,
    with u ~ N(0, shared_cov) common to all candidates and e_k ~ N(0, D_k^-1) its own.

    Attributes:
      law_name: registered law name.
      candidates: candidate ids, in input order.
      theta: natural parameters per candidate [K, p].
      mean: natural parameters of the campaign-level law [p].
      tau: fitted prior sd of each varying parameter's departures.
      noise_var: effective noise variance of one log-loss observation.
      log_scale: fitted log scale of the noise density.
      reparam: internal <-> natural coordinates.
      shared_cov: covariance of the shared fluctuation u [p, p] (internal).
      mixing: R_k [K, p, p].
      own_cov: S D_k^-1 S^T [K, p, p] (internal).
      flops_models: training FLOPs per token per candidate.
      n_runs: runs per candidate.
      level: nominal coverage of intervals.
      unique_tokens: unique-data budget (data-constrained law), or None.
      iterations: iterations the fit took.
      hyper: H_h [h, K, p] (internal), or None: how the fit moves with each hyperparameter
        (log tau_j, log s) times that hyperparameter's sd. The posterior adds sum_h z_h H_h,
        z_h ~ N(0, 1) common to all candidates, for the uncertainty of the hyperparameters.
      pivots: with departures="learned", for each exponent whose departures were fitted jointly with
        its level's, the N (alpha) or D (beta) at which the two are independent a priori: near the
        campaign's centre, candidates differ as compute multipliers there; near 1, as in the
        natural parameters.
      converged: whether the fit settled before its iteration cap (PoolingConfig.max_iter); if not,
        its estimates are the last iterate's, and a campaign says so.
      departures: the frame the departures were fitted in (PoolingConfig.departures; with
        "evidence", the frame the evidence chose).
      neg_log_evidence: -log of the fit's Laplace evidence (laplace.evidence): fits of the same runs
        under other configurations compare by it (lower is more probable).
    """

    law_name: str
    candidates: tuple[str, ...]
    theta: np.ndarray
    mean: np.ndarray
    tau: dict[str, float]
    noise_var: float
    log_scale: float
    reparam: Reparam
    shared_cov: np.ndarray
    mixing: np.ndarray
    own_cov: np.ndarray
    flops_models: tuple[allocate.FlopsModel, ...]
    n_runs: tuple[int, ...]
    level: float = 0.9
    unique_tokens: float | None = None
    iterations: int = 0
    hyper: np.ndarray | None = None
    pivots: dict[str, float] = dataclasses.field(default_factory=dict)
    converged: bool = True
    departures: str = "centred"
    neg_log_evidence: float = math.nan

    def _hyper(self) -> np.ndarray:
        k, p, _ = self.mixing.shape
        return np.zeros((0, k, p)) if self.hyper is None else self.hyper

    @property
    def law(self) -> ScalingLaw:
        return get_law(self.law_name)

    @property
    def quantile(self) -> float:
        return float(special.ndtri(0.5 + 0.5 * self.level))

    def index(self, candidate: str) -> int:
        try:
            return self.candidates.index(candidate)
        except ValueError:
            raise KeyError(f"unknown candidate {candidate!r}") from None

    def params(self, candidate: str) -> dict[str, float]:
        """The paper's parameters of one candidate's law."""
        return self.law.describe(self.theta[self.index(candidate)])

    def stacked_cov(self) -> np.ndarray:
        """Covariance of all candidates' internal parameters, [K*p, K*p] (candidate-major)."""
        k, p, _ = self.mixing.shape
        shared = np.einsum("kab,bc,ldc->kald", self.mixing, self.shared_cov, self.mixing)
        shared[np.arange(k), :, np.arange(k), :] += self.own_cov
        hyper = self._hyper().reshape(-1, k * p)
        return shared.reshape(k * p, k * p) + hyper.T @ hyper

    def candidate_cov(self, candidate: str) -> np.ndarray:
        """Natural-coordinate covariance of one candidate's parameters [p, p]."""
        k = self.index(candidate)
        hyper = self._hyper()[:, k]
        cov = self.mixing[k] @ self.shared_cov @ self.mixing[k].T + self.own_cov[k] + hyper.T @ hyper
        return self.reparam.covariance(cov)

    def target_allocation(self, theta: np.ndarray, target_flops: float, inference_tokens: float = 0.0):
        """log N_opt, log D_opt and log L* for parameters [..., K, p], each with its own FLOPs model."""
        shape = theta.shape[:-1]
        log_n, log_d = np.empty(shape), np.empty(shape)
        for model in set(self.flops_models):
            idx = [k for k, m in enumerate(self.flops_models) if m == model]
            ln, ld = allocate.log_optimal_allocation(self.law, theta[..., idx, :], target_flops, flops_model=model,
                                                     inference_tokens=inference_tokens,
                                                     unique_tokens=self.unique_tokens)
            log_n[..., idx], log_d[..., idx] = ln, ld
        log_u = None if self.unique_tokens is None else math.log(self.unique_tokens)
        return log_n, log_d, allocate.elementwise_log_loss(self.law, theta, log_n, log_d, log_u)

    def target_moments(self, target_flops: float, inference_tokens: float = 0.0):
        """Linearised joint posterior of log L*_k: mean [K], covariance [K, K], and the gradients [K, p].

        The gradient of the optimal loss is the law's Jacobian at the optimum (envelope theorem).
        """
        log_n, log_d, g = self.target_allocation(self.theta, target_flops, inference_tokens)
        log_u = None if self.unique_tokens is None else math.log(self.unique_tokens)
        _, jac = allocate.elementwise_log_loss_jac(self.law, self.theta, log_n, log_d, log_u)
        grad = self.reparam.jacobian(jac)  # internal coordinates [K, p]
        a = np.einsum("kab,ka->kb", self.mixing, grad)
        cov = a @ self.shared_cov @ a.T + np.diag(np.einsum("ka,kab,kb->k", grad, self.own_cov, grad))
        h = np.einsum("hka,ka->hk", self._hyper(), grad)
        cov = cov + h.T @ h
        return g, cov, grad, (log_n, log_d)

    def predict_at_target(self, target_flops: float, *, inference_tokens: float = 0.0) -> dict[str, TargetPrediction]:
        """Each candidate's loss at its own compute-optimal (N, D) for the budget, with intervals."""
        g, cov, _, (log_n, log_d) = self.target_moments(target_flops, inference_tokens)
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        q = self.quantile
        return {c: TargetPrediction(float(np.exp(g[k])), float(np.exp(g[k]) * sd[k]), float(np.exp(g[k] - q * sd[k])),
                                    float(np.exp(g[k] + q * sd[k])), float(np.exp(log_n[k])),
                                    float(np.exp(log_d[k])), self.n_runs[k])
                for k, c in enumerate(self.candidates)}

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Natural parameters drawn from the joint Laplace posterior, [size, K, p]."""
        k, p, _ = self.mixing.shape
        u = rng.standard_normal((size, p)) @ _sqrt(self.shared_cov).T
        e = np.einsum("kab,skb->ska", np.stack([_sqrt(c) for c in self.own_cov]), rng.standard_normal((size, k, p)))
        internal = self.reparam.to_internal(self.theta) + np.einsum("kab,sb->ska", self.mixing, u) + e
        hyper = self._hyper()
        internal = internal + np.einsum("hka,sh->ska", hyper, rng.standard_normal((size, len(hyper))))
        natural = self.reparam.to_natural(internal)
        for j, name in enumerate(self.law.param_names):
            if name in EXPONENTS:
                natural[..., j] = np.maximum(natural[..., j], MIN_EXPONENT)
        return natural

    def target_draws(self, target_flops: float, rng: np.random.Generator, *, n_samples: int = 4000,
                     inference_tokens: float = 0.0, method: str = "linear") -> np.ndarray:
        """Joint posterior draws of every candidate's log L*(C), [n_samples, K].

        method='linear' samples the linearised joint Gaussian of log L*_k (fast);
        method='sample' draws parameters and re-solves each allocation (captures nonlinearity).
        """
        if method == "linear":
            g, cov, _, _ = self.target_moments(target_flops, inference_tokens)
            return g + rng.standard_normal((n_samples, len(g))) @ _sqrt(cov).T
        if method == "sample":
            return self.target_allocation(self.sample(rng, n_samples), target_flops, inference_tokens)[2]
        raise ValueError(f"method must be 'linear' or 'sample', got {method!r}")

    def prob_best(self, target_flops: float, rng: np.random.Generator, *, n_samples: int = 4000,
                  inference_tokens: float = 0.0, method: str = "linear") -> dict[str, float]:
        """Posterior probability that each candidate has the lowest loss at the target compute (target_draws)."""
        draws = self.target_draws(target_flops, rng, n_samples=n_samples, inference_tokens=inference_tokens,
                                  method=method)
        return dict(zip(self.candidates, prob_best_of_draws(draws).tolist()))

    def standings(self, target_flops: float, rng: np.random.Generator, *, n_samples: int = 4000,
                  inference_tokens: float = 0.0, method: str = "linear") -> dict[str, Standing]:
        """Each candidate's P(best) and expected regret at the target compute, both from one set of
        target_draws, so that they describe the same posterior sample."""
        draws = self.target_draws(target_flops, rng, n_samples=n_samples, inference_tokens=inference_tokens,
                                  method=method)
        return {c: Standing(float(p), float(r)) for c, p, r in
                zip(self.candidates, prob_best_of_draws(draws), expected_regret_of_draws(draws))}


def prob_best_of_draws(log_losses: np.ndarray) -> np.ndarray:
    """Fraction of draws [S, K] in which each candidate has the lowest loss, [K]."""
    return np.bincount(np.argmin(log_losses, axis=1), minlength=log_losses.shape[1]) / len(log_losses)


def expected_regret_of_draws(log_losses: np.ndarray) -> np.ndarray:
    """Mean over draws of L_k / min_j L_j - 1, per candidate, from draws of log losses [S, K].

    The expected opportunity cost of picking candidate k (Chick & Inoue 2001, "New two-stage and
    sequential procedures for selecting the best simulated system", their linear loss): zero only
    where k is the best in every draw, and small where the candidates that beat it do so by little,
    which P(best) alone cannot say. In relative terms, so it reads as a fraction of the loss.
    """
    return np.mean(np.expm1(log_losses - np.min(log_losses, axis=1, keepdims=True)), axis=0)


def _sqrt(cov: np.ndarray) -> np.ndarray:
    """A square root L with L L^T = cov for a PSD matrix."""
    w, v = np.linalg.eigh(0.5 * (cov + cov.T))
    return v * np.sqrt(np.maximum(w, 0.0))
