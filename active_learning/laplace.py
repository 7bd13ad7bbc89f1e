"""The Laplace approximation to the pooled model's marginal likelihood (hierarchical.py).

For given mu, the departures delta_hat(mu) are found by Newton's method (one small block
per candidate), and mu takes Newton steps on Phi(mu, delta_hat(mu)) + 0.5 sum_k log det D_k,
where Phi is the negative log joint density and D_k the Hessian of candidate k's
departures. (Maximising the joint density over mu and delta instead is biased when the
departures are poorly determined.) The Hessian of (mu, delta) is arrow-shaped and is
solved through its Schur complement (arrow.py), so the cost grows linearly with the
number of candidates. The posterior is Gaussian at the mode, with the M-estimator's
dispersion as the noise variance, widened for the noise variance's own uncertainty and,
to first order, the hyperparameters' (Kass and Steffey 1989).

References:
  Kristensen et al. 2016, "TMB: Automatic differentiation and Laplace approximation" (the
    Laplace marginal likelihood of random-effects models, which this mirrors).
  Kass and Steffey 1989, "Approximate Bayesian inference in conditionally independent
    hierarchical models".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from active_learning.arrow import Arrow
from active_learning.hierarchical import Data, Model, Prior, State, coupling_prior
from active_learning.noise import NoiseModel, StudentT, dispersion


def _blocks(jac: np.ndarray, weight: np.ndarray, data: Data, departure_map: np.ndarray) -> Arrow:
    """J^T W J of the (mu, delta) parametrisation, without priors (departure_map: S [p, m])."""
    outer = jac[:, :, None] * jac[:, None, :] * weight[:, None, None]  # [n, p, p]
    per_candidate = np.add.reduceat(outer, data.starts, axis=0)  # [K, p, p]
    return Arrow(outer.sum(axis=0), per_candidate @ departure_map,
                 departure_map.T @ per_candidate @ departure_map)


def _with_prior(arrow: Arrow, prior: Prior, tau: np.ndarray) -> Arrow:
    d = arrow.d + np.diag(1.0 / tau**2)[None]
    return Arrow(arrow.g + np.diag(prior.precision), arrow.c, d)


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


def _departure_blocks(jac: np.ndarray, weight: np.ndarray, model: Model, tau: np.ndarray) -> np.ndarray:
    """Each candidate's departure Hessian D_k = sum_i w_i j_i j_i^T + diag(1/tau^2) [K, m, m]."""
    j = jac @ model.departure_map
    blocks = np.add.reduceat(j[:, :, None] * j[:, None, :] * weight[:, None, None], model.data.starts, axis=0)
    return blocks + np.diag(1.0 / tau**2)[None]


def solve_departures(model: Model, state: State, max_steps: int = 20, tol: float = 1e-8) -> None:
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


def _half_log_det(model: Model, theta: np.ndarray, state: State) -> np.ndarray:
    """0.5 log det of each candidate's departure precision J_k^T J_k / sigma^2 + diag(1/tau^2) [K]."""
    rows = model.reparam.to_natural(theta)[model.data.index]
    _, jac = model.law.log_loss_jac(rows, model.data.x)
    d = _departure_blocks(model.reparam.jacobian(jac), np.full(len(rows), 1.0 / state.noise_var), model, state.tau)
    return 0.5 * np.linalg.slogdet(d)[1]


def _occam(model: Model, state: State, step: float = 1e-6) -> tuple[float, np.ndarray]:
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


def marginal(model: Model, state: State) -> float:
    """Laplace approximation to -log p(y | mu, s, tau) (up to constants), at the current delta_hat.

    The departures' prior normalisation K sum_j log tau_j is part of it: without it, fits with
    different tau (other starts, other frames) would not compare, the wider prior looking better.
    """
    if state.delta.shape[1] == 0:
        return model.objective(state)
    occam = float(_half_log_det(model, model.thetas(state), state).sum())
    return model.objective(state) + occam + _normaliser(model, state)


def _normaliser(model: Model, state: State) -> float:
    """K sum_j log tau_j: the departures' prior normalisation (constant while tau is)."""
    return len(model.data.candidates) * float(np.sum(np.log(state.tau)))


def evidence(model: Model, state: State) -> float:
    """-log of what the hyperparameters' updates maximise: p(y | s, tau, g) times the hyperpriors.

    The shared mu is integrated out too (its weak prior times the Laplace volume 0.5 log det of
    the Schur complement), as the updates do: their departure variances include mu's share
    (posterior's delta_cov). The hyperprior terms are those the updates of tau (scaled inverse
    chi-squared of weight w: the update's gamma + w) and of the couplings (coupling_prior) imply.
    """
    shared_cov = posterior(model, state, state.noise_var).shared_cov
    value = marginal(model, state) - 0.5 * float(np.linalg.slogdet(shared_cov)[1])
    if state.delta.shape[1]:
        w, tau = model.prior.tau_weight, state.tau
        value += float(np.sum(w * np.log(tau) + 0.5 * w * model.prior.tau0**2 / tau**2))
    for (_, _, g_natural), g in zip(model.pairs, model.coupling):
        g0, s0 = coupling_prior(g_natural)
        value += 0.5 * ((g - g0) / s0) ** 2
    return value


def marginal_step(model: Model, state: State) -> float:
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
    m0, slope, t = model.objective(state, r) + occam + _normaliser(model, state), float(g_mu @ d_mu), 1.0
    d_delta = np.einsum("kmp,p->km", b, d_mu)
    while t > 1e-8:
        trial = dataclasses.replace(state, mu=state.mu - t * d_mu, delta=state.delta + t * d_delta)
        solve_departures(model, trial, max_steps=5)
        if marginal(model, trial) <= m0 - 1e-4 * t * slope:
            change = float(np.max(np.abs(np.concatenate([trial.mu - state.mu, (trial.delta - state.delta).ravel()]))))
            state.mu, state.delta = trial.mu, trial.delta
            return change
        t *= 0.5
    return 0.0


@dataclasses.dataclass(frozen=True)
class Posterior:
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


def posterior(model: Model, state: State, sigma2: float, passes: int = 1) -> Posterior:
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
        arrow = _with_prior(Arrow(base.g / sigma2, base.c / sigma2, base.d / sigma2), model.prior, state.tau)
        s_inv, b, d_inv = arrow.parts()
        delta_cov = np.einsum("kmp,pq,knq->kmn", b, s_inv, b) + d_inv
        delta_var = np.diagonal(delta_cov, axis1=1, axis2=2)
        dof = max(n - p - float(np.sum(1.0 - delta_var / state.tau**2)), 0.0)
        est = dispersion(model.noise, r, state.log_s, dof=max(dof, 1.0)) if dof > 0 else 0.0
        used = sigma2
        sigma2 = (dof * est + nu0 * sigma0**2) / max(dof + nu0, 1e-12)
    mixing = np.eye(p)[None] - model.departure_map[None] @ b
    own = model.departure_map[None] @ d_inv @ model.departure_map.T[None]
    return Posterior(s_inv, mixing, own, delta_var.copy(), delta_cov, used, dof, sigma2)


def t_inflate(model: Model, state: State, post: Posterior) -> Posterior:
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
    wide = posterior(model, state, post.noise_var * factor)
    return dataclasses.replace(post, shared_cov=wide.shared_cov, mixing=wide.mixing, own_cov=wide.own_cov)


def hyper_sensitivity(model: Model, state: State, post: Posterior, step: float = 1e-4) -> np.ndarray:
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
        info = float(np.sum(state.delta[:, x] ** 2)) / t2 + 1.0 / coupling_prior(g_natural)[1] ** 2
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
