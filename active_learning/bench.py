"""Benchmark: active learning against grid and random designs on simulated campaigns, at equal FLOPs.

Run `python -m active_learning.bench [--quick] [--repeats R] [--workers W] [--seed S] [--max-seeds M]
[--pool box|ratios] [--prediction-weight W] [--decision-loss linear|zero-one]
[--departures centred|natural|learned|evidence] [--known-prior] [--oracle]`.

Each repeat simulates a campaign of K = 8 candidates whose true laws cross (the
best at the base run is not the best at C*), with 1% log-normal seed noise on
every run. Every design draws from the same pool, the 5 by 5 grid of N and D spanning the
box from the smallest proxy (N 1e7, D 5e7) to the largest (N 1.6e8, D 1.28e10), as a
campaign's does (`--pool ratios` keeps each N at D/N 5 to 80 instead, the band earlier
versions used). Every design sees the same truths and the same noise: run j of
candidate k at pool point m always draws the same noise, whichever design asks
for it. Every design starts from the same base run per candidate, is fitted with
the same pooled model, and is scored at the same FLOP budgets (fractions of the
full grid's FLOPs). The grid and random designs run each (candidate, point) at most
once; active learning may rerun a point with a new seed, up to al_max_seeds runs.
The scores:

  mare       mean over candidates of |L_hat*(C*) - L*(C*)| / L*(C*)
  pick_rate  fraction of repeats whose predicted best is the true best at C*
  regret     mean over repeats of how much worse the pick is at C* than the true best, each at its own
             compute-optimal allocation: L*_pick(C*) / L*_best(C*) - 1 (0 where it picks right; what a
             wrong pick costs the training run, al_regret_at_stop at the stop budget)
  confidence mean over repeats of the fit's own P(best) of its predicted best (what
             the fit expects pick_rate to be; al_confidence_at_stop at the stop budget)
  expected_regret  mean over repeats of the fit's own expected regret of its pick (what it expects
             regret to be; al_expected_regret_at_stop)
  coverage   fraction of candidates whose true L*(C*) lies inside the fit's 90% interval, the one a
             campaign's ranking prints (al_coverage_at_stop at the stop budget)

The last line of output is JSON with those numbers per design and budget and
the headline keys al_flops_fraction_to_match_grid (the smallest budget at which
active learning's mare, over all candidates, is at most the full grid's; null if
never), al_pick_rate (active learning's pick rate at that budget, where it stops)
and small_scale_pick_rate (ranking by the base run's observed loss alone), with 90%
Wilson intervals for both rates (al_pick_rate_interval, small_scale_pick_rate_interval):
from 40 campaigns a rate is known to about +-0.1. A secondary key,
al_flops_fraction_to_match_grid_best_candidate, applies the same rule to the error of
the true best candidate's prediction.

With --oracle it also asks how much any design could do (oracle.py): at every
budget, the mean posterior sd of log L*(C*) of the best relaxed design computed
at the true laws, and of active learning's actual runs, both as ratios to the full
grid's, linearised at the truth. oracle_flops_fraction_to_match_grid is the smallest
budget at which the best design's mean ratio is at most 1: below it, matching the grid's
error takes luck, not design. For the decision it prints, per budget, the mean over
campaigns of the highest first-order chance that any design puts the true best ahead of
the runner-up (oracle_pick_bound: the design that spends everything on telling those two
apart), and the same chance for active learning's runs (al_pick_probability);
oracle_pick_bound_at_stop is the bound at the budget where al_pick_rate is read.
It also makes, at every budget, the runs of the design an experimenter who knew the true
laws would make for the decision (oracle.decision_design, in whole runs, with the same
noise), and fits and scores them like any design's (designs["oracle_design"]):
oracle_design_pick_rate_at_stop, with its Wilson interval, is what knowing where to look
is worth once the runs are fitted from the data, the yardstick for al_pick_rate.

With --known-prior every design is fitted with the simulator's own hyperparameters
pinned (known_prior): what is left between its pick rates and the bound is the design's
and the law's curvature; what it gains over the default fit is what learning the
hyperparameters from 8 candidates costs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence

import numpy as np
from scipy import special

from active_learning import allocate, oracle
from active_learning.baselines import grid_design, random_design
from active_learning.choose import DECISION_LOSSES, choose_next_runs
from active_learning.hierarchical import DEPARTURE_FRAMES
from active_learning.pooled import PooledFit, PoolingConfig, fit_pooled
from active_learning.scaling_law import HOFFMANN_2022, Chinchilla, Features, Observation


NOISE_DRAWS = 16  # independent seeds per (candidate, point); a 17th run would repeat the first's noise
POOL_SHAPES = ("box", "ratios")  # BenchConfig.pool_shape's values, and --pool's


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """The simulated campaign and the comparison.

    Attributes:
      n_candidates: K.
      n_sizes: pool sizes N, log-spaced in [n_min, n_max].
      n_min: smallest proxy N.
      n_max: largest proxy N.
      pool_shape: "box", the product of n_sizes N by d_sizes D log-spaced between the smallest proxy's
        D (n_min times the smallest ratio) and the largest's (n_max times the largest): the box a
        campaign plans in (search/config.py's ProxyConfig.pool), bounded by the smallest and largest
        affordable proxies; or "ratios", each N at each of tokens_per_param, the band along the
        diagonal earlier versions measured (--pool ratios reproduces them). At the defaults both
        hold 25 points per candidate and cost the same FLOPs (6 sum(N) sum(D) for the box, 6 sum(N^2)
        sum(D/N) for the band: N doubles where D quadruples), with the same largest run and C*.
      d_sizes: pool D values in the box.
      tokens_per_param: D/N ratios: the ratio pool's, and the box's D range (smallest and largest).
      base_ratio: D/N of each candidate's base run (at n_min).
      target_multiple: C* as a multiple of the largest pool run's FLOPs.
      noise: seed-to-seed noise, sd of log loss.
      spread: sd of the candidates' departures from Hoffmann et al.'s law, per parameter
        (log E, log A, log B, alpha, beta).
      min_margin: the true best must beat the runner-up at C* by this relative margin.
      budgets: FLOP budgets at which designs are scored, as fractions of the full grid. 0.4 is
        there because on the ratio pool the best design reaches the grid's error between 0.3 and
        0.5 (about 0.36, oracle.py): without it, a design that needs 0.4 reads as needing 0.5.
      al_steps: cumulative budgets at which active learning refits and chooses again.
      repeats: simulated campaigns.
      pooling: the fit every design uses. Its departures' frame is chosen by the evidence (centred or
        natural, whichever the runs make more probable): on dev seed 10 (prediction weight 0.25) it
        picked the true best 0.925 of the time at 0.2 of the grid's FLOPs, against 0.825 with the
        coupling learned.
      al_max_seeds: runs (seeds) active learning may make per candidate and pool point, in all.
        A few seeds, as a campaign would rerun a proxy; never more than the simulator's
        independent noise draws per point.
      al_prediction_weight: choose_next_runs' weight of the predictions' error against the decision.
        0.5 rather than the library's 1: the library's weight picked the true best less often (0.72
        against 0.80 at 0.3 of the FLOPs, before the evidence mend), and the decision term alone (0)
        leaves the predictions of the candidates out of contention far worse. With the evidence's
        frame, 0.5 against 0.25 on --seed 0: mean error at 0.3 of the FLOPs 0.0134 against 0.0139
        (the full grid's 0.0136), picks 0.90 against 0.90 there, 0.875 against 0.90 at 0.1.
      al_decision_loss: choose_next_runs' decision_loss: a wrong pick costs its regret ("linear") or one
        ("zero-one"). On dev seeds 10 and 11 the zero-one loss picked no more often (README).
    """

    n_candidates: int = 8
    n_sizes: int = 5
    n_min: float = 1e7
    n_max: float = 1.6e8
    pool_shape: str = "box"
    d_sizes: int = 5
    tokens_per_param: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 80.0)
    base_ratio: float = 20.0
    target_multiple: float = 100.0
    noise: float = 0.01
    spread: tuple[float, ...] = (0.05, 0.3, 0.3, 0.03, 0.03)
    min_margin: float = 0.01
    budgets: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 1.0)
    al_steps: tuple[float, ...] = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)
    repeats: int = 40
    pooling: PoolingConfig = PoolingConfig(varying=("e", "a", "b", "alpha", "beta"), departures="evidence")
    al_max_seeds: int = 4
    al_prediction_weight: float = 0.5
    al_decision_loss: str = "linear"

    def __post_init__(self) -> None:
        if self.pool_shape not in POOL_SHAPES:
            raise ValueError(f"pool_shape must be one of {POOL_SHAPES}, got {self.pool_shape!r}")
        if self.al_decision_loss not in DECISION_LOSSES:
            raise ValueError(f"al_decision_loss must be one of {DECISION_LOSSES}, got {self.al_decision_loss!r}")

    def pool(self) -> list[tuple[float, float]]:
        sizes = np.geomspace(self.n_min, self.n_max, self.n_sizes)
        if self.pool_shape == "ratios":
            return [(float(n), float(n * r)) for n in sizes for r in self.tokens_per_param]
        tokens = np.geomspace(self.n_min * min(self.tokens_per_param), self.n_max * max(self.tokens_per_param),
                              self.d_sizes)
        # Rounded to 12 digits so that the base run's D (n_min times base_ratio) is a pool point, not a neighbour.
        return [(float(n), float(f"{d:.12g}")) for n in sizes for d in tokens]

    @property
    def base_point(self) -> tuple[float, float]:
        return (self.n_min, self.n_min * self.base_ratio)

    @property
    def target_flops(self) -> float:
        return self.target_multiple * max(6.0 * n * d for n, d in self.pool())

    @property
    def grid_flops(self) -> float:
        """FLOPs of the full grid with the base runs every design starts from, so that budget 1.0
        affords every (candidate, pool point) after them (without them one grid run was cut)."""
        per_candidate = sum(6.0 * n * d for n, d in self.pool()) + 6.0 * self.base_point[0] * self.base_point[1]
        return self.n_candidates * per_candidate


@dataclasses.dataclass(frozen=True)
class Campaign:
    """One simulated campaign: true laws and the noise every design draws from.

    Attributes:
      names: candidate ids.
      theta: true natural Chinchilla parameters [K, p].
      true_optimum: true log L*(C*) per candidate [K].
      noise: standard-normal draws [K, number of pool points + 1, repeats allowed per point].
    """

    names: tuple[str, ...]
    theta: np.ndarray
    true_optimum: np.ndarray
    noise: np.ndarray


def _true_optimum(theta: np.ndarray, target: float) -> np.ndarray:
    return allocate.optimal_log_loss(Chinchilla(), theta, target)


def simulate_campaign(cfg: BenchConfig, rng: np.random.Generator) -> Campaign:
    """Draw laws around Hoffmann et al.'s until they cross and the winner at C* is clear."""
    law, base = Chinchilla(), cfg.base_point
    x_base = Features.from_arrays([base[0]], [base[1]])
    while True:
        theta = HOFFMANN_2022 + rng.standard_normal((cfg.n_candidates, 5)) * np.array(cfg.spread)
        opt = _true_optimum(theta, cfg.target_flops)
        at_base = law.log_loss(theta, x_base)[:, 0]
        best, second = np.sort(opt)[:2]
        if np.argmin(at_base) != np.argmin(opt) and second - best >= math.log1p(cfg.min_margin):
            break
    names = tuple(f"cand{k}" for k in range(cfg.n_candidates))
    noise = rng.standard_normal((cfg.n_candidates, len(cfg.pool()) + 1, NOISE_DRAWS))
    return Campaign(names, theta, opt, noise)


@dataclasses.dataclass
class Runs:
    """The runs a design has made so far, with per-point repeat counters for the shared noise."""

    campaign: Campaign
    cfg: BenchConfig
    by_candidate: dict[str, list[Observation]]
    counts: dict[tuple[int, int], int]
    flops: float = 0.0

    @classmethod
    def start(cls, campaign: Campaign, cfg: BenchConfig) -> Runs:
        runs = cls(campaign, cfg, {c: [] for c in campaign.names}, {})
        for c in campaign.names:
            runs.add(c, *cfg.base_point)
        return runs

    def done(self) -> dict[tuple[str, float, float], int]:
        """Runs made so far per (candidate, N, D) pool point."""
        pool = self.cfg.pool()
        return {(self.campaign.names[k], *pool[m]): j for (k, m), j in self.counts.items() if m < len(pool)}

    def add(self, candidate: str, n: float, d: float) -> None:
        k = self.campaign.names.index(candidate)
        pool = self.cfg.pool()
        m = pool.index((n, d)) if (n, d) in pool else len(pool)  # the base run has its own slot
        j = self.counts.get((k, m), 0)
        self.counts[(k, m)] = j + 1
        x = Features.from_arrays([n], [d])
        log_loss = Chinchilla().log_loss(self.campaign.theta[k], x)[0]
        noise = self.campaign.noise[k, m, j % self.campaign.noise.shape[2]]
        self.by_candidate[candidate].append(Observation(n, d, math.exp(log_loss + self.cfg.noise * noise)))
        self.flops += 6.0 * n * d


def score(runs: Runs, fit: PooledFit | None = None) -> dict[str, float]:
    """mare, the true best's relative error, whether the predicted best is the true best and what it costs
    if not (the regret: the pick's true L*(C*) over the true best's, less one), the fit's
    own probability that it is (its P(best), as a campaign shows it: the fit's confidence in its pick)
    and the regret the fit expects of it (its expected regret, as a campaign shows it),
    and the fraction of candidates whose true L*(C*) lies inside the interval the campaign ranking prints."""
    fit = fit or fit_pooled(runs.by_candidate, runs.cfg.pooling)
    pred = fit.predict_at_target(runs.cfg.target_flops)
    camp = runs.campaign
    hat = np.array([math.log(pred[c].loss) for c in camp.names])
    rel = np.abs(np.exp(hat - camp.true_optimum) - 1.0)
    best, pick = int(np.argmin(camp.true_optimum)), int(np.argmin(hat))
    regret = math.expm1(camp.true_optimum[pick] - camp.true_optimum[best])
    # A fixed generator: P(best) is a Monte Carlo integral here, not part of the experiment's randomness.
    standing = fit.standings(runs.cfg.target_flops, np.random.default_rng(0))[camp.names[pick]]
    truth = np.exp(camp.true_optimum)
    covered = [pred[c].lo <= t <= pred[c].hi for c, t in zip(camp.names, truth)]
    return {"mare": float(rel.mean()), "best_error": float(rel[best]), "pick": float(pick == best),
            "regret": float(regret), "expected_regret": standing.expected_regret, "confidence": standing.prob_best,
            "coverage": float(np.mean(covered))}


def known_prior(cfg: BenchConfig, weight: float = 1e6) -> PoolingConfig:
    """The pooled fit with the simulator's hyperparameters pinned by hyperpriors of huge weight.

    Departures independent in the natural parameters with the simulated spread, and the
    simulated seed noise: the prior the simulator draws from. The shared parameters keep
    their weak prior (the simulator's centre, Hoffmann et al.'s law, stays unknown to the fit).
    """
    names = Chinchilla().param_names
    return dataclasses.replace(cfg.pooling, departures="natural", varying=names,
                               tau_prior=dict(zip(names, cfg.spread)), tau_prior_weight=weight,
                               noise_prior=(cfg.noise, weight))


def _fixed_design(campaign: Campaign, cfg: BenchConfig, design: str, budget: float,
                  rng: np.random.Generator) -> Runs:
    runs = Runs.start(campaign, cfg)
    remaining = budget * cfg.grid_flops - runs.flops
    if design == "grid":
        plan = grid_design(campaign.names, cfg.pool(), remaining)
    else:
        plan = random_design(campaign.names, cfg.pool(), remaining, rng)
    for c, n, d in plan:
        runs.add(c, n, d)
    return runs


def _oracle_campaign(campaign: Campaign, cfg: BenchConfig) -> oracle.Campaign:
    """The campaign as oracle.py sees it: the true laws and departures' spread, the fit's weak shared prior."""
    pooling = cfg.pooling
    shared_sd = [pooling.exponent_prior[1] if name in ("alpha", "beta") else pooling.level_prior_sd
                 for name in Chinchilla().param_names]
    return oracle.Campaign(campaign.theta, cfg.pool(), [cfg.base_point], cfg.target_flops, cfg.noise,
                           np.array(cfg.spread), np.array(shared_sd))


def _counts(runs: Runs) -> np.ndarray:
    """Runs per (candidate, pool point) [K, M], the base runs excluded (they may share a pool point)."""
    pool = runs.cfg.pool()
    out = np.zeros((len(runs.campaign.names), len(pool)))
    for (k, m), j in runs.counts.items():
        if m < out.shape[1]:
            out[k, m] = j
    if runs.cfg.base_point in pool:
        out[:, pool.index(runs.cfg.base_point)] -= 1
    return out


def _design_bounds(campaign: Campaign, cfg: BenchConfig, al_counts: dict[float, np.ndarray]) -> dict[float, dict]:
    """Per budget: the best design's and active learning's mean sd of log L*(C*), relative to the full grid's,
    and the first-order chance of picking the true best of the best design for the decision and of active learning's.
    """
    truth = _oracle_campaign(campaign, cfg)
    grid = oracle.evaluate(truth, np.ones(truth.shape[:2])).mean_sd
    base = Runs.start(campaign, cfg).flops
    out = {}
    for b in cfg.budgets:
        budget = b * cfg.grid_flops - base
        best = oracle.optimal_design(truth, budget, max_seeds=cfg.al_max_seeds).mean_sd
        out[b] = {"oracle_sd_ratio": best / grid, "al_sd_ratio": oracle.evaluate(truth, al_counts[b]).mean_sd / grid,
                  "oracle_pick_bound": oracle.pick_bound(truth, budget, max_seeds=cfg.al_max_seeds),
                  "al_pick_probability": oracle.pick_probability(truth, al_counts[b])}
    return out


def _oracle_design(campaign: Campaign, cfg: BenchConfig, budget: float) -> Runs:
    """The runs an experimenter who knows the true laws would make for the decision (oracle.decision_design),
    as whole runs within `budget` (a fraction of the grid's FLOPs) and the seed cap, after the base runs."""
    truth, runs = _oracle_campaign(campaign, cfg), Runs.start(campaign, cfg)
    remaining = budget * cfg.grid_flops - runs.flops
    design = oracle.decision_design(truth, remaining, max_seeds=cfg.al_max_seeds)
    cost = np.broadcast_to(truth.cost(), design.weights.shape)
    counts, pool = oracle.whole_runs(design.weights, cost, remaining), cfg.pool()
    for k, m in np.argwhere(counts > 0):
        for _ in range(int(counts[k, m])):
            runs.add(campaign.names[k], *pool[m])
    return runs


def _active_learning(campaign: Campaign, cfg: BenchConfig,
                     rng: np.random.Generator) -> tuple[dict[float, dict], dict[float, np.ndarray]]:
    """Refit, score at the scoring budgets, and choose the next batch, until the largest budget.

    Returns:
      the scores per scoring budget, and the runs made by then per (candidate, pool point).
    """
    runs, out, counts = Runs.start(campaign, cfg), {}, {}
    fit = fit_pooled(runs.by_candidate, cfg.pooling)
    for step in sorted(set(cfg.al_steps) | set(cfg.budgets)):
        remaining = step * cfg.grid_flops - runs.flops
        if remaining > 0:
            for c, n, d in choose_next_runs(fit, cfg.pool(), cfg.target_flops, remaining, rng,
                                            max_seeds=cfg.al_max_seeds, done=runs.done(),
                                            prediction_weight=cfg.al_prediction_weight,
                                            decision_loss=cfg.al_decision_loss):
                runs.add(c, n, d)
            fit = fit_pooled(runs.by_candidate, cfg.pooling)
        if step in cfg.budgets:
            out[step] = score(runs, fit) | {"flops_fraction": runs.flops / cfg.grid_flops}
            counts[step] = _counts(runs)
    return out, counts


def run_repeat(cfg: BenchConfig, seed: np.random.SeedSequence, with_oracle: bool = False) -> dict:
    """One campaign: every design at every budget, plus the small-scale ranking (and the design bounds)."""
    sim_seed, random_seed, al_seed = seed.spawn(3)
    campaign = simulate_campaign(cfg, np.random.default_rng(sim_seed))
    base = Runs.start(campaign, cfg)
    small = np.argmin([base.by_candidate[c][0].loss for c in campaign.names])
    al_scores, counts = _active_learning(campaign, cfg, np.random.default_rng(al_seed))
    opt = campaign.true_optimum
    result = {"small_scale_pick": float(small == np.argmin(opt)),
              "small_scale_regret": math.expm1(float(opt[small] - opt.min())), "al": al_scores}
    random_rng = np.random.default_rng(random_seed)
    for design in ("grid", "random"):
        result[design] = {b: score(_fixed_design(campaign, cfg, design, b, random_rng)) for b in cfg.budgets}
    if with_oracle:
        result["oracle"] = _design_bounds(campaign, cfg, counts)
        result["oracle_design"] = {b: score(_oracle_design(campaign, cfg, b)) for b in cfg.budgets}
    return result


def wilson_interval(successes: float, trials: int, level: float = 0.9) -> tuple[float, float]:
    """Score interval for a binomial proportion (Wilson 1927), good at rates near 0 or 1 and few trials."""
    z = float(special.ndtri(0.5 + 0.5 * level))
    p, z2n = successes / trials, z * z / trials
    centre = (p + 0.5 * z2n) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / trials + 0.25 * z2n / trials) / (1.0 + z2n)
    return min(max(centre - half, 0.0), p), max(min(centre + half, 1.0), p)  # it holds p; rounding may not


