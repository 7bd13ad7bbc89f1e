"""The benchmark has a pulse: one small campaign through every design, and the headline keys."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from active_learning import bench
from active_learning.pooled import fit_pooled
from active_learning.scaling_law import Chinchilla


def test_one_small_campaign_scores_every_design_and_summarises():
    cfg = dataclasses.replace(bench.BenchConfig(), n_candidates=3, n_sizes=3, tokens_per_param=(10.0, 40.0),
                              budgets=(0.2, 1.0), al_steps=(0.1, 0.2, 1.0), repeats=1)
    result = bench.run_repeat(cfg, np.random.SeedSequence(0))
    for design in ("grid", "random", "al"):
        assert set(result[design]) == {0.2, 1.0}
        assert 0 <= result[design][1.0]["mare"] < 1
    assert result["al"][1.0]["flops_fraction"] <= 1.0 + 1e-9
    summary = bench.summarise(cfg, [result])
    for key in ("al_flops_fraction_to_match_grid", "al_pick_rate", "small_scale_pick_rate"):
        assert key in summary
    assert summary["pool"] == "box"
    lo, hi = summary["al_pick_rate_interval"]
    assert lo <= summary["al_pick_rate"] <= hi
    for design in ("grid", "random", "al"):
        for b in ("0.2", "1.0"):
            assert 1 / cfg.n_candidates <= summary["designs"][design][b]["confidence"] <= 1.0
    assert summary["al_confidence_at_stop"] == result["al"][summary["al_stop_budget"]]["confidence"]
    assert summary["al_coverage_at_stop"] == result["al"][summary["al_stop_budget"]]["coverage"]
    assert summary["al_coverage_at_stop"] in {k / cfg.n_candidates for k in range(cfg.n_candidates + 1)}


def _small_grid_campaign():
    """Three candidates with the full grid's runs and their pooled fit: (config, campaign, runs, fit)."""
    cfg = dataclasses.replace(bench.BenchConfig(), n_candidates=3, n_sizes=3, d_sizes=3, repeats=1)
    campaign = bench.simulate_campaign(cfg, np.random.default_rng(3))
    runs = bench._fixed_design(campaign, cfg, "grid", 1.0, np.random.default_rng(0))
    return cfg, campaign, runs, fit_pooled(runs.by_candidate, cfg.pooling)


def test_the_confidence_is_the_fits_own_probability_that_its_pick_is_best():
    cfg, campaign, runs, fit = _small_grid_campaign()
    scored = bench.score(runs, fit)
    pred = fit.predict_at_target(cfg.target_flops)
    pick = min(campaign.names, key=lambda c: pred[c].loss)
    assert scored["confidence"] == pytest.approx(fit.prob_best(cfg.target_flops, np.random.default_rng(0))[pick])
    assert scored["expected_regret"] == pytest.approx(
        fit.standings(cfg.target_flops, np.random.default_rng(0))[pick].expected_regret)
    # Settled by noiseless data, the fit is sure and right.
    quiet = bench.Campaign(campaign.names, campaign.theta, campaign.true_optimum, 0.0 * campaign.noise)
    quiet_runs = bench._fixed_design(quiet, dataclasses.replace(cfg, noise=1e-4), "grid", 1.0, np.random.default_rng(0))
    sure = bench.score(quiet_runs)
    assert sure["pick"] == 1.0 and sure["confidence"] > 0.99


def test_wilson_intervals_have_their_known_values():
    # None of 10 at 95%: the upper end is z^2 / (n + z^2) (Wilson 1927); a half rate is symmetric.
    lo, hi = bench.wilson_interval(0, 10, level=0.95)
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / (10 + 1.959964**2), rel=1e-6)
    lo, hi = bench.wilson_interval(20, 40)
    assert lo + hi == pytest.approx(1.0) and 0.37 < lo < 0.38  # 0.5 -+ 0.127 at 90%
    lo, hi = bench.wilson_interval(34, 40)
    assert lo < 0.85 < hi < 0.93  # 0.85 from 40 campaigns does not rule out 0.90


