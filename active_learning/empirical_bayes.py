"""Empirical Bayes for the pooled model: type-II maximum likelihood of its hyperparameters, and estimate.

estimate maximises the Laplace marginal likelihood p(y | mu, s, tau, g) (laplace.py) from a
few starts. Each iteration takes a Newton step on mu, then updates the hyperparameters:
tau by MacKay's type-II maximum-likelihood fixed point, s by the expected log-likelihood
under the posterior, each with its hyperprior, and the learned couplings g by EM on the
departures' 2x2 covariance. That fixed-point iteration converges linearly, slowly when few
candidates inform it, so it is extrapolated by SQUAREM (accelerate.py); where it alternates
between two points instead, it is damped.

References:
  MacKay 1992, "Bayesian interpolation" (the fixed point for prior scales).
  Gelman et al. 2013, "Bayesian Data Analysis", ch. 15 (EM for a covariance).
  Varadhan and Roland 2008, "Simple and globally convergent methods for accelerating the
    convergence of any EM algorithm" (SQUAREM).
  Mann 1953, "Mean value methods in iteration" (damping a fixed-point iteration).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from active_learning import accelerate, allocate, laplace
from active_learning.fit import FitConfig, fit_arrays
from active_learning.hierarchical import (EVIDENCE_FRAMES, EXPONENTS, Data, Model, PoolingConfig, Prior,
                                          RunsByCandidate, State, coupling_prior)
from active_learning.noise import MIN_LOG_SCALE
from active_learning.scaling_law import Reparam


def _update_tau(model: Model, state: State, post: laplace.Posterior) -> np.ndarray:
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


def _update_coupling(model: Model, state: State, post: laplace.Posterior) -> tuple[Model, float]:
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
    coupling = list(model.coupling)
    for i, (level, x, g_natural) in enumerate(model.pairs):
        m_lx = float(np.sum(state.delta[:, level] * state.delta[:, x] + post.delta_cov[:, level, x]))
        m_xx = float(np.sum(state.delta[:, x] ** 2 + post.delta_cov[:, x, x]))
        g0, s0 = coupling_prior(g_natural)
        t2 = state.tau[level] ** 2
        coupling[i] = ((m_lx + coupling[i] * m_xx) / t2 + g0 / s0**2) / (m_xx / t2 + 1.0 / s0**2)
    moved = np.abs(np.subtract(coupling, model.coupling)) * _coupling_scale(model, state.tau)
    return _recouple(model, state, coupling), float(np.max(moved, initial=0.0))


def _recouple(model: Model, state: State, coupling: Sequence[float]) -> Model:
    """The model with new couplings, and the departures re-expressed so the candidates' laws do not move.

    The centred departure delta_l = u_l + g u_x stays put: u_l absorbs (g_old - g_new) u_x.
    """
    for (level, x, _), old, new in zip(model.pairs, model.coupling, coupling):
        state.delta[:, level] += (old - new) * state.delta[:, x]
    return model.with_coupling(coupling)


def _initial_mu(model: Model, config: PoolingConfig) -> list[np.ndarray]:
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


def _iterate(model: Model, state: State) -> tuple[Model, float, float]:
    """One iteration: a marginal-likelihood step on mu, then updates of s, tau (and learned couplings).

    Returns:
      the model with its new couplings, the largest change of a parameter, and of a hyperparameter.
    """
    change = laplace.marginal_step(model, state)
    post = laplace.posterior(model, state, state.noise_var)
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
    laplace.solve_departures(model, state, max_steps=5)
    return model, change, hyper


def _hypers(model: Model, state: State) -> np.ndarray:
    """The hyperparameters as one vector for extrapolation: log tau, g_i tau_x / tau_l, log s, log sigma^2.

    A coupling is scaled as the convergence test measures it: the level's departure it
    implies per sd of the exponent's, in sds of the level's own.
    """
    return np.concatenate([np.log(state.tau), np.asarray(model.coupling) * _coupling_scale(model, state.tau),
                           [state.log_s, math.log(state.noise_var)]])


def _coupling_scale(model: Model, tau: np.ndarray) -> np.ndarray:
    return np.array([tau[x] / tau[level] for level, x, _ in model.pairs])


def _set_hypers(model: Model, state: State, h: np.ndarray) -> Model:
    """Put an extrapolated hyperparameter vector (_hypers' layout) into the state; re-solve the departures."""
    m, n_pairs = len(state.tau), len(model.pairs)
    tau = np.exp(h[:m])
    model = _recouple(model, state, h[m:m + n_pairs] / _coupling_scale(model, tau))
    state.tau = tau
    state.log_s = float(np.clip(h[-2], MIN_LOG_SCALE, 1.0))
    state.noise_var = math.exp(h[-1])
    laplace.solve_departures(model, state, max_steps=5)
    return model


def _copy(state: State) -> State:
    return dataclasses.replace(state, mu=state.mu.copy(), delta=state.delta.copy(), tau=state.tau.copy())


# Extrapolate from iterates this many iterations apart: the hyperparameters' path jitters from
# one iteration to the next (mu follows them with a Newton step each), and over two iterations
# the slow drift shows above the jitter (on 16 bench fits, spans 1, 2 and 3 took 37%, 39% and
# 42% fewer iterations than no extrapolation; on 20 others span 2 was the fastest of 2, 3 and 4).
SQUAREM_SPAN = 2
# The step cap grows fourfold each time it binds, up to this: the step of a mode that keeps
# 98.5% of its error per iteration (the steps of traced bench fits stayed below 9).
MAX_SQUAREM_STEP = 64.0
# Damping halves each time the iteration is caught alternating, down to this. The demo
# campaign's fits on 16 to 18 runs alternated between two points until the iteration cap;
# half steps settled them all, in 42 to 52 iterations.
MIN_DAMPING = 1.0 / 16.0


def _alternating(before_last: np.ndarray, last: np.ndarray, h: np.ndarray) -> bool:
    """Whether the hyperparameters came back to where they were two iterations ago (a 2-cycle).

    A fixed-point iteration whose Jacobian has an eigenvalue below -1 at the fixed point
    does not converge to it but alternates either side of it. The damped (Mann) iteration
    x <- x + lam (F(x) - x) has the same fixed points and maps an eigenvalue rho to
    1 - lam (1 - rho): half steps bring any rho in (-3, 1) inside the unit circle
    (Mann 1953, "Mean value methods in iteration").
    """
    return float(np.linalg.norm(h - before_last)) < 0.25 * float(np.linalg.norm(h - last))


def _run(model: Model, mu0: np.ndarray, config: PoolingConfig) -> tuple[State, Model, int, bool]:
    """Iterate until the parameters and hyperparameters all settle, SQUAREM-accelerated (accelerate.py).

    The hyperparameters' fixed point converges linearly, slowly when few candidates inform
    them (learned couplings took 20 to 100 iterations). Every 2 * SQUAREM_SPAN plain iterations,
    the hyperparameters are extrapolated along the path they took; mu and the departures
    follow within an iteration or two, their Newton steps converging fast. An extrapolation
    that leaves the hyperparameters moving more than before it (or that the next iteration
    cannot start from) is undone and the step cap shrinks: a failed jump costs one iteration,
    and the iterates kept are the plain iteration's. An iteration caught alternating between
    two points is damped from then on: the hyperparameters take half its step, or less.

    Returns:
      the state, the model with the couplings it settled on, the iterations taken, and whether
      it settled before the iteration cap.
    """
    k, m = len(model.data.candidates), model.departure_map.shape[1]
    state = State(mu0.copy(), np.zeros((k, m)), math.log(model.prior.sigma0), model.prior.tau0.copy(),
                  model.prior.sigma0**2)
    laplace.solve_departures(model, state)
    trail, max_step, jump, hyper, damping = [_hypers(model, state)], 1.0, None, math.inf, 1.0
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
        h = _hypers(model, state)
        if len(trail) >= 2 and _alternating(trail[-2], trail[-1], h):
            damping = max(damping / 2.0, MIN_DAMPING)
        if damping < 1.0:
            h = trail[-1] + damping * (h - trail[-1])
            model = _set_hypers(model, state, h)
        if change < config.tol and hyper < 100 * config.tol:  # the undamped step: a true fixed point
            return state, model, it + 1, True
        trail.append(h)
        if len(trail) == 2 * SQUAREM_SPAN + 1:
            if config.accelerate:
                h, step = accelerate.squarem_step(trail[0], trail[SQUAREM_SPAN], trail[-1], max_step)
                jump = h if step > 1.0 else None  # applied at the next iteration, which starts a new trail
                max_step = min(max_step * 4.0, MAX_SQUAREM_STEP) if step >= max_step else max_step
            trail = trail[-1:]
    return state, model, config.max_iter, False


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
      converged: whether the chosen start settled before config.max_iter (else its estimates are the last iterate's).
      hyper: sensitivity of theta to the hyperparameters times their sd [h, K, p] (laplace.hyper_sensitivity).
      log_pivots: with departures="learned", for each coupled exponent the log N (alpha) or log D (beta)
        at which its departures and its level's are independent a priori (0 is "natural").
      neg_log_evidence: -log of the Laplace marginal likelihood times the hyperpriors at the estimate
        (laplace.evidence): what the start, and with departures="evidence" the frame, was chosen by.
      departures: the frame the departures were fitted in (with "evidence", the one it chose).
    """

    candidates: tuple[str, ...]
    reparam: Reparam
    theta: np.ndarray
    mu: np.ndarray
    tau: np.ndarray
    log_scale: float
    posterior: laplace.Posterior
    flops_models: tuple[allocate.FlopsModel, ...]
    n_runs: tuple[int, ...]
    unique_tokens: float | None
    iterations: int
    converged: bool
    hyper: np.ndarray | None = None
    log_pivots: Mapping[str, float] = dataclasses.field(default_factory=dict)
    neg_log_evidence: float = math.nan
    departures: str = "centred"


def estimate(runs_by_candidate: RunsByCandidate, config: PoolingConfig) -> Estimated:
    """Maximise the Laplace marginal likelihood (times the hyperpriors) from each start; keep the best.

    With departures="evidence", estimate in each of EVIDENCE_FRAMES and keep the one the data
    make more probable: both frames have the same hyperparameters, so their type-II maximum
    likelihoods compare them without an Occam penalty between them (MacKay 1992, "Bayesian
    interpolation"; Kass & Raftery 1995 for the Laplace approximation to the evidence).
    """
    if config.departures == "evidence":
        # With shared exponents the frames are one model (hierarchical.py): fit it once.
        frames = EVIDENCE_FRAMES if any(v in EXPONENTS for v in config.varying) else EVIDENCE_FRAMES[:1]
        fits = [estimate(runs_by_candidate, dataclasses.replace(config, departures=frame)) for frame in frames]
        return min(fits, key=lambda fit: fit.neg_log_evidence)
    start = build_model(runs_by_candidate, config)
    best, model, best_value, iters, converged = fit_starts(start, config)
    post = laplace.posterior(model, best, best.noise_var, passes=3)
    hyper = laplace.hyper_sensitivity(model, best, post)
    data, pairs = model.data, model.pairs
    pivots = tuple(g - g_natural for g, (_, _, g_natural) in zip(model.coupling, pairs))
    return Estimated(data.candidates, model.reparam, model.thetas(best), best.mu, best.tau, best.log_s,
                     laplace.t_inflate(model, best, post), data.flops_models, tuple(int(c) for c in data.counts),
                     data.unique_tokens, iters, converged, hyper,
                     {config.varying[x]: p for (_, x, _), p in zip(pairs, pivots)}, best_value, config.departures)


def build_model(runs_by_candidate: RunsByCandidate, config: PoolingConfig) -> Model:
    """The hierarchical model of these runs under this configuration, its couplings at zero."""
    data = Data.build(runs_by_candidate)
    law = config.build_law()
    reparam = law.reparam(float(np.mean(data.x.log_n)), float(np.mean(data.x.log_d)))
    prior = Prior.build(config, law, float(np.mean(data.log_y)))
    exponents = np.array([j for j, name in enumerate(law.param_names) if name in EXPONENTS], dtype=int)
    pairs = config.coupled_pairs(reparam)
    return Model(law, config.build_noise(), reparam, data, prior, config.departure_map(reparam), exponents,
                 pairs, (0.0,) * len(pairs))


def fit_starts(start: Model, config: PoolingConfig) -> tuple[State, Model, float, int, bool]:
    """Run the estimation from each initial mu; keep the start of greatest evidence (laplace.evidence).

    Returns:
      the chosen state, its model (with the couplings it settled on), its -log evidence, the
      iterations it took, and whether it settled before config.max_iter.
    """
    best, model, best_value, iters, converged = None, start, math.inf, 0, False
    for mu0 in _initial_mu(start, config):
        state, fitted, it, settled = _run(start, mu0, config)
        value = laplace.evidence(fitted, state)
        if value < best_value:
            best, model, best_value, iters, converged = state, fitted, value, it, settled
    return best, model, best_value, iters, converged
