"""The campaign loop: replay from a seed, resume after SIGKILL, budgets, clean stops."""

import dataclasses
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from db import query, schema
from db.rows import Stage
from proxy_models.program import seed_source
from search import judge
from search.config import SPEC_TEMPLATE, load_spec
from search.loop import Loop
from search.opening import open_campaign
from search.propose import MutatorProposer
from evaluator.result import Status
from search.simulate import SimulatedEvaluator


def make_spec(root: pathlib.Path, candidates=14, extra=""):
    root.mkdir(parents=True, exist_ok=True)
    (root / "seed.py").write_text(seed_source("weakened"))
    (root / "reference.py").write_text(seed_source("reference"))
    text = SPEC_TEMPLATE.format(name="test", spec_name="campaign.toml")
    text = text.replace("candidates = 40", f"candidates = {candidates}").replace('compare = []', 'compare = ["reference.py"]')
    text = text.replace("simulate = false", "simulate = true") + extra
    (root / "campaign.toml").write_text(text)
    return load_spec(root / "campaign.toml")


def run_loop(spec, evaluator=None, **kw):
    db = schema.connect(spec.resolve(spec.database))
    open_campaign(spec, db, "")
    evaluator = evaluator or SimulatedEvaluator((spec.proxies.base_n, spec.proxies.base_d))
    loop = Loop(spec, db, evaluator, MutatorProposer(), **kw)
    try:
        return loop.run(), db
    finally:
        evaluator.close()


def committed(db):
    """What a campaign has committed, independent of ids and times."""
    programs = {p.id: p for p in query.programs(db)}
    prog = sorted((p.source_hash, p.status.value, p.stage, p.fingerprint or "") for p in programs.values())
    runs = sorted(
        (programs[r.program_id].source_hash, r.stage, r.n_target, r.d_target, r.seed, r.status.value, r.final_loss)
        for r in query.runs(db) if r.state.value == "done"
    )
    return prog, runs


def test_same_seed_same_campaign(tmp_path):
    a_reason, a = run_loop(make_spec(tmp_path / "a"))
    b_reason, b = run_loop(make_spec(tmp_path / "b"))
    assert a_reason == b_reason and "candidate budget" in a_reason
    assert committed(a) == committed(b)
    assert [p.source for p in query.programs(a)] == [p.source for p in query.programs(b)]
    assert query.spent(a).candidates == 14
    assert len(query.best_candidates(a)) >= 10  # every ok candidate has a prediction at C*


def test_another_seed_another_campaign(tmp_path):
    _, a = run_loop(make_spec(tmp_path / "a"))
    spec = make_spec(tmp_path / "b")
    _, b = run_loop(dataclasses.replace(spec, seed=1))
    assert committed(a) != committed(b)


def test_killed_campaign_resumes_to_the_same_results(tmp_path):
    _, reference = run_loop(make_spec(tmp_path / "never-killed"))
    make_spec(tmp_path / "killed", extra="")
    text = (tmp_path / "killed" / "campaign.toml").read_text().replace("simulate = true", "simulate = true\nsimulate_delay_s = 0.15")
    (tmp_path / "killed" / "campaign.toml").write_text(text)
    cmd = [sys.executable, "-m", "search.cli", "run", str(tmp_path / "killed" / "campaign.toml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db_path = tmp_path / "killed" / "campaign.sqlite"
    killed_mid_evaluation = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if db_path.exists():
            db = schema.connect_readonly(db_path)
            try:
                done = query.spent(db).candidates
                in_flight = query.pending_programs(db) or [r for r in query.pending_runs(db) if r.state.value == "running"]
            except sqlite3.OperationalError:  # the tables are still being created
                done, in_flight = 0, []
            db.conn.close()
            if done >= 6 and in_flight:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_mid_evaluation = True
                break
        time.sleep(0.05)
    proc.wait()
    assert killed_mid_evaluation, "the campaign finished before it could be killed"
    reason, resumed = run_loop(load_spec(tmp_path / "killed" / "campaign.toml"))
    assert "candidate budget" in reason
    assert committed(resumed) == committed(reference)


def test_budgets_stop_the_run(tmp_path):
    # candidates = 0 means no limit: a FLOP budget stops it instead
    spec = make_spec(tmp_path / "f2", candidates=0)
    spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, proxy_flops=2e13))
    reason, db = run_loop(spec)
    assert "proxy FLOP budget" in reason and query.spent(db).flops >= 2e13
    spec = make_spec(tmp_path / "wall", candidates=0)
    spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, wall_hours=1.0))
    ticks = iter(range(0, 10**6, 600))  # each look at the clock is ten minutes later
    reason, db = run_loop(spec, monotonic=lambda: next(ticks))
    assert reason == "wall-time budget reached"