def test_every_design_sees_the_same_noise():
    cfg = bench.BenchConfig()
    campaign = bench.simulate_campaign(cfg, np.random.default_rng(0))
    a, b = bench.Runs.start(campaign, cfg), bench.Runs.start(campaign, cfg)
    n, d = cfg.pool()[3]
    a.add("cand1", n, d)
    b.add("cand1", n, d)
    assert a.by_candidate == b.by_candidate


def test_simulated_laws_cross():
    # The best law at the base run is never the best at C*.
    cfg = bench.BenchConfig()
    campaign = bench.simulate_campaign(cfg, np.random.default_rng(1))
    x = bench.Features.from_arrays([cfg.base_point[0]], [cfg.base_point[1]])
    at_base = bench.Chinchilla().log_loss(campaign.theta, x)[:, 0]
    assert int(np.argmin(at_base)) != int(np.argmin(campaign.true_optimum))


def test_runs_count_seeds_per_pool_point_for_the_seed_cap():
    cfg = bench.BenchConfig()
    campaign = bench.simulate_campaign(cfg, np.random.default_rng(0))
    runs = bench.Runs.start(campaign, cfg)
    n, d = cfg.pool()[3]
    runs.add("cand1", n, d)
    runs.add("cand1", n, d)
    base = {(c, *cfg.base_point): 1 for c in campaign.names}  # the base run is a pool point's first seed
    assert cfg.base_point in cfg.pool()
    assert runs.done() == base | {("cand1", n, d): 2}
    assert runs.by_candidate["cand1"][1].loss != runs.by_candidate["cand1"][2].loss  # a new seed, new noise


def test_the_seed_cap_cannot_exceed_the_simulated_noise_draws():
    with pytest.raises(SystemExit):
        bench.main(["--max-seeds", str(bench.NOISE_DRAWS + 1)])


def test_the_full_grid_budget_affords_every_pool_point_for_every_candidate():
    cfg = bench.BenchConfig()
    campaign = bench.simulate_campaign(cfg, np.random.default_rng(0))
    runs = bench._fixed_design(campaign, cfg, "grid", 1.0, np.random.default_rng(0))
    assert sum(len(r) for r in runs.by_candidate.values()) == cfg.n_candidates * (len(cfg.pool()) + 1)


def test_the_oracle_bound_is_at_most_the_grid_at_the_full_budget_and_summarised():
    cfg = dataclasses.replace(bench.BenchConfig(), n_candidates=3, n_sizes=3, tokens_per_param=(10.0, 40.0),
                              budgets=(0.2, 1.0), al_steps=(0.1, 0.2, 1.0), repeats=1)
    result = bench.run_repeat(cfg, np.random.SeedSequence(0), with_oracle=True)
    bounds = result["oracle"]
    assert bounds[1.0]["oracle_sd_ratio"] <= 1.0 + 1e-6  # the full grid is a design the optimum could choose
    assert bounds[0.2]["oracle_sd_ratio"] > bounds[1.0]["oracle_sd_ratio"]
    assert bounds[0.2]["oracle_sd_ratio"] <= bounds[0.2]["al_sd_ratio"] * (1 + 1e-3)  # nothing beats the best
    for b in cfg.budgets:  # nor the best design for the decision
        assert 0.5 <= bounds[b]["al_pick_probability"] <= bounds[b]["oracle_pick_bound"] * (1 + 1e-3)
    summary = bench.summarise(cfg, [result])
    assert summary["oracle_pick_bound_at_stop"] == bounds[summary["al_stop_budget"]]["oracle_pick_bound"]
    assert summary["oracle_flops_fraction_to_match_grid"] == 1.0 or bounds[0.2]["oracle_sd_ratio"] <= 1.0
    assert "counts" not in result["al"][1.0]  # the design's counts stay out of the printed JSON
    assert set(result["oracle_design"]) == set(cfg.budgets)  # the oracle's decision design, made and fitted
    assert summary["designs"]["oracle_design"]["0.2"]["pick_rate"] == result["oracle_design"][0.2]["pick"]
    assert summary["oracle_design_pick_rate_at_stop"] == result["oracle_design"][summary["al_stop_budget"]]["pick"]


