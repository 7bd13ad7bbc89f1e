"""Compute-optimal allocation of N and D for a FLOP budget, closed form or numeric, and inference-aware.

All functions are vectorised over parameter draws: theta has shape [..., p] and
the results have shape [...], so the same code serves point estimates and the
posterior samples that rank candidates.

References:
  Hoffmann et al. 2022, eq. 4: N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b,
    G = (alpha A / (beta B))^(1/(alpha+beta)), a = beta/(alpha+beta), b = alpha/(alpha+beta).
  Kaplan et al. 2020, sec. 6: compute-efficient frontier of eq. 1.5.
  Sardana et al. 2024, "Beyond Chinchilla-Optimal: Accounting for Inference in Language
    Model Scaling Laws", eq. 2: minimise 6 N D_train + 2 N D_inference at fixed loss.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from active_learning.scaling_law import Features, Observation, Params, ScalingLaw

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
SEARCH_HALF_WIDTH = 12.0  # log N searched within e^+-12 of sqrt(C/6): tokens/param from 1e-10 to 1e10


@dataclasses.dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs per token as an affine function of N: slope * N + intercept.

    Attributes:
      slope: FLOPs per token per parameter (6 for the usual forward + backward count).
      intercept: FLOPs per token that do not scale with N (e.g. attention over the context).
    """

    slope: float = 6.0
    intercept: float = 0.0

    def __post_init__(self) -> None:
        if not (self.slope > 0 and self.intercept >= 0):
            raise ValueError(f"FlopsModel needs slope > 0 and intercept >= 0, got {self}")

    @property
    def is_standard(self) -> bool:
        return self.slope == 6.0 and self.intercept == 0.0

    def per_token(self, n):
        return self.slope * np.asarray(n) + self.intercept

    @classmethod
    def from_observations(cls, runs: Sequence[Observation]) -> FlopsModel:
        """Least-squares slope and intercept from runs that report flops_per_token (6N otherwise)."""
        pts = [(r.n, r.flops_per_token) for r in runs if r.flops_per_token is not None]
        if not pts:
            return cls()
        n, f = np.array(pts, dtype=float).T
        if np.unique(n).size < 2:
            return cls(slope=float(np.mean(f / n)))
        slope, intercept = np.polyfit(n, f, 1)
        if slope <= 0:
            return cls(slope=float(np.mean(f / n)))
        if intercept < 0:
            return cls(slope=float(np.sum(f * n) / np.sum(n * n)))
        return cls(float(slope), float(intercept))


def closed_form(E: float, A: float, B: float, alpha: float, beta: float, flops: float) -> tuple[float, float]:
    """Chinchilla's compute-optimal (N_opt, D_opt) for C = 6ND (Hoffmann et al. 2022, eq. 4)."""
    del E  # the irreducible loss does not move the optimum
    g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    return g * (flops / 6.0) ** a, (flops / 6.0) ** b / g


def _point(log_n, log_d, log_unique) -> Features:
    """Features for element-wise evaluation: one (N, D) per parameter draw."""
    log_n, log_d = np.asarray(log_n, float)[..., None], np.asarray(log_d, float)[..., None]
    log_u = log_d if log_unique is None else np.minimum(np.asarray(log_unique, float)[..., None], log_d)
    return Features(log_n, log_d, log_u)


def elementwise_log_loss(law: ScalingLaw, theta: Params, log_n, log_d, log_unique=None) -> np.ndarray:
    """log L for draws theta [..., p] each at its own (N, D) [...] -> [...]."""
    return law.log_loss(theta, _point(log_n, log_d, log_unique))[..., 0]


def elementwise_log_loss_jac(law: ScalingLaw, theta: Params, log_n, log_d, log_unique=None):
    """log L [n] and its Jacobian [n, p] for theta [p] or [n, p], row i at its own (N, D) [n]."""
    x = _point(log_n, log_d, log_unique)
    return law.log_loss_jac(theta, Features(x.log_n[..., 0], x.log_d[..., 0], x.log_u[..., 0]))


def _log_tokens(log_n, log_flops, flops_model: FlopsModel, inference_tokens: float):
    """log D that spends C = fpt(N) D + 2 N D_inf; -inf where inference alone exceeds C."""
    n = np.exp(log_n)
    train = np.exp(log_flops) - 2.0 * n * inference_tokens
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(train > 0, np.log(np.maximum(train, 1e-300)) - np.log(flops_model.per_token(n)), -np.inf)


def _golden_min(objective, lo, hi, iterations: int = 90):
    """Element-wise golden-section minimisation on [lo, hi] (unimodal objectives)."""
    a, b = np.array(lo, dtype=float), np.array(hi, dtype=float)
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = objective(c), objective(d)
    for _ in range(iterations):
        left = fc < fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        c_new = b - GOLDEN * (b - a)
        d_new = a + GOLDEN * (b - a)
        c, d = np.where(left, c_new, d), np.where(left, c, d_new)
        # Only one new evaluation is needed per side; evaluating both keeps the code vectorised.
        fc, fd = objective(c), objective(d)
    return 0.5 * (a + b)