def test_the_wall_time_budget_ranks_the_runs_it_finished_before_it_stops(tmp_path):
    spec = make_spec(tmp_path / "w", candidates=0)
    spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, wall_hours=1.0))
    late = []  # the clock jumps past the budget once the initial design's runs are done

    def on_event(kind, info):
        if kind == "run":
            late.append(True)

    reason, db = run_loop(spec, on_event=on_event, monotonic=lambda: 7200.0 if len(late) >= 4 else 0.0)
    assert reason == "wall-time budget reached"
    assert query.latest_pooled_runs(db) == judge.ok_run_count(db) == 6  # 2 base runs + 4 initial-design runs
    assert len(query.best_candidates(db)) == 2
    assert not query.pending_runs(db)  # the last fit plans nothing it will not run


def test_stop_commits_whole_results_and_resume_finishes(tmp_path):
    spec = make_spec(tmp_path / "s")
    loops = []

    def on_event(kind, info):
        if kind == "candidate" and info["program"] >= 5:
            loops[0].stop()

    db = schema.connect(spec.resolve(spec.database))
    open_campaign(spec, db, "")
    evaluator = SimulatedEvaluator((spec.proxies.base_n, spec.proxies.base_d), delay_s=0.01)
    loops.append(Loop(spec, db, evaluator, MutatorProposer(), on_event=on_event))
    assert "stopped on request" in loops[0].run()
    evaluator.close()
    for p in query.programs(db):  # every program is either whole (outcome and base run) or pending
        base = [r for r in query.runs(db, p.id) if r.stage == 2]
        assert (p.status is None and not base) or p.status is not None
    _, resumed = run_loop(spec)
    _, fresh = run_loop(make_spec(tmp_path / "fresh"))
    assert committed(resumed) == committed(fresh)


def test_a_different_seed_program_is_refused(tmp_path):
    spec = make_spec(tmp_path / "c")
    run_loop(dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, candidates=3)))
    (tmp_path / "c" / "seed.py").write_text(seed_source("reference"))
    with pytest.raises(ValueError, match="holds campaign"):
        run_loop(spec)


def test_run_command_prints_the_ranking(tmp_path, capsys):
    make_spec(tmp_path / "cli", candidates=6)
    from search.cli import main

    assert main(["run", str(tmp_path / "cli" / "campaign.toml")]) == 0
    out = capsys.readouterr().out
    assert "Ranking by predicted loss at C*" in out and "candidate budget reached" in out


class _SmallestNFails(SimulatedEvaluator):
    """Scaling runs at the box's smallest N fail as invalid (a program that cannot be shaped that small)."""

    def __init__(self, base, n_min):
        super().__init__(base)
        self.n_min = n_min

    def submit_run(self, source, n, d, seed, name):
        if round(n) == round(self.n_min):
            return self.pool.submit(lambda: self._stage("scaling", Status.INVALID, {}, "no shape within 10% of N"))
        return super().submit_run(source, n, d, seed, name)


def test_initial_design_measures_the_seed_and_the_yardsticks(tmp_path):
    spec = make_spec(tmp_path / "c", candidates=2)
    db = schema.connect(spec.resolve(spec.database))
    open_campaign(spec, db, "")
    planned = sorted((r.program_id, r.n_target, r.d_target) for r in query.runs(db))
    p = spec.proxies
    corners = [(p.n_max, p.d_min), (p.n_min, p.d_max)]
    assert planned == sorted((pid, n, d) for pid in (1, 2) for n, d in corners)


def test_a_point_is_never_planned_twice_for_a_program_even_after_it_failed(tmp_path):
    spec = make_spec(tmp_path / "c", candidates=14, extra="")
    evaluator = _SmallestNFails((spec.proxies.base_n, spec.proxies.base_d), spec.proxies.n_min)
    _, db = run_loop(spec, evaluator)
    scaling = [(r.program_id, r.n_target, r.d_target) for r in query.runs(db) if r.stage == Stage.SCALING]
    failed = [r for r in query.runs(db) if r.stage == Stage.SCALING and r.status.value == "invalid"]
    assert failed, "the test needs active learning to try the smallest N"
    assert len(scaling) == len(set(scaling))


def test_seeds_per_point_lets_active_learning_rerun_a_point_with_new_seeds(tmp_path):
    spec = make_spec(tmp_path / "c", candidates=8)
    text = (tmp_path / "c" / "campaign.toml").read_text()
    assert all(key in text for key in ("grid = 3 ", "seeds_per_point = 1 ", "scaling_fraction = 0.5 "))
    # One pool point: every scaling run active learning plans is there, so the cap is what limits it
    # (and a larger scaling share than the initial design's, so that it plans some).
    (tmp_path / "c" / "campaign.toml").write_text(text.replace("grid = 3 ", "grid = 1 ")
                                                  .replace("seeds_per_point = 1 ", "seeds_per_point = 3 ")
                                                  .replace("scaling_fraction = 0.5 ", "scaling_fraction = 0.9 "))
    spec = load_spec(tmp_path / "c" / "campaign.toml")
    _, db = run_loop(spec)
    point = spec.proxies.pool()[0]
    seeds = {}
    for r in query.runs(db):
        if r.stage == Stage.SCALING and (r.n_target, r.d_target) == point:
            seeds.setdefault(r.program_id, []).append(r.seed)
    assert max(len(s) for s in seeds.values()) >= 2, "the test needs active learning to rerun the point"
    assert all(len(s) <= 3 and sorted(s) == list(range(len(s))) for s in seeds.values())


