"""The cascade on the fake runner: stages in order, duplicates, pruning, scaling runs, concurrency, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

from evaluator.bench import summarize
from evaluator.cascade import Cascade, CascadeConfig, CascadeOutcome, ExperimentPoint
from evaluator.result import EvalResult, Status
from sandbox_helpers import FAKE_RUNNER, fake_program
from search.cli import main as cli_main

CONFIG = CascadeConfig(base=ExperimentPoint(1000, 100_000), smoke_timeout_s=5, run_overhead_s=5)
# The same program with other names, comments and layout: the fake fingerprint ignores all three.
RENAMED = '''
# A "new" block (it is the old one).
def init_block(rng, config):
    return {"w": 1.0}


def apply_block(p, h, config):
    return h   # identity


def hyperparameters(n, d):
    return {"learning_rate": 3e-3}
'''


@pytest.fixture(scope="module")
def cascade(fake_pool):
    return Cascade(fake_pool, CONFIG)


@pytest.fixture(scope="module")
def incumbent(cascade):
    outcome = cascade.evaluate(fake_program(), name="incumbent")
    assert outcome.status is Status.OK, outcome.message
    return outcome


def test_a_good_program_passes_every_stage(incumbent):
    assert [r.stage for r in incumbent.results] == ["static", "smoke", "base"]
    assert incumbent.fingerprint and len(incumbent.curve) == 20
    assert incumbent.stage("base").metrics["val_loss"] > 0


def test_a_refused_program_never_reaches_a_worker(cascade):
    outcome = cascade.evaluate(fake_program("import os"))
    assert [r.stage for r in outcome.results] == ["static"]
    assert outcome.status is Status.INVALID and outcome.results[0].isolation == "static: not executed"


def test_a_renamed_copy_is_a_duplicate_and_is_not_trained(cascade, incumbent):
    outcome = cascade.evaluate(RENAMED, known_fingerprints={incumbent.fingerprint: "program-7"})
    assert outcome.status is Status.DUPLICATE
    assert outcome.stage("smoke").metrics["duplicate_of"] == "program-7"
    assert outcome.stage("base") is None


def test_a_clearly_worse_program_is_pruned_at_the_first_rung(cascade, incumbent):
    outcome = cascade.evaluate(fake_program(lr="1e-6"), incumbent_curves=[incumbent.curve])
    assert outcome.status is Status.PRUNED
    assert "above the incumbents'" in outcome.message
    assert outcome.stage("base").metrics["n_tokens"] == 25_000
    assert outcome.flops_spent < incumbent.flops_spent / 2


def test_a_slightly_different_program_is_trained_to_the_end(cascade, incumbent):
    outcome = cascade.evaluate(fake_program(lr="2e-3"), incumbent_curves=[incumbent.curve])
    assert outcome.status is Status.OK


def test_scaling_runs_come_back_in_order(cascade):
    points = [ExperimentPoint(2000, 200_000), ExperimentPoint(4000, 50_000, seed=1)]
    results = cascade.scaling_runs(fake_program(), points)
    assert [r.stage for r in results] == ["scaling", "scaling"]
    assert [r.metrics["n_params"] for r in results] == [2000, 4000]
    assert all(r.ok for r in results)


def test_the_context_length_reaches_every_training_stage_and_only_when_set(fake_pool):
    cascade = Cascade(fake_pool, dataclasses.replace(CONFIG, seq_len=64, early_stopping=None))
    outcome = cascade.evaluate(fake_program(lr="3.5e-3"))
    scaling = cascade.scaling_runs(fake_program(lr="3.5e-3"), [ExperimentPoint(2000, 200_000)])
    assert outcome.stage("base").metrics["seq_len"] == 64 and scaling[0].metrics["seq_len"] == 64
    # The default passes nothing, so a runner without the argument keeps working.
    default = Cascade(fake_pool, CONFIG).scaling_runs(fake_program(lr="3.5e-3"), [ExperimentPoint(2000, 200_000)])
    assert default[0].metrics["seq_len"] is None


def test_ten_candidates_on_two_workers_come_back_with_the_right_statuses(fake_pool, incumbent):
    cascade = Cascade(fake_pool, CONFIG)  # the module's has run "pruned" before: it would be its twin
    batch = {
        "ok": (fake_program(lr="4e-3"), Status.OK),
        "ok2": (fake_program(lr="2.5e-3"), Status.OK),
        "duplicate": (RENAMED, Status.DUPLICATE),
        "pruned": (fake_program(lr="1e-6"), Status.PRUNED),
        "refused": (fake_program("import subprocess"), Status.INVALID),
        "shape": (fake_program(block="return [x[0][:-1]]"), Status.INVALID),
        "timeout": (fake_program("while True:\n    pass"), Status.TIMEOUT),
        "memory": (fake_program("x = bytearray(10**12)"), Status.OUT_OF_MEMORY),
        "raises": (fake_program('raise ValueError("mine")'), Status.ERROR),
        "diverged": (fake_program(lr="5.0"), Status.DIVERGED),
    }
    futures = {
        name: cascade.submit(
            source, name=name, known_fingerprints=[incumbent.fingerprint], incumbent_curves=[incumbent.curve]
        )
        for name, (source, _) in batch.items()
    }
    got = {name: f.result().status for name, f in futures.items()}
    assert got == {name: expected for name, (_, expected) in batch.items()}


def test_twins_in_flight_together_train_once_and_the_earliest_submitted_trains(fake_pool):
    fresh = Cascade(fake_pool, CONFIG)  # the module's cascade has already seen the default program
    slow_first = fake_program("_ = sum(range(40_000_000))")  # the same functions: the same fingerprint
    futures = {
        "first": fresh.submit(slow_first, name="first"),
        "renamed": fresh.submit(RENAMED, name="renamed"),  # its smoke stage finishes first
        "other": fresh.submit(fake_program(lr="4e-3"), name="other"),
    }
    got = {name: f.result() for name, f in futures.items()}
    assert {name: o.status for name, o in got.items()} == {
        "first": Status.OK, "renamed": Status.DUPLICATE, "other": Status.OK,
    }  # fmt: skip
    assert got["renamed"].stage("smoke").metrics["duplicate_of"] == "first"
    assert got["renamed"].stage("base") is None and "submitted before it" in got["renamed"].message
    assert got["renamed"].fingerprint == got["first"].fingerprint
    later = fresh.evaluate(fake_program(block="return x  # again"), name="later")
    assert later.status is Status.DUPLICATE and later.stage("smoke").metrics["duplicate_of"] == "first"
    elsewhere = fresh.evaluate(RENAMED, name="elsewhere", base=ExperimentPoint(2000, 100_000))
    assert elsewhere.status is Status.OK  # the same computation at another base (N, D) is not a twin


def test_a_twin_of_a_candidate_that_failed_before_smoke_still_trains(fake_pool):
    fresh = Cascade(fake_pool, CONFIG)
    broken = fresh.submit(fake_program('raise ValueError("mine")'), name="broken")
    twin = fresh.submit(RENAMED, name="twin")
    assert broken.result().status is Status.ERROR
    assert twin.result().status is Status.OK


def test_cli_eval_prints_json_with_the_isolation_level(tmp_path, capsys):
    path = tmp_path / "candidate.py"
    path.write_text(fake_program())
    rc = cli_main(["eval", str(path), "--runner", FAKE_RUNNER, "--n", "1000", "--d", "100000", "--json", "--memory-gib", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "ok"
    assert out["isolation"]["level"] in ("bubblewrap", "rlimits")
    assert [r["stage"] for r in out["results"]] == ["static", "smoke", "base"]


def test_cli_eval_exits_1_on_a_failing_program_and_2_on_a_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text(fake_program("import os"))
    assert cli_main(["eval", str(path), "--runner", FAKE_RUNNER]) == 1
    assert "invalid" in capsys.readouterr().out
    assert cli_main(["eval", str(tmp_path / "missing.py")]) == 2


def test_bench_summary_counts_savings_from_duplicates_and_pruning():
    def outcome(status, flops, per_token=1.0, stage="base"):
        static = EvalResult("static", Status.OK)
        smoke = EvalResult("smoke", Status.OK if stage == "base" else status, metrics={"runner_s": 1.0})
        base = EvalResult("base", status, metrics={"runner_s": 2.0, "compile_s": 0.5, "train_s": 1.0,
                                                    "flops": flops, "flops_per_token_analytic": per_token})  # fmt: skip
        return CascadeOutcome("c", "", (static, smoke, base) if stage == "base" else (static, smoke))

    incumbent = outcome(Status.OK, 100.0)
    outcomes = {"good": outcome(Status.OK, 100.0), "pruned": outcome(Status.PRUNED, 25.0),
                "dup": outcome(Status.DUPLICATE, 0, stage="smoke")}  # fmt: skip
    summary = summarize(outcomes, {"good": 3.25, "pruned": 3.5, "dup": 1.5}, incumbent, n_tokens=100)
    assert summary["flops_saved_fraction"] == pytest.approx(1 - 125 / 300, abs=1e-4)
    assert summary["overhead_s"] == pytest.approx(0.5)
    assert summary["harness_other_s"] == pytest.approx(0.5)
