"""The loss surfaces L(N, D; theta), their Jacobians, and the parameter transforms the fits use.

Every law is evaluated on log loss, f = log L, because that is the scale on which
the fits' residuals live. Parameters come in two coordinate systems:

* natural: the paper's parameters, with scale constants on a log scale, e.g.
  Chinchilla's (e, a, b, alpha, beta) = (log E, log A, log B, alpha, beta);
* internal: the coordinates the optimiser sees. `Reparam` centres log A and
  log B at the geometric mean of the data's N and D, so that the level and the
  exponent of each power law are nearly uncorrelated (a' = a - alpha log N0 is
  the log of the N-term at the centre of the data).

References:
  Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla), eq. 2 and sec. 3.3.
  Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eq. 1.5.
  Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", eqs. 5-6 and app. A.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

Params = np.ndarray  # natural parameters of one law: shape [p], or [..., p] for many draws.
Bounds = tuple[tuple[float | None, float | None], ...]

LOG6 = math.log(6.0)
MIN_EXPONENT = 1e-3  # exponents at 0 make the law degenerate (and log alpha undefined)


@dataclasses.dataclass(frozen=True)
class Observation:
    """One finished proxy run: the N, D and final loss that a law is fitted to.

    Attributes:
      n: parameter count N, as the law counts it (see proxy_models/counting.py).
      d: training tokens D.
      loss: final loss in nats per token.
      unique: unique tokens in the data the run drew from (the data-constrained
        law's U_D); None means every token was fresh.
      flops_per_token: training FLOPs per token; None means the usual 6N.
    """

    n: float
    d: float
    loss: float
    unique: float | None = None
    flops_per_token: float | None = None

    def __post_init__(self) -> None:
        for name in ("n", "d", "loss", "unique", "flops_per_token"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"Observation.{name} must be finite and > 0, got {value!r}")

    @property
    def flops(self) -> float:
        """Training FLOPs of the run: flops_per_token * D (6ND by default)."""
        return (self.flops_per_token or 6.0 * self.n) * self.d


Run = Observation  # the search loop's word for the same thing


@dataclasses.dataclass(frozen=True)
class Features:
    """The covariates of n runs, on a log scale (all arrays have shape [n]).

    Attributes:
      log_n: log N.
      log_d: log D.
      log_u: log of the unique tokens seen, min(U, D); equals log_d without repetition.
    """

    log_n: np.ndarray
    log_d: np.ndarray
    log_u: np.ndarray

    @classmethod
    def from_arrays(cls, n, d, unique=None) -> Features:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        u = d if unique is None else np.minimum(np.asarray(unique, dtype=float), d)
        return cls(np.log(n), np.log(d), np.log(u))

    @classmethod
    def from_observations(cls, runs: Sequence[Observation]) -> Features:
        n = [r.n for r in runs]
        d = [r.d for r in runs]
        u = [r.unique if r.unique is not None else r.d for r in runs]
        return cls.from_arrays(n, d, u)

    def __len__(self) -> int:
        return int(np.size(self.log_n))

    def take(self, index) -> Features:
        return Features(self.log_n[index], self.log_d[index], self.log_u[index])


@dataclasses.dataclass(frozen=True)
class Reparam:
    """Affine map between internal and natural coordinates: natural = M @ internal + c.

    Attributes:
      matrix: M, shape [p, p].
      offset: c, shape [p].
    """

    matrix: np.ndarray
    offset: np.ndarray

    def to_natural(self, internal: np.ndarray) -> np.ndarray:
        return internal @ self.matrix.T + self.offset

    def to_internal(self, natural: np.ndarray) -> np.ndarray:
        return (natural - self.offset) @ np.linalg.inv(self.matrix).T

    def jacobian(self, jac_natural: np.ndarray) -> np.ndarray:
        """Chain rule: d f / d internal = (d f / d natural) @ M."""
        return jac_natural @ self.matrix

    def covariance(self, cov_internal: np.ndarray) -> np.ndarray:
        return self.matrix @ cov_internal @ self.matrix.T


class ScalingLaw(Protocol):
    """A law f(theta, x) = log L(N, D; theta) with its Jacobian and fitting aids."""

    name: str
    param_names: tuple[str, ...]

    def log_loss(self, theta: Params, x: Features) -> np.ndarray:
        """log L for parameters [..., p] broadcast against runs [n] -> [..., n]."""

    def log_loss_jac(self, theta: Params, x: Features) -> tuple[np.ndarray, np.ndarray]:
        """log L [n] and its Jacobian in natural coordinates [n, p]; theta is [p] or [n, p]."""

    def start_grid(self) -> np.ndarray:
        """Starting points in natural coordinates, [m, p]."""

    def bounds(self) -> Bounds:
        """Box bounds on the internal coordinates (None: unbounded).

        Only coordinates the reparametrisation leaves alone may be bounded, so a bound reads
        the same in natural coordinates (Fit.at_bound relies on it).
        """

    def reparam(self, log_n0: float, log_d0: float) -> Reparam:
        """Internal coordinates centred at (log N0, log D0)."""

    def describe(self, theta: Params) -> dict[str, float]:
        """The paper's parameters (E, A, B, alpha, beta, ...) as plain floats."""

    def log_optimal_n(self, theta: Params, log_flops: np.ndarray) -> np.ndarray | None:
        """Closed-form compute-optimal log N for C = 6ND, or None if there is none."""


def _cols(theta: np.ndarray) -> list[np.ndarray]:
    """Split parameters [..., p] into p arrays of shape [...]."""
    theta = np.asarray(theta, dtype=float)
    return [theta[..., j] for j in range(theta.shape[-1])]


def _lse3(u0, u1, u2) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """log(e^u0 + e^u1 + e^u2) and the softmax weights, without overflow."""
    m = np.maximum(np.maximum(u0, u1), u2)
    e0, e1, e2 = np.exp(u0 - m), np.exp(u1 - m), np.exp(u2 - m)
    s = e0 + e1 + e2
    return m + np.log(s), (e0 / s, e1 / s, e2 / s)


def _centring(p: int, pairs: Sequence[tuple[int, int, float]]) -> Reparam:
    """M = I except natural[level] = internal[level] + shift * internal[exponent]."""
    matrix = np.eye(p)
    for level, exponent, shift in pairs:
        matrix[level, exponent] = shift
    return Reparam(matrix, np.zeros(p))


def _chinchilla_starts() -> np.ndarray:
    """Hoffmann et al. 2022 (app. D.2) initialisation grid, 4500 points."""
    alpha = beta = np.arange(0.0, 2.01, 0.5)
    e = np.arange(-1.0, 1.01, 0.5)
    a = b = np.arange(0.0, 25.1, 5.0)
    grid = np.meshgrid(e, a, b, alpha, beta, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


@dataclasses.dataclass(frozen=True)
class Chinchilla:
    """L(N, D) = E + A / N^alpha + B / D^beta, natural theta = (log E, log A, log B, alpha, beta).

    References: Hoffmann et al. 2022, eq. 2; the log-sum-exp form is their sec. D.2.
    """

    name: str = "chinchilla"
    param_names: tuple[str, ...] = ("e", "a", "b", "alpha", "beta")

    def log_loss(self, theta, x):
        e, a, b, alpha, beta = _cols(theta)
        f, _ = _lse3(e[..., None], (a[..., None] - alpha[..., None] * x.log_n),
                     (b[..., None] - beta[..., None] * x.log_d))
        return f

    def log_loss_jac(self, theta, x):
        e, a, b, alpha, beta = np.broadcast_arrays(*(np.asarray(theta, float).T), x.log_n)[:5]
        f, (w0, w1, w2) = _lse3(e, a - alpha * x.log_n, b - beta * x.log_d)
        jac = np.stack([w0, w1, w2, -w1 * x.log_n, -w2 * x.log_d], axis=-1)
        return f, jac

    def start_grid(self):
        return _chinchilla_starts()

    def bounds(self):
        return ((-20.0, 5.0), (None, None), (None, None), (MIN_EXPONENT, 4.0), (MIN_EXPONENT, 4.0))

    def reparam(self, log_n0, log_d0):
        return _centring(5, [(1, 3, log_n0), (2, 4, log_d0)])

    def describe(self, theta):
        e, a, b, alpha, beta = (float(v) for v in theta)
        return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}

    def log_optimal_n(self, theta, log_flops):
        """log N_opt = log G + a log(C/6), G = (alpha A / (beta B))^(1/(alpha+beta)), a = beta/(alpha+beta).

        References: Hoffmann et al. 2022, eq. 4.
        """
        _, a, b, alpha, beta = _cols(theta)
        log_g = (np.log(alpha) + a - np.log(beta) - b) / (alpha + beta)
        return log_g + beta / (alpha + beta) * (np.asarray(log_flops) - LOG6)


@dataclasses.dataclass(frozen=True)
class Kaplan:
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, theta = (log N_c, log D_c, alpha_N, alpha_D).

    References: Kaplan et al. 2020, eq. 1.5 (published fit: alpha_N 0.076, alpha_D 0.095,
    N_c 8.8e13, D_c 5.4e13). The form has no irreducible loss.
    """

    name: str = "kaplan"
    param_names: tuple[str, ...] = ("log_nc", "log_dc", "alpha_n", "alpha_d")

    def _terms(self, lnc, ldc, an, ad, x):
        u1 = an / ad * (lnc - x.log_n)
        u2 = ldc - x.log_d
        m = np.maximum(u1, u2)
        e1, e2 = np.exp(u1 - m), np.exp(u2 - m)
        s = m + np.log(e1 + e2)
        return u1, s, e1 / (e1 + e2), e2 / (e1 + e2)

    def log_loss(self, theta, x):
        lnc, ldc, an, ad = (c[..., None] for c in _cols(theta))
        _, s, _, _ = self._terms(lnc, ldc, an, ad, x)
        return ad * s

    def log_loss_jac(self, theta, x):
        lnc, ldc, an, ad = np.broadcast_arrays(*(np.asarray(theta, float).T), x.log_n)[:4]
        u1, s, w1, w2 = self._terms(lnc, ldc, an, ad, x)
        jac = np.stack([an * w1, ad * w2, w1 * (lnc - x.log_n), s - w1 * u1], axis=-1)
        return ad * s, jac

    def start_grid(self):
        exps = np.array([0.05, 0.1, 0.2, 0.4])
        levels = np.log([1e10, 1e13, 1e16])
        grid = np.meshgrid(levels, levels, exps, exps, indexing="ij")
        return np.stack([g.ravel() for g in grid], axis=1)

    def bounds(self):
        return ((None, None), (None, None), (1e-3, 2.0), (1e-3, 2.0))

    def reparam(self, log_n0, log_d0):
        return Reparam(np.eye(4), np.array([log_n0, log_d0, 0.0, 0.0]))

    def describe(self, theta):
        lnc, ldc, an, ad = (float(v) for v in theta)
        return {"N_c": math.exp(lnc), "D_c": math.exp(ldc), "alpha_N": an, "alpha_D": ad}

    def log_optimal_n(self, theta, log_flops):
        """Minimise (N_c/N)^p + 6 D_c N / C with p = alpha_N/alpha_D: N^(p+1) = p N_c^p C / (6 D_c)."""
        lnc, ldc, an, ad = _cols(theta)
        p = an / ad
        return (np.log(p) + p * lnc + np.asarray(log_flops) - LOG6 - ldc) / (p + 1.0)


MUENNIGHOFF_R_D_STAR = 15.387756
MUENNIGHOFF_R_N_STAR = 5.309743


@dataclasses.dataclass(frozen=True)
class DataConstrained:
    """Chinchilla form on effective data D' and effective parameters N' (repeated data).

    D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)), R_D = D / U_D - 1;
    N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)), U_N = min(N, N_opt(U_D)), R_N = N / U_N - 1,
    where N_opt(U_D) = G (G U_D)^(beta/alpha) is the Chinchilla-optimal size for U_D tokens.
    Natural theta = (log E, log A, log B, alpha, beta, log R_D*, log R_N*).

    References: Muennighoff et al. 2023, eqs. 5-6 and app. A (R_D* 15.387756, R_N* 5.309743).
    """

    name: str = "data-constrained"
    param_names: tuple[str, ...] = ("e", "a", "b", "alpha", "beta", "log_rd_star", "log_rn_star")

    def _effective(self, theta_cols, x):
        """log D', log N' and the pieces the Jacobian needs."""
        e, a, b, alpha, beta, lrd, lrn = theta_cols
        rd_star, rn_star = np.exp(lrd), np.exp(lrn)
        r_d = np.maximum(np.exp(np.minimum(x.log_d - x.log_u, 300.0)) - 1.0, 0.0)
        q_d = np.exp(-r_d / rd_star)
        h_d = 1.0 + rd_star * (1.0 - q_d)
        log_dp = x.log_u + np.log(h_d)
        log_g = (np.log(alpha) + a - np.log(beta) - b) / (alpha + beta)
        log_nu = beta / alpha * x.log_u + (1.0 + beta / alpha) * log_g
        capped = x.log_n > log_nu
        log_un = np.where(capped, log_nu, x.log_n)
        r_n = np.exp(np.minimum(x.log_n - log_un, 300.0)) - 1.0  # extreme starts: keep finite
        q_n = np.exp(-r_n / rn_star)
        h_n = 1.0 + rn_star * (1.0 - q_n)
        log_np = log_un + np.log(h_n)
        parts = dict(rd_star=rd_star, rn_star=rn_star, r_d=r_d, q_d=q_d, h_d=h_d, log_g=log_g,
                     capped=capped, r_n=r_n, q_n=q_n, h_n=h_n)
        return log_np, log_dp, parts

    def log_loss(self, theta, x):
        cols = [c[..., None] for c in _cols(theta)]
        log_np, log_dp, _ = self._effective(cols, x)
        e, a, b, alpha, beta = cols[:5]
        f, _ = _lse3(e, a - alpha * log_np, b - beta * log_dp)
        return f

    def log_loss_jac(self, theta, x):
        cols = np.broadcast_arrays(*(np.asarray(theta, float).T), x.log_n)[:7]
        e, a, b, alpha, beta, lrd, lrn = cols
        log_np, log_dp, p = self._effective(cols, x)
        f, (w0, w1, w2) = _lse3(e, a - alpha * log_np, b - beta * log_dp)
        # d log D' / d log R_D*: R_D* dh_d/dR_D* / h_d, with dh/dR* = 1 - q - (R_D/R*) q.
        s = p["rd_star"]
        dlogdp_lrd = s * (1.0 - p["q_d"] - p["r_d"] / s * p["q_d"]) / p["h_d"]
        s = p["rn_star"]
        dlognp_lrn = s * (1.0 - p["q_n"] - p["r_n"] / s * p["q_n"]) / p["h_n"]
        # When U_N is capped at N_opt(U_D), log N' depends on (a, b, alpha, beta) through log N_u.
        dlognp_lognu = np.where(p["capped"], 1.0 - p["q_n"] * (p["r_n"] + 1.0) / p["h_n"], 0.0)
        ab = alpha + beta
        dlg = [1.0 / ab, -1.0 / ab, 1.0 / (alpha * ab) - p["log_g"] / ab,
               -1.0 / (beta * ab) - p["log_g"] / ab]
        k = 1.0 + beta / alpha
        dnu = [k * dlg[0], k * dlg[1],
               -beta / alpha**2 * (x.log_u + p["log_g"]) + k * dlg[2],
               (x.log_u + p["log_g"]) / alpha + k * dlg[3]]
        dnp = [dlognp_lognu * d for d in dnu]  # d log N' / d (a, b, alpha, beta)
        jac = np.stack([
            w0,
            w1 * (1.0 - alpha * dnp[0]),
            w2 - w1 * alpha * dnp[1],
            -w1 * (log_np + alpha * dnp[2]),
            -w1 * alpha * dnp[3] - w2 * log_dp,
            -w2 * beta * dlogdp_lrd,
            -w1 * alpha * dlognp_lrn,
        ], axis=-1)
        return f, jac

    def start_grid(self):
        base = _chinchilla_starts()
        extra = np.tile([math.log(MUENNIGHOFF_R_D_STAR), math.log(MUENNIGHOFF_R_N_STAR)], (len(base), 1))
        return np.concatenate([base, extra], axis=1)

    def bounds(self):
        return Chinchilla().bounds() + ((math.log(0.1), math.log(1e4)), (math.log(0.1), math.log(1e4)))

    def reparam(self, log_n0, log_d0):
        return _centring(7, [(1, 3, log_n0), (2, 4, log_d0)])

    def describe(self, theta):
        out = Chinchilla().describe(theta[:5])
        out.update(R_D_star=math.exp(float(theta[5])), R_N_star=math.exp(float(theta[6])))
        return out

    def log_optimal_n(self, theta, log_flops):
        return None  # needs the unique-token budget; see allocate.optimal_allocation


LAWS: dict[str, ScalingLaw] = {law.name: law for law in (Chinchilla(), Kaplan(), DataConstrained())}


def get_law(name: str) -> ScalingLaw:
    """The law registered under `name` ('chinchilla', 'kaplan' or 'data-constrained')."""
    try:
        return LAWS[name]
    except KeyError:
        raise ValueError(f"unknown law {name!r}; choose one of {sorted(LAWS)}") from None


def chinchilla_params(E: float, A: float, B: float, alpha: float, beta: float) -> Params:
    """Natural Chinchilla parameters from the published (E, A, B, alpha, beta)."""
    return np.array([math.log(E), math.log(A), math.log(B), alpha, beta])


HOFFMANN_2022 = chinchilla_params(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