@pytest.mark.parametrize("old, new, match", [
    ('fit_varying = ["e", "a", "b"]', 'fit_varying = ["e", "slope"]', "varying must be"),
    ('fit_departures = "learned"', 'fit_departures = "sideways"', "departures must be"),
    ('fit_law = "chinchilla"', 'fit_law = "kaplan"', "pooling supports"),
])
def test_a_bad_pooled_fit_setting_is_refused_when_the_spec_is_read(tmp_path, old, new, match):
    # Not hours later, at the first fit: the message names the key and what it may be.
    from search.config import SpecError

    make_spec(tmp_path)
    path = tmp_path / "campaign.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(SpecError, match=match):
        load_spec(path)


def test_the_departures_setting_reaches_the_pooled_fit(tmp_path):
    from search.judge import pooling

    spec = make_spec(tmp_path, extra="")
    assert pooling(spec).departures == "learned"
    path = tmp_path / "campaign.toml"
    path.write_text(path.read_text().replace('fit_departures = "learned"', 'fit_departures = "natural"'))
    assert pooling(load_spec(path)).departures == "natural"


def _pooled_runs() -> dict:
    """Three candidates on six noiseless runs each, departing in A and alpha."""
    import numpy as np

    from active_learning.scaling_law import HOFFMANN_2022, Chinchilla, Features, Observation

    n = np.geomspace(1e7, 1e9, 6)
    runs = {}
    for k, step in enumerate((-0.02, 0.0, 0.02)):
        theta = HOFFMANN_2022 + np.array([0.0, 0.2 * step / 0.02, 0.0, step, 0.0])
        loss = np.exp(Chinchilla().log_loss(theta, Features.from_arrays(n, 20 * n)))
        runs[f"c{k}"] = [Observation(float(a), 20 * float(a), float(y)) for a, y in zip(n, loss)]
    return runs


def test_the_pooled_fit_record_keeps_learned_pivots():
    import math

    from active_learning.pooled import PoolingConfig, fit_pooled
    from search.judge import _pooled_record

    runs = _pooled_runs()
    for departures, keys in (("centred", set()), ("learned", {"alpha"})):
        fit = fit_pooled(runs, PoolingConfig(varying=("a", "alpha"), departures=departures))
        params = _pooled_record(fit, 18).params
        assert set(params.get("pivots", {})) == keys
        assert params["iterations"] == fit.iterations and "warning" not in params
        assert all(math.isfinite(v) and v > 0 for v in params.get("pivots", {}).values())
    capped = fit_pooled(runs, PoolingConfig(varying=("a", "alpha"), max_iter=2))
    assert "did not settle in 2 iterations" in _pooled_record(capped, 18).params["warning"]


def test_progress_says_when_the_pooled_fit_did_not_settle(tmp_path, capsys):
    from rich.console import Console

    from active_learning.pooled import PoolingConfig, fit_pooled
    from search import judge
    from search.judge import _pooled_record
    from search.progress import Progress

    runs = _pooled_runs()
    capped = fit_pooled(runs, PoolingConfig(varying=("a", "alpha"), max_iter=2))
    said = judge.unsettled_warning(capped)
    assert judge.unsettled_warning(None) is None and judge.unsettled_warning(fit_pooled(runs)) is None
    db = schema.connect(tmp_path / "c.sqlite")
    progress = Progress(db, 10, Console(file=sys.stderr, force_terminal=False))
    progress("fit", {"runs": 12, "planned": 2, "fitted": True, "warning": None})
    assert "warning" not in capsys.readouterr().out
    progress("fit", {"runs": 14, "planned": 2, "fitted": True, "warning": said})
    # the live line says what the fit's record keeps, in the same words
    assert f"warning: {said}" in capsys.readouterr().out and progress.message == f"warning: {said}"
    assert _pooled_record(capped, 14).params["warning"] == said
    progress("step", {"step": 3, "children": 2, "proposer": "mutator", "island": 0, "message": "island 0 reset"})
    assert progress.message == f"warning: {said}\nisland 0 reset"  # a step's message does not hide the warning
    progress("fit", {"runs": 16, "planned": 2, "fitted": True, "warning": None})
    assert progress.message == "island 0 reset"  # a settled fit clears the warning, not the step's message