def summarise(cfg: BenchConfig, results: Sequence[dict]) -> dict:
    """Per design and budget means, and the headline keys."""
    designs = {}
    for design in [d for d in ("grid", "random", "al", "oracle_design") if all(d in r for r in results)]:
        designs[design] = {
            str(b): {key: float(np.mean([r[design][b][key] for r in results]))
                     for key in ("mare", "best_error", "pick", "regret", "expected_regret", "confidence", "coverage")}
            for b in cfg.budgets}
        for b in cfg.budgets:
            designs[design][str(b)]["pick_rate"] = designs[design][str(b)].pop("pick")
    full = str(max(cfg.budgets))
    grid_error = designs["grid"][full]["mare"]
    matched = [b for b in cfg.budgets if designs["al"][str(b)]["mare"] <= grid_error]
    matched_best = [b for b in cfg.budgets if designs["al"][str(b)]["best_error"] <= designs["grid"][full]["best_error"]]
    stop = min(matched) if matched else max(cfg.budgets)
    bounds = {}
    if all("oracle" in r for r in results):
        keys = ("oracle_sd_ratio", "al_sd_ratio", "oracle_pick_bound", "al_pick_probability")
        ratios = {str(b): {key: float(np.mean([r["oracle"][b][key] for r in results])) for key in keys}
                  for b in cfg.budgets}
        reached = [b for b in cfg.budgets if ratios[str(b)]["oracle_sd_ratio"] <= 1.0]
        bounds = {"design_sd_ratios": ratios, "oracle_flops_fraction_to_match_grid": min(reached) if reached else None,
                  "oracle_pick_bound_at_stop": ratios[str(stop)]["oracle_pick_bound"]}
    if "oracle_design" in designs:
        oracle_picks = sum(r["oracle_design"][stop]["pick"] for r in results)
        bounds |= {"oracle_design_pick_rate_at_stop": designs["oracle_design"][str(stop)]["pick_rate"],
                   "oracle_design_pick_rate_interval": wilson_interval(oracle_picks, len(results))}
    al_picks = sum(r["al"][stop]["pick"] for r in results)
    small_picks = sum(r["small_scale_pick"] for r in results)
    return {
        "designs": designs,
        "al_flops_fraction_to_match_grid": min(matched) if matched else None,
        # Secondary: the same on the error of the true best candidate's prediction, the one the decision rests on.
        "al_flops_fraction_to_match_grid_best_candidate": min(matched_best) if matched_best else None,
        "al_stop_budget": stop,
        "al_pick_rate": designs["al"][str(stop)]["pick_rate"],
        # What the fit itself expects al_pick_rate to be: its P(best) of its pick, averaged. Near the pick rate,
        # the P(best) a campaign shows can be taken at its word.
        "al_confidence_at_stop": designs["al"][str(stop)]["confidence"],
        # How often the intervals the ranking prints hold the truth (nominal: the fit's level, 0.9 by default).
        "al_coverage_at_stop": designs["al"][str(stop)]["coverage"],
        "small_scale_pick_rate": small_picks / len(results),
        # What a wrong pick costs: the picked candidate's true L*(C*) over the true best's, less one, averaged
        # over campaigns (right picks count 0), and the worst campaign's; beside it, ranking by the base run's.
        "al_regret_at_stop": designs["al"][str(stop)]["regret"],
        "al_regret_at_stop_max": max(r["al"][stop]["regret"] for r in results),
        # What the fit expects it to be: its expected regret of its pick, averaged (as al_confidence_at_stop is).
        "al_expected_regret_at_stop": designs["al"][str(stop)]["expected_regret"],
        "small_scale_regret": float(np.mean([r["small_scale_regret"] for r in results])),
        "al_pick_rate_interval": wilson_interval(al_picks, len(results)),
        "small_scale_pick_rate_interval": wilson_interval(small_picks, len(results)),
        "grid_full_mare": grid_error,
        "repeats": len(results),
        "pool": cfg.pool_shape,
        "target_flops": cfg.target_flops,
        "grid_flops": cfg.grid_flops,
    } | bounds