def log_optimal_allocation(
    law: ScalingLaw,
    theta: Params,
    flops: float,
    *,
    flops_model: FlopsModel = FlopsModel(),
    inference_tokens: float = 0.0,
    unique_tokens: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """log N and log D minimising L(N, D) subject to fpt(N) D + 2 N D_inf = C.

    Uses the law's closed form when FLOPs are 6ND and there is no inference term,
    and golden-section search over log N otherwise (the loss along the budget line
    is unimodal in log N for the laws here).

    Args:
      law: the scaling law.
      theta: natural parameters, [..., p].
      flops: the compute budget C.
      flops_model: training FLOPs per token as a function of N.
      inference_tokens: tokens the model will serve (Sardana et al. 2024); 0 ignores inference.
      unique_tokens: the unique-data budget for the data-constrained law.

    Returns:
      (log N_opt, log D_opt), each of shape [...].
    """
    if not flops > 0:
        raise ValueError(f"flops must be > 0, got {flops}")
    theta = np.asarray(theta, dtype=float)
    log_c = math.log(flops)
    if flops_model.is_standard and inference_tokens == 0:
        log_n = law.log_optimal_n(theta, log_c)
        if log_n is not None:
            return log_n, log_c - math.log(6.0) - log_n
    log_u = None if unique_tokens is None else math.log(unique_tokens)

    def objective(log_n):
        log_d = _log_tokens(log_n, log_c, flops_model, inference_tokens)
        return np.where(np.isfinite(log_d),
                        elementwise_log_loss(law, theta, log_n, np.where(np.isfinite(log_d), log_d, 0.0), log_u),
                        np.inf)

    centre = 0.5 * (log_c - math.log(6.0))
    hi = centre + SEARCH_HALF_WIDTH
    if inference_tokens > 0:
        hi = min(hi, log_c - math.log(2.0 * inference_tokens) - 1e-9)
    shape = theta.shape[:-1]
    log_n = _golden_min(objective, np.full(shape, centre - SEARCH_HALF_WIDTH), np.full(shape, hi))
    return log_n, _log_tokens(log_n, log_c, flops_model, inference_tokens)


def optimal_log_loss(law: ScalingLaw, theta: Params, flops: float, **kwargs) -> np.ndarray:
    """log L at the compute-optimal allocation for budget C (same keywords as log_optimal_allocation)."""
    log_n, log_d = log_optimal_allocation(law, theta, flops, **kwargs)
    unique = kwargs.get("unique_tokens")
    return elementwise_log_loss(law, theta, log_n, log_d, None if unique is None else math.log(unique))


def tokens_per_parameter(law: ScalingLaw, theta: Params, flops: float, **kwargs) -> np.ndarray:
    """D_opt / N_opt at budget C."""
    log_n, log_d = log_optimal_allocation(law, theta, flops, **kwargs)
    return np.exp(log_d - log_n)


@dataclasses.dataclass(frozen=True)
class InferenceAwareAllocation:
    """Sardana et al. 2024 optimum for a target loss.

    Attributes:
      n: parameters.
      d: training tokens.
      training_flops: fpt(N) * D.
      inference_flops: 2 * N * inference tokens.
    """

    n: float
    d: float
    training_flops: float
    inference_flops: float

    @property
    def total_flops(self) -> float:
        return self.training_flops + self.inference_flops


def _log_tokens_for_loss(law, theta, log_n, log_target, log_unique, iterations: int = 100):
    """Bisection for log D with log L(N, D) = target (L falls with D); nan where unreachable."""
    lo, hi = np.full_like(log_n, 0.0), np.full_like(log_n, 120.0)
    reachable = elementwise_log_loss(law, theta, log_n, hi, log_unique) < log_target
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = elementwise_log_loss(law, theta, log_n, mid, log_unique) > log_target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return np.where(reachable, hi, np.nan)


def inference_aware(
    law: ScalingLaw,
    theta: Params,
    target_loss: float,
    inference_tokens: float,
    *,
    flops_model: FlopsModel = FlopsModel(),
    unique_tokens: float | None = None,
) -> InferenceAwareAllocation:
    """The (N, D) reaching `target_loss` with the least training plus inference FLOPs.

    References: Sardana et al. 2024, eq. 2 (their 6N D_tr + 2N D_inf, here fpt(N) D_tr + 2N D_inf).

    Raises:
      ValueError: if no model of any size reaches target_loss.
    """
    theta = np.asarray(theta, dtype=float)
    log_target = math.log(target_loss)
    log_u = None if unique_tokens is None else math.log(unique_tokens)

    def total(log_n):
        log_d = _log_tokens_for_loss(law, theta, log_n, log_target, log_u)
        n = np.exp(log_n)
        flops = flops_model.per_token(n) * np.exp(log_d) + 2.0 * n * inference_tokens
        return np.where(np.isfinite(flops), np.log(np.where(np.isfinite(flops), flops, 1.0)), np.inf)

    grid = np.linspace(5.0, 40.0, 141)
    values = np.array([float(total(np.array(u))) for u in grid])
    if not np.isfinite(values).any():
        raise ValueError(f"target loss {target_loss} is below what the law can reach at any size")
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    log_n = float(_golden_min(total, np.array(lo), np.array(hi)))
    log_d = float(_log_tokens_for_loss(law, theta, np.array(log_n), log_target, log_u))
    n, d = math.exp(log_n), math.exp(log_d)
    return InferenceAwareAllocation(n, d, float(flops_model.per_token(n)) * d, 2.0 * n * inference_tokens)
