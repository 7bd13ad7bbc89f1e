"""(4) Fit and (5) choose: the campaign's scaling laws, predictions at C*, and the next runs.

Every finished ok run of every candidate (seed and comparisons included) goes
into one pooled maximum-likelihood fit (``active_learning.pooled``): E and the
exponents are shared, each candidate's levels depart under a fitted prior, so a
candidate with one base run borrows strength and one with many speaks for
itself. A candidate is then scored by its predicted loss at the target compute
C*, at its own compute-optimal (or inference-aware) N and D, with an interval,
the probability that it is the best, and its expected regret (how much higher its
loss at C* is expected to be than the best's).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import sqlite_utils

from active_learning.choose import choose_next_runs
from active_learning.pooled import PooledFit, PoolingConfig, fit_pooled
from active_learning.scaling_law import Observation
from db import query
from db.rows import Fit, Run, Stage, State, Status
from search import population
from search.config import CampaignSpec

MIN_POOLED_RUNS = 3  # below this the pooled law is a guess, so the loop waits for more runs


@dataclasses.dataclass(frozen=True)
class Judgement:
    """One fit round: the fit records, each candidate's predicted loss at C*, and the pooled fit."""

    fits: list[Fit]
    predicted: dict[int, float]
    pooled: PooledFit | None


def observations(db: sqlite_utils.Database) -> dict[str, list[Observation]]:
    """Every ok, finished run with a loss, by candidate id (as a string)."""
    out: dict[str, list[Observation]] = {}
    for run in query.runs(db, state=State.DONE, status=Status.OK):
        if run.final_loss and run.n_params and run.n_tokens:
            fpt = run.metrics.get("flops_per_token_analytic") if run.metrics else None
            obs = Observation(float(run.n_params), float(run.n_tokens), float(run.final_loss),
                              flops_per_token=float(fpt) if fpt else None)
            out.setdefault(str(run.program_id), []).append(obs)
    return out


def ok_run_count(db: sqlite_utils.Database) -> int:
    """How many runs ``observations`` would return, counted in SQL (the loop asks every turn)."""
    sql = """SELECT COUNT(*) FROM runs WHERE state = 'done' AND status = 'ok'
             AND final_loss > 0 AND n_params > 0 AND n_tokens > 0"""
    return db.execute(sql).fetchone()[0]


def pooling(spec: CampaignSpec) -> PoolingConfig:
    """E and both levels depart per candidate; the exponents are shared.

    With only the levels A and B varying, every candidate's law converges to the
    shared E at large compute, so the ranking at C* would say nothing about
    which program is better at scale. Letting E depart too (under a fitted prior)
    keeps a difference in the floor visible while the pooled exponents still
    borrow strength across candidates with one or two runs.
    """
    return PoolingConfig(law=spec.fit_law, varying=tuple(spec.fit_varying), departures=spec.fit_departures)


def fit_round(db: sqlite_utils.Database, spec: CampaignSpec, rng: np.random.Generator) -> Judgement:
    """Fit every candidate jointly and predict each at C*; an empty Judgement when too few runs."""
    obs = observations(db)
    n_runs = sum(len(v) for v in obs.values())
    if n_runs < MIN_POOLED_RUNS:
        return Judgement([], {}, None)
    pooled = fit_pooled(obs, pooling(spec))
    c_star, inference = spec.target_flops, spec.inference_tokens
    predictions = pooled.predict_at_target(c_star, inference_tokens=inference)
    standings = pooled.standings(c_star, rng, inference_tokens=inference)
    fits = [_pooled_record(pooled, n_runs)]
    for cand, pred in predictions.items():
        fits.append(Fit(
            program_id=int(cand), kind="candidate", law=pooled.law_name, params=pooled.params(cand),
            intervals=_intervals(pooled, cand), c_star=c_star, loss_at_c_star=pred.loss, loss_low=pred.lo,
            loss_high=pred.hi, n_star=pred.n_opt, d_star=pred.d_opt, prob_best=standings[cand].prob_best,
            expected_regret=standings[cand].expected_regret, n_runs=pred.n_runs,
        ))
    return Judgement(fits, {int(c): p.loss for c, p in predictions.items()}, pooled)