def _print_table(summary: dict, cfg: BenchConfig) -> None:
    ratios = summary.get("design_sd_ratios")
    names = list(summary["designs"])
    extra = "   sd/grid: best design, al   pick: bound, al (first order)" if ratios else ""
    print("budget  " + "  ".join(f"{d + ' mare/pick':>20s}" for d in names) + "  al P(best)" + extra)
    for b in cfg.budgets:
        cells = [summary["designs"][d][str(b)] for d in names]
        r = ratios[str(b)] if ratios else {}
        bound = (f"   {r['oracle_sd_ratio']:8.3f}, {r['al_sd_ratio']:.3f}"
                 f"   {r['oracle_pick_bound']:10.3f}, {r['al_pick_probability']:.3f}") if ratios else ""
        print(f"{b:6.3f}  " + "  ".join(f"{c['mare']:12.4f} / {c['pick_rate']:.2f}" for c in cells)
              + f"  {cells[2]['confidence']:10.2f}" + bound)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m active_learning.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats and budgets: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="simulated campaigns (default 40, quick 6)")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seeds", type=int, default=None, help="active learning's seeds per point (default 4)")
    parser.add_argument("--oracle", action="store_true",
                        help="also compute the best design at the true laws at every budget (oracle.py; slower)")
    parser.add_argument("--departures", choices=DEPARTURE_FRAMES, default=None,
                        help="the pooled fit's departures: independent at the campaign's centre or in the natural "
                             "parameters (as the simulator draws them), whichever the evidence favours (evidence, "
                             "the default), or one of those frames, or with each exponent's correlation with its "
                             "level fitted (learned)")
    parser.add_argument("--prediction-weight", type=float, default=None,
                        help="active learning's weight of prediction error against the decision (default 0.5)")
    parser.add_argument("--decision-loss", choices=DECISION_LOSSES, default=None,
                        help="what active learning's design counts a wrong pick as costing: its regret (linear, "
                             "the default) or one (zero-one)")
    parser.add_argument("--pool", choices=POOL_SHAPES, default=BenchConfig.pool_shape,
                        help="pool points: the box of N by D a campaign plans in (default), or each N at "
                             "D/N 5 to 80, the band earlier versions measured")
    parser.add_argument("--known-prior", action="store_true",
                        help="fit every design with the simulator's hyperparameters pinned (departures' spread "
                             "in the natural parameters, seed noise): what learning them costs")
    args = parser.parse_args(argv)
    cfg = BenchConfig(pool_shape=args.pool)
    if args.quick:
        cfg = dataclasses.replace(cfg, repeats=6, budgets=(0.1, 0.3, 1.0),
                                  al_steps=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0))
    if args.repeats is not None:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    if args.max_seeds is not None:
        if not 1 <= args.max_seeds <= NOISE_DRAWS:
            parser.error(f"--max-seeds must be in [1, {NOISE_DRAWS}]")
        cfg = dataclasses.replace(cfg, al_max_seeds=args.max_seeds)
    if args.prediction_weight is not None:
        cfg = dataclasses.replace(cfg, al_prediction_weight=args.prediction_weight)
    if args.decision_loss is not None:
        cfg = dataclasses.replace(cfg, al_decision_loss=args.decision_loss)
    if args.departures is not None and args.known_prior:
        parser.error("--known-prior fixes the departures' frame (natural); drop --departures")
    if args.departures is not None:
        cfg = dataclasses.replace(cfg, pooling=dataclasses.replace(cfg.pooling, departures=args.departures))
    if args.known_prior:
        cfg = dataclasses.replace(cfg, pooling=known_prior(cfg))
    seeds = np.random.SeedSequence(args.seed).spawn(cfg.repeats)
    start = time.time()
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(args.workers, 1)) as pool:
        results = []
        for i, res in enumerate(pool.map(run_repeat, [cfg] * cfg.repeats, seeds, [args.oracle] * cfg.repeats)):
            results.append(res)
            print(f"repeat {i + 1}/{cfg.repeats} done ({time.time() - start:.0f}s)", file=sys.stderr, flush=True)
    summary = summarise(cfg, results)
    _print_table(summary, cfg)
    summary["seconds"] = round(time.time() - start, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