def test_the_oracle_design_spends_its_budget_in_whole_runs_within_the_seed_cap():
    cfg = dataclasses.replace(bench.BenchConfig(), n_candidates=3, n_sizes=3, d_sizes=3, al_max_seeds=2)
    campaign = bench.simulate_campaign(cfg, np.random.default_rng(1))
    base = bench.Runs.start(campaign, cfg).flops
    for budget in (0.1, 0.5):
        runs = bench._oracle_design(campaign, cfg, budget)
        assert runs.flops <= budget * cfg.grid_flops * (1 + 1e-9)
        # Rounding down and then up where the fractions are largest leaves less than one largest run unspent.
        assert runs.flops > budget * cfg.grid_flops - 6.0 * cfg.n_max * max(d for _, d in cfg.pool())
        assert runs.flops > base and bench._counts(runs).max() <= cfg.al_max_seeds


def test_design_counts_leave_out_the_base_runs_the_bound_adds_itself():
    cfg = bench.BenchConfig()
    campaign = bench.simulate_campaign(cfg, np.random.default_rng(0))
    runs = bench.Runs.start(campaign, cfg)
    assert not bench._counts(runs).any()
    n, d = cfg.base_point
    runs.add("cand2", n, d)
    counts = bench._counts(runs)
    assert counts.sum() == 1 and counts[2, cfg.pool().index(cfg.base_point)] == 1


def test_the_known_prior_pins_the_simulators_hyperparameters():
    cfg = bench.BenchConfig()
    rng = np.random.default_rng(3)
    runs = bench._fixed_design(bench.simulate_campaign(cfg, rng), cfg, "grid", 0.1, rng)
    known = fit_pooled(runs.by_candidate, bench.known_prior(cfg))
    assert [known.tau[name] for name in Chinchilla().param_names] == pytest.approx(cfg.spread, rel=1e-3)
    assert known.noise_var == pytest.approx(cfg.noise**2, rel=1e-3)
    # The default fit learns them from the runs instead.
    learned = fit_pooled(runs.by_candidate, cfg.pooling)
    assert learned.tau["a"] != pytest.approx(cfg.spread[1], rel=1e-3)


def test_the_known_prior_fixes_the_frame_so_departures_cannot_be_given_too():
    with pytest.raises(SystemExit):
        bench.main(["--known-prior", "--departures", "centred"])


def test_the_box_pool_spans_the_smallest_to_the_largest_proxy_at_the_ratio_pools_cost():
    box, ratios = bench.BenchConfig(), bench.BenchConfig(pool_shape="ratios")
    n = sorted({p[0] for p in box.pool()})
    d = sorted({p[1] for p in box.pool()})
    assert len(box.pool()) == len(n) * len(d) == len(ratios.pool())  # every N with every D
    smallest, largest = min(ratios.pool(), key=lambda p: p[0] * p[1]), max(ratios.pool(), key=lambda p: p[0] * p[1])
    assert (n[0], d[0]) == pytest.approx(smallest) and (n[-1], d[-1]) == pytest.approx(largest)
    assert box.base_point in box.pool()
    # 6 sum(N) sum(D) both ways at 5 by 5: the comparison's FLOPs and C* do not move with the pool's shape.
    assert box.grid_flops == pytest.approx(ratios.grid_flops) and box.target_flops == pytest.approx(ratios.target_flops)
    assert any(dd / nn < min(box.tokens_per_param) for nn, dd in box.pool())  # the box has corners the band lacks
    assert all(min(ratios.tokens_per_param) <= dd / nn * (1 + 1e-9) for nn, dd in ratios.pool())


def test_an_unknown_pool_shape_is_refused():
    with pytest.raises(ValueError, match="pool_shape"):
        bench.BenchConfig(pool_shape="diagonal")