def _intervals(pooled: PooledFit, cand: str) -> dict[str, list[float]]:
    """Marginal intervals of the law's natural parameters (Laplace, delta method)."""
    params = pooled.params(cand)
    sd = np.sqrt(np.maximum(np.diag(pooled.candidate_cov(cand)), 0.0))
    q = pooled.quantile
    out = {}
    for name, s in zip(params, sd):
        if not math.isfinite(s):
            continue
        if name in ("E", "A", "B"):  # the covariance is of log E, log A, log B
            out[name] = [params[name] * math.exp(-q * s), params[name] * math.exp(q * s)]
        else:
            out[name] = [params[name] - q * s, params[name] + q * s]
    return out


def unsettled_warning(pooled: PooledFit | None) -> str | None:
    """What the record and the progress line both say of a pooled fit that hit its iteration cap; None if it settled."""
    if pooled is None or pooled.converged:
        return None
    return f"the pooled fit did not settle in {pooled.iterations} iterations: its estimates are the last iterate's"


def _pooled_record(pooled: PooledFit, n_runs: int) -> Fit:
    """The campaign-level law, its hyperparameters, and whether the fit settled (else a warning to read)."""
    mean = pooled.law.describe(pooled.mean)
    unsettled = unsettled_warning(pooled)
    warning = {} if unsettled is None else {"warning": unsettled}
    return Fit(program_id=None, kind="pooled", law=pooled.law_name,
               params={**mean, "tau": pooled.tau, "noise_sd": math.sqrt(pooled.noise_var),
                       "iterations": pooled.iterations, **({"pivots": pooled.pivots} if pooled.pivots else {}),
                       **warning}, n_runs=n_runs)


def scaling_flops(db: sqlite_utils.Database) -> tuple[float, float]:
    """(FLOPs of scaling runs, FLOPs of all runs) finished so far."""
    total = scaling = 0.0
    for run in query.runs(db, state=State.DONE):
        f = run.flops_analytic or 0.0
        total += f
        scaling += f if run.stage == int(Stage.SCALING) else 0.0
    return scaling, total


def plan_scaling_runs(
    db: sqlite_utils.Database, spec: CampaignSpec, judgement: Judgement, rng: np.random.Generator,
    eligible: Sequence[int],
) -> list[Run]:
    """Active learning's next (candidate, N, D) runs, within the scaling share of proxy FLOPs.

    Only ``eligible`` candidates (those that passed the base run) get runs; the
    per-round budget is what keeps scaling runs under ``scaling_fraction`` of all
    proxy FLOPs, and at most ``runs_per_round`` are planned.
    """
    if judgement.pooled is None or not eligible:
        return []
    p = spec.proxies
    scaling, total = scaling_flops(db)
    allowance = p.scaling_fraction * total - scaling  # keep scaling/(total) <= fraction after these runs
    allowance = allowance / max(1e-9, 1 - p.scaling_fraction)
    largest = max(6 * n * d for n, d in p.pool())
    budget = min(allowance, p.runs_per_round * largest)
    cheapest = min(6 * n * d for n, d in p.pool())
    if budget < cheapest:
        return []
    pool = p.pool()
    made = _runs_per_point(db, pool)
    # Runs a candidate was already given at a point (planned, made, or failed there:
    # some programs cannot be shaped to the smallest N) count against seeds_per_point.
    chosen = choose_next_runs(judgement.pooled, pool, spec.target_flops, budget, rng,
                              inference_tokens=spec.inference_tokens, candidates=[str(c) for c in eligible],
                              max_seeds=p.seeds_per_point, done=made)
    runs = []
    for cand, n, d in chosen[: p.runs_per_round]:
        seed = made[(cand, n, d)]  # a repeat gets a new seed, within the batch too
        made[(cand, n, d)] += 1
        runs.append(Run(program_id=int(cand), stage=int(Stage.SCALING), n_target=n, d_target=d, seed=seed,
                        reason="active learning: most reduces uncertainty of the best at C* per FLOP"))
    return runs


def _runs_per_point(db: sqlite_utils.Database, pool: Sequence[tuple[float, float]]) -> Counter:
    """Runs in any state per (candidate id as text, pool N, pool D)."""
    index = {(round(n), round(d)): (n, d) for n, d in pool}
    made: Counter = Counter()
    for r in query.runs(db):
        point = index.get((round(r.n_target or 0), round(r.d_target or 0)))
        if point is not None:
            made[(str(r.program_id), *point)] += 1
    return made


def scores_from(predicted: Mapping[int, float], base_losses: Mapping[int, float]) -> dict[int, float]:
    """Population scores: predicted loss at C*, else the base loss shifted onto that scale."""
    return population.scores(dict(predicted), dict(base_losses))
