"""The best fixed design at the true laws: a bound on what any design of proxy runs can reach.

choose.py plans under the linear-Gaussian approximation of the pooled model, where
the posterior covariance after a set of runs does not depend on their outcomes. So,
to first order, no sequential policy beats the best fixed design, and the best fixed
design is the one computed at the true parameters. optimal_design finds it for a
simulated campaign: run counts relaxed to reals (Kiefer 1959's approximate designs),
it minimises the mean posterior sd of the candidates' log L*(C*), which is what the
benchmark's mean absolute error measures (E|error| = sqrt(2/pi) sd for an unbiased
Gaussian estimate), subject to the FLOP budget and a cap on seeds per point.

The model is the pooled one (hierarchical.py) in natural coordinates: theta_k = mu + delta_k,
delta_k ~ N(0, diag(tau^2)), a weak Gaussian prior on mu, Gaussian noise on log loss.
The gradient of Var(g_l) in a design weight is -(a^T Sigma G_l)^2 / sigma^2 (the
derivative of an inverse), and Frank-Wolfe steps keep the design within the budget and the cap.

For the decision, pick_bound spends everything on the best against the runner-up (a bound,
not a design anyone would make); decision_design tells the best from every rival, and
whole_runs rounds it to runs the benchmark can make and fit like any other design's.

References:
  Kiefer 1959, "Optimum experimental designs" (approximate designs).
  Chaloner & Verdinelli 1995, "Bayesian experimental design: a review" (sec. 2: linear
    designs do not depend on the data, so a sequential design has nothing to adapt to).
  Jaggi 2013, "Revisiting Frank-Wolfe: projection-free sparse convex optimization".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import linalg, optimize, special

from active_learning import allocate
from active_learning.baselines import PoolPoint
from active_learning.choose import Belief
from active_learning.scaling_law import Chinchilla, Reparam, ScalingLaw
from active_learning.threads import one_blas_thread


@dataclasses.dataclass(frozen=True)
class Campaign:
    """What the bound needs to know about a campaign: its true laws, pool and prior.

    Attributes:
      theta: true natural parameters per candidate [K, p].
      pool: feasible (N, D) points [M].
      fixed: (N, D) runs every candidate already has (the base runs), once each.
      target_flops: C*.
      noise: sd of one run's log loss.
      tau: sd of the candidates' departures, per parameter [p].
      shared_sd: sd of the weak prior on the campaign's shared parameters [p].
      law: the scaling law (compute-optimal allocation at 6ND).
    """

    theta: np.ndarray
    pool: Sequence[PoolPoint]
    fixed: Sequence[PoolPoint]
    target_flops: float
    noise: float
    tau: np.ndarray
    shared_sd: np.ndarray
    law: ScalingLaw = Chinchilla()

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.theta.shape[0], len(self.pool), self.theta.shape[1]

    def belief(self) -> Belief:
        """The prior as choose.py's Belief, in natural coordinates: Cov(theta_k, theta_l) = S^2 + [k = l] T^2.

        Its Jacobians and target gradients are the ones active learning plans with.
        """
        k, _, p = self.shape
        shared, own = np.diag(np.asarray(self.shared_sd, float) ** 2), np.diag(np.asarray(self.tau, float) ** 2)
        cov = np.kron(np.ones((k, k)), shared) + np.kron(np.eye(k), own)
        return Belief(self.law, tuple(f"cand{j}" for j in range(k)), np.asarray(self.theta, float),
                      Reparam(np.eye(p), np.zeros(p)), cov, self.noise**2, (allocate.FlopsModel(),) * k)

    def cost(self) -> np.ndarray:
        """FLOPs of one run at each pool point [M] (6ND)."""
        return self.belief().observations(self.pool)[1][0]


@dataclasses.dataclass(frozen=True)
class _Linearised:
    """The campaign's Jacobians, fixed for one optimisation."""

    jac: np.ndarray  # [K, M, p]
    cost: np.ndarray  # FLOPs of one run [K, M]
    fixed_info: np.ndarray  # per candidate information of the fixed runs [K, p, p]
    grads: np.ndarray  # [K, p]
    prior: np.ndarray  # precision of (mu, delta_1 .. delta_K) [q, q]
    noise_var: float

    @classmethod
    def build(cls, campaign: Campaign) -> _Linearised:
        k, _, p = campaign.shape
        belief = campaign.belief()
        jac, cost = belief.observations(campaign.pool)
        fixed = belief.observations(campaign.fixed)[0] if len(campaign.fixed) else np.zeros((k, 0, p))
        prior = np.zeros((p * (k + 1),) * 2)
        prior[:p, :p] = np.diag(1.0 / np.asarray(campaign.shared_sd, float) ** 2)
        for j in range(k):
            prior[p * (j + 1):p * (j + 2), p * (j + 1):p * (j + 2)] = np.diag(1.0 / np.asarray(campaign.tau) ** 2)
        return cls(jac, cost, np.einsum("kfa,kfb->kab", fixed, fixed),
                   belief.target(campaign.target_flops)[1], prior, campaign.noise**2)

    def covariance(self, weights: np.ndarray) -> np.ndarray:
        """Posterior covariance of (mu, delta) after `weights` runs at each (candidate, point) [q, q]."""
        return np.linalg.inv(self.precision(weights))

    def precision(self, weights: np.ndarray) -> np.ndarray:
        """Posterior precision of (mu, delta) after `weights` runs [q, q]: affine in the weights."""
        k, _, p = self.jac.shape
        precision = self.prior.copy()
        info = (np.einsum("km,kma,kmb->kab", weights, self.jac, self.jac) + self.fixed_info) / self.noise_var
        for j in range(k):
            own = slice(p * (j + 1), p * (j + 2))
            precision[:p, :p] += info[j]
            precision[:p, own] += info[j]
            precision[own, :p] += info[j]
            precision[own, own] += info[j]
        return precision

    def lifted(self, contrasts: np.ndarray) -> np.ndarray:
        """Contrasts sum_k c_lk . theta_k in the coordinates (mu, delta_1 .. delta_K) [L, q]."""
        # theta_k = mu + delta_k, so a contrast is (sum_k c_k on mu, c_k on delta_k).
        return np.concatenate([contrasts.sum(axis=1, keepdims=True), contrasts], axis=1).reshape(len(contrasts), -1)

    def sds(self, weights: np.ndarray, contrasts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior sd of each contrast sum_k c_lk . theta_k [L], and its gradient in the weights [L, K, M].

        Args:
          weights: runs per (candidate, pool point) [K, M].
          contrasts: coefficients on every candidate's parameters [L, K, p].
        """
        k, _, p = self.jac.shape
        lifted = self.lifted(contrasts)
        sigma_c = self.covariance(weights) @ lifted.T  # [q, L]
        sd = np.sqrt(np.einsum("lq,ql->l", lifted, sigma_c))
        sigma_c = sigma_c.reshape(k + 1, p, -1)
        # a_km = (J_km on mu, J_km on delta_k); d Var_l / d w_km = -(a_km . Sigma c_l)^2 / sigma^2
        proj = np.einsum("kma,kal->lkm", self.jac, sigma_c[0][None] + sigma_c[1:])
        return sd, -proj**2 / (2.0 * sd[:, None, None] * self.noise_var)

    def mean_sd(self, weights: np.ndarray, contrasts: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Mean sd of the contrasts (default: every candidate's log L*(C*)), and its gradient [K, M]."""
        sd, grad = self.sds(weights, self.targets() if contrasts is None else contrasts)
        return float(sd.mean()), grad.mean(axis=0)

    def targets(self) -> np.ndarray:
        """The contrasts g_l = log L*_l(C*), one per candidate [K, K, p]."""
        k, p = self.grads.shape
        out = np.zeros((k, k, p))
        out[np.arange(k), np.arange(k)] = self.grads
        return out


@dataclasses.dataclass(frozen=True)
class _Segment:
    """The mean sd along the designs x + t (v - x), t in [0, 1], in closed form.

    The precision is affine in the weights, P(t) = P0 + t (P1 - P0). With P0 = L L^T and
    L^-1 (P1 - P0) L^-T = U diag(lambda) U^T (simultaneous diagonalisation of a
    symmetric-definite pair, Golub & Van Loan 2013, sec. 8.7), P(t)^-1 = L^-T U
    diag(1 / (1 + t lambda)) U^T L^-1, so each contrast's variance is sum_i z_i^2 /
    (1 + t lambda_i) with z = U^T L^-1 c: one O(q^3) factorisation per Frank-Wolfe
    step, then O(q L) per point of the line search instead of an inverse.
    1 + t lambda > 0 on [0, 1], since P(t) is a convex combination of two precisions.
    """

    z2: np.ndarray  # [q, L]
    lam: np.ndarray  # [q]

    @classmethod
    def build(cls, lin: _Linearised, x: np.ndarray, vertex: np.ndarray, contrasts: np.ndarray) -> _Segment:
        p0 = lin.precision(x)
        chol = np.linalg.cholesky(p0)
        half = linalg.solve_triangular(chol, lin.precision(vertex) - p0, lower=True)  # L^-1 dP
        lam, u = np.linalg.eigh(linalg.solve_triangular(chol, half.T, lower=True))  # L^-1 dP L^-T, symmetric
        z = u.T @ linalg.solve_triangular(chol, lin.lifted(contrasts).T, lower=True)
        return cls(z**2, lam)

    def mean_sd(self, t: float) -> float:
        return float(np.sqrt((self.z2 / (1.0 + t * self.lam)[:, None]).sum(axis=0)).mean())


@dataclasses.dataclass(frozen=True)
class Design:
    """A (relaxed) design and the mean sd it reaches.

    Attributes:
      weights: runs per (candidate, pool point), real-valued [K, M].
      mean_sd: mean posterior sd of the contrasts it was evaluated for (by default, over
        candidates, of log L*(C*)).
      flops: FLOPs the weights spend, the fixed runs excluded.
    """

    weights: np.ndarray
    mean_sd: float
    flops: float


def evaluate(campaign: Campaign, weights: np.ndarray, contrasts: np.ndarray | None = None) -> Design:
    """The mean sd a given design reaches (for instance the full grid, all weights 1).

    contrasts: what the sd is of [L, K, p] (see pick_contrast); default every candidate's log L*(C*).
    """
    weights = np.asarray(weights, dtype=float)
    lin = _Linearised.build(campaign)
    sd, _ = lin.mean_sd(weights, contrasts)
    return Design(weights, sd, float(np.sum(weights * lin.cost)))


def _cheapest_vertex(grad: np.ndarray, cost: np.ndarray, budget: float, cap: float) -> np.ndarray:
    """The design spending the budget that minimises grad . w: a fractional knapsack, best rate first."""
    out, left = np.zeros_like(grad), budget
    for i in np.argsort(grad / cost):
        take = min(cap, left / cost[i])
        out[i], left = take, left - take * cost[i]
        if left <= 0.0:
            break
    return out


@one_blas_thread
def optimal_design(campaign: Campaign, flop_budget: float, *, max_seeds: float = 4.0, rel_gap: float = 1e-4,
                   max_iter: int = 5000, contrasts: np.ndarray | None = None) -> Design:
    """The design minimising the mean sd of log L*(C*) for `flop_budget` FLOPs beyond the fixed runs.

    Frank-Wolfe (conditional gradient) over the designs that spend the budget with at most
    max_seeds runs per point: the linear step is a fractional knapsack, the step size a line
    search. It stops when the Frank-Wolfe gap, grad . (w - s), is below rel_gap of the value:
    for a convex objective the gap bounds the distance to the optimum (Jaggi 2013), and
    here it is at least a first-order certificate. (SLSQP needed over 900 iterations on
    the benchmark's 200 weights and stopped early ones far from the optimum.)

    Args:
      campaign: true laws, pool, fixed runs and prior.
      flop_budget: FLOPs for the pool runs (> 0).
      max_seeds: cap on runs per (candidate, pool point).
      rel_gap: stopping tolerance on the gap, relative to the mean sd.
      max_iter: iteration cap.
      contrasts: minimise the mean sd of these instead [L, K, p] (pick_contrast: the decision's).

    Returns:
      The optimal relaxed Design (a lower bound for designs of whole runs under the same cap).

    Raises:
      ValueError: if the budget is not positive or exceeds what the cap allows.
    """
    k, m, _ = campaign.shape
    lin = _Linearised.build(campaign)
    cost = lin.cost.ravel()
    most = max_seeds * float(cost.sum())
    if not 0 < flop_budget <= most:
        raise ValueError(f"flop_budget must be in (0, {most:.3g}] (max_seeds runs everywhere), got {flop_budget:.3g}")
    contrasts = lin.targets() if contrasts is None else contrasts
    x = np.full(k * m, flop_budget / float(cost.sum()))  # spread evenly: feasible, and a neutral start
    for _ in range(max_iter):
        sd, grad = lin.mean_sd(x.reshape(k, m), contrasts)
        vertex = _cheapest_vertex(grad.ravel(), cost, flop_budget, max_seeds)
        if float(grad.ravel() @ (x - vertex)) <= rel_gap * sd:
            break
        segment = _Segment.build(lin, x.reshape(k, m), vertex.reshape(k, m), contrasts)
        step = optimize.minimize_scalar(segment.mean_sd, bounds=(0.0, 1.0), method="bounded",
                                        options=dict(xatol=1e-6)).x
        x = x + step * (vertex - x)
    weights = x.reshape(k, m)
    return Design(weights, lin.mean_sd(weights, contrasts)[0], float(np.sum(weights * lin.cost)))


def pick_contrast(campaign: Campaign) -> tuple[np.ndarray, float]:
    """The decision's contrast, log L*(C*) of the true best minus the runner-up's [1, K, p], and the true margin.

    Picking the best needs at least that its estimate beat the runner-up's.
    """
    contrasts, margins = _rival_contrasts(campaign)
    return contrasts[:1], float(margins[0])


def _rival_contrasts(campaign: Campaign) -> tuple[np.ndarray, np.ndarray]:
    """log L*(C*) of the true best minus each rival's, nearest rival first [K-1, K, p], and the true margins [K-1]."""
    g, grads = campaign.belief().target(campaign.target_flops)
    best, *rivals = np.argsort(g)
    contrasts = np.zeros((len(rivals), *grads.shape))
    for i, rival in enumerate(rivals):
        contrasts[i, best], contrasts[i, rival] = grads[best], -grads[rival]
    return contrasts, g[rivals] - g[best]


def pick_probability(campaign: Campaign, weights: np.ndarray) -> float:
    """First-order chance that a design's estimates put the true best ahead of the runner-up.

    Phi(margin / sd(g_best - g_second)) for a Gaussian estimate centred at the truth with the
    posterior's sd; it bounds the chance of picking the true best among all candidates.
    """
    contrast, margin = pick_contrast(campaign)
    return float(special.ndtr(margin / evaluate(campaign, weights, contrast).mean_sd))


def pick_bound(campaign: Campaign, flop_budget: float, *, max_seeds: float = 4.0, rel_gap: float = 1e-4) -> float:
    """The highest first-order chance of picking the true best that any design of `flop_budget` FLOPs reaches.

    The best design for the decision knows which two candidates to tell apart and spends the
    budget on the sd of their difference alone; pick_probability of that design. As with
    optimal_design, no sequential policy beats it under the linear-Gaussian approximation
    (Chaloner & Verdinelli 1995).
    """
    contrast, margin = pick_contrast(campaign)
    best = optimal_design(campaign, flop_budget, max_seeds=max_seeds, rel_gap=rel_gap, contrasts=contrast)
    return float(special.ndtr(margin / best.mean_sd))


def decision_contrasts(campaign: Campaign) -> np.ndarray:
    """The true best minus each rival, each over its true margin [K-1, K, p].

    The sd of contrast j is sd(g_best - g_j) / margin_j, the reciprocal of the first-order z
    of that pair, so their mean is small only when every rival, the close ones most, is told
    apart from the best: a smooth surrogate of the chance of a wrong pick, which needs all of them.
    """
    contrasts, margins = _rival_contrasts(campaign)
    return contrasts / margins[:, None, None]


def decision_design(campaign: Campaign, flop_budget: float, *, max_seeds: float = 4.0,
                    rel_gap: float = 1e-4) -> Design:
    """The design for the decision of an experimenter who knows the true laws (relaxed run counts).

    Unlike pick_bound's, it tells the best from every rival, not only the runner-up, so its
    runs can be made and fitted like any design's (whole_runs): what it then picks is what
    knowing where to look is worth, with the same fit and the same noise as every design.
    """
    return optimal_design(campaign, flop_budget, max_seeds=max_seeds, rel_gap=rel_gap,
                          contrasts=decision_contrasts(campaign))


def whole_runs(weights: np.ndarray, cost: np.ndarray, flop_budget: float) -> np.ndarray:
    """A relaxed design rounded to whole runs within the budget [K, M].

    Every count rounded down, then runs added where the fractions left are largest, while
    the budget affords them; no count exceeds its relaxed weight rounded up, so a cap the
    relaxed design kept to holds.
    """
    weights = np.asarray(weights, dtype=float)
    counts = np.floor(weights + 1e-9)
    left = flop_budget - float(np.sum(counts * cost))
    fraction = weights - counts
    for i in np.argsort(-fraction, axis=None):
        idx = np.unravel_index(i, weights.shape)
        if fraction[idx] <= 1e-9:
            break
        if cost[idx] <= left:
            counts[idx] += 1
            left -= float(cost[idx])
    return counts