def test_active_learning_designs_with_the_configured_decision_loss(monkeypatch):
    seen, choose = [], bench.choose_next_runs

    def spy(*args, **kwargs):
        seen.append(kwargs["decision_loss"])
        return choose(*args, **kwargs)

    cfg = dataclasses.replace(bench.BenchConfig(), n_candidates=3, n_sizes=3, d_sizes=3, budgets=(0.2,),
                              al_steps=(0.1, 0.2), al_decision_loss="zero-one")
    campaign = bench.simulate_campaign(cfg, np.random.default_rng(3))
    monkeypatch.setattr(bench, "choose_next_runs", spy)
    scores, _ = bench._active_learning(campaign, cfg, np.random.default_rng(0))
    assert seen == ["zero-one", "zero-one"]
    assert scores[0.2]["flops_fraction"] <= 0.2 + 1e-9
    with pytest.raises(ValueError, match="al_decision_loss"):
        bench.BenchConfig(al_decision_loss="hinge")


def test_the_coverage_counts_the_candidates_whose_truth_lies_inside_the_printed_interval():
    cfg, campaign, runs, fit = _small_grid_campaign()
    pred = fit.predict_at_target(cfg.target_flops)
    # Move each truth to just inside or just outside its candidate's interval: the coverage counts the insides.
    inside = [pred[c].lo * 1.0001 for c in campaign.names[:2]] + [pred[campaign.names[2]].hi * 1.0001]
    moved = dataclasses.replace(campaign, true_optimum=np.log(inside))
    runs.campaign = moved
    assert bench.score(runs, fit)["coverage"] == pytest.approx(2 / 3)
    runs.campaign = dataclasses.replace(campaign, true_optimum=np.log([pred[c].hi * 1.01 for c in campaign.names]))
    assert bench.score(runs, fit)["coverage"] == 0.0
    runs.campaign = dataclasses.replace(campaign, true_optimum=np.log([pred[c].loss for c in campaign.names]))
    assert bench.score(runs, fit)["coverage"] == 1.0


def test_the_regret_is_what_the_pick_loses_at_the_target_against_the_true_best():
    cfg, campaign, runs, fit = _small_grid_campaign()
    pred = fit.predict_at_target(cfg.target_flops)
    pick = min(range(3), key=lambda k: pred[campaign.names[k]].loss)
    # Truths that make another candidate 2% better than the pick: the pick is wrong and costs 2%.
    truth = np.full(3, 2.0)
    truth[(pick + 1) % 3] = 2.0 / 1.02
    runs.campaign = dataclasses.replace(campaign, true_optimum=np.log(truth))
    scored = bench.score(runs, fit)
    assert scored["pick"] == 0.0 and scored["regret"] == pytest.approx(0.02, rel=1e-9)
    truth[pick] = 1.5  # now the pick is the true best: no regret
    runs.campaign = dataclasses.replace(campaign, true_optimum=np.log(truth))
    assert bench.score(runs, fit)["regret"] == 0.0


def test_the_summary_reads_the_regret_at_the_stop_budget_and_the_small_scale_rankings():
    cfg = dataclasses.replace(bench.BenchConfig(), budgets=(0.2, 1.0))

    def result(al_mare, al_regret, small):
        scores = {"best_error": 0.0, "confidence": 0.9, "coverage": 0.9, "expected_regret": 0.01}
        al = {0.2: scores | {"mare": al_mare, "pick": float(al_regret == 0.0), "regret": al_regret},
              1.0: scores | {"mare": 0.01, "pick": 1.0, "regret": 0.0, "expected_regret": 0.0}}
        grid = {b: scores | {"mare": 0.02, "pick": 1.0, "regret": 0.0} for b in cfg.budgets}
        return {"al": al, "grid": grid, "random": grid, "small_scale_pick": float(small == 0.0),
                "small_scale_regret": small}

    summary = bench.summarise(cfg, [result(0.015, 0.0, 0.05), result(0.015, 0.03, 0.0)])
    assert summary["al_stop_budget"] == 0.2  # its mean error 0.015 is under the full grid's 0.02 there
    assert summary["al_regret_at_stop"] == pytest.approx(0.015) and summary["al_regret_at_stop_max"] == 0.03
    assert summary["al_expected_regret_at_stop"] == pytest.approx(0.01)
    assert summary["small_scale_regret"] == pytest.approx(0.025) and summary["small_scale_pick_rate"] == 0.5
