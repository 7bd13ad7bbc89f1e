"""The storage contract of db.record: one transaction per result, finished runs frozen."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from db import query, record, schema
from db.rows import Campaign, Fit, Program, Prompt, ProposerCall, Registration, Run, RunResult, Stage, State, Status

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _program(db, clock, **kwargs):
    return record.record_program(db, Program(source="x = 1\n", **kwargs), clock=clock)


def test_connect_uses_wal_on_files_and_migrates_once(tmp_path):
    path = tmp_path / "c.sqlite"
    first = schema.connect(path)
    assert first.journal_mode == "wal"
    first.close()
    again = schema.connect(path)  # reopening applies nothing twice
    applied = [m.name for m in schema.migrations.applied(again)]
    assert applied == [m.name for m in schema.migrations._migrations]
    assert set(schema.TABLES) <= set(again.table_names())


def test_campaign_is_created_once(db, clock):
    stored = record.create_campaign(db, Campaign(name="c", spec_toml="seed = 3\n", spec={"seed": 3}, seed=3), clock=clock)
    assert stored.created == 1000.0
    assert query.campaign(db) == stored
    with pytest.raises(record.CampaignExistsError):
        record.create_campaign(db, Campaign(name="d", spec_toml=""), clock=clock)


def test_ids_follow_commit_order_and_times_come_from_the_clock(db, clock):
    a = _program(db, clock)
    b = _program(db, clock, parent_ids=(a.id,), island=2, proposer="mutator")
    assert (a.id, b.id) == (1, 2)
    assert (a.created, b.created) == (1000.0, 1001.0)
    assert query.program(db, b.id) == b


def test_run_lifecycle_planned_running_done(db, clock):
    program = _program(db, clock)
    planned = record.plan_run(db, Run(program_id=program.id, n_target=1e5, d_target=5e5, seed=7), clock=clock)
    assert planned.state is State.PLANNED and planned.planned_at == 1001.0
    running = record.start_run(db, planned.id, clock=clock)
    assert running.state is State.RUNNING and running.started_at == 1002.0
    result = RunResult(status=Status.OK, n_params=99_000, n_tokens=499_712, final_loss=2.5, loss_curve=[[0, 5.5], [1, 2.5]])
    done = record.finish_run(db, planned.id, result, clock=clock)
    assert done.state is State.DONE and done.status is Status.OK and done.finished_at == 1003.0
    assert done.loss_curve == ((0, 5.5), (1, 2.5))
    assert query.run(db, planned.id) == done
    assert query.program(db, program.id).stage == Stage.BASE  # the program's stage follows its runs


def test_finished_runs_are_never_rewritten(db, clock):
    program = _program(db, clock)
    run = record.plan_run(db, Run(program_id=program.id), clock=clock)
    done = record.finish_run(db, run.id, RunResult(status=Status.DIVERGED, message="nan at step 3"), clock=clock)
    with pytest.raises(record.FinishedRunError, match="never rewritten"):
        record.finish_run(db, run.id, RunResult(status=Status.OK, final_loss=1.0), clock=clock)
    with pytest.raises(record.FinishedRunError):
        record.start_run(db, run.id, clock=clock)
    assert query.run(db, run.id) == done


def test_program_outcome_is_written_once(db, clock):
    program = _program(db, clock)
    out = record.record_program_outcome(db, program.id, status=Status.INVALID, stage=0, message="import os refused")
    assert out.status is Status.INVALID and query.program(db, program.id) == out
    with pytest.raises(record.FinishedProgramError):
        record.record_program_outcome(db, program.id, status=Status.OK, stage=2)
    with pytest.raises(record.NotFoundError):
        record.record_program_outcome(db, 99, status=Status.OK, stage=2)


def test_a_failed_write_commits_nothing(db, clock):
    program = _program(db, clock)
    run = record.plan_run(db, Run(program_id=program.id), clock=clock)
    bad = Registration(program_id=12345, island=0, score=2.0, stage=2, length=10)  # no such program
    with pytest.raises(Exception, match="FOREIGN KEY"):
        record.finish_run(db, run.id, RunResult(status=Status.OK, final_loss=2.0), registrations=[bad], clock=clock)
    assert query.run(db, run.id).state is State.PLANNED  # the result rolled back with its registration
    assert query.registrations(db) == []


def test_results_and_their_registrations_commit_together(db, clock):
    program = _program(db, clock)
    run = record.plan_run(db, Run(program_id=program.id), clock=clock)
    reg = Registration(program_id=program.id, island=1, score=2.0, stage=2, length=10)
    record.finish_run(db, run.id, RunResult(status=Status.OK, final_loss=2.0), registrations=[reg], clock=clock)
    record.record_fits(db, [Fit(program_id=program.id, loss_at_c_star=1.5)], registrations=[reg], clock=clock)
    logged = query.registrations(db)
    assert [r.seq for r in logged] == [1, 2] and [r.created for r in logged] == [1002.0, 1003.0]


def test_fits_are_appended_in_rounds(db, clock):
    a, b = _program(db, clock), _program(db, clock)
    first = record.record_fits(db, [Fit(program_id=None, kind="pooled"), Fit(program_id=a.id)], clock=clock)
    second = record.record_fits(db, [Fit(program_id=b.id, params={"E": 1.0}, intervals={"E": (0.9, 1.1)})], clock=clock)
    assert [f.round for f in first] == [1, 1] and second[0].round == 2
    assert second[0].intervals == {"E": (0.9, 1.1)}


def test_prompts_and_proposer_calls(db, clock):
    prompt = record.record_prompt(db, Prompt(text="improve this", island=0, parent_ids=[3, 1]), clock=clock)
    assert prompt.parent_ids == (3, 1)
    call = record.record_proposer_call(
        db, ProposerCall(model="m", prompt_id=prompt.id, tokens_in=10, tokens_out=5, latency_s=0.5), clock=clock
    )
    assert call.id == 1 and call.created == 1001.0
    with pytest.raises(Exception, match="FOREIGN KEY"):
        record.record_proposer_call(db, ProposerCall(model="m", prompt_id=77), clock=clock)


WRITER = textwrap.dedent(
    """
    import sys, time
    from db import record, schema
    from db.rows import Program, Run, RunResult, Status
    db = schema.connect(sys.argv[1])
    for i in range(5):
        p = record.record_program(db, Program(source=f"x = {i}\\n"))
        r = record.plan_run(db, Run(program_id=p.id))
        record.finish_run(db, r.id, RunResult(status=Status.OK, final_loss=float(i)))
        print("committed", i, flush=True)
    db.execute("BEGIN")
    db["programs"].insert({"source": "never committed", "proposer": "x", "stage": 0})
    print("in transaction", flush=True)
    time.sleep(60)
    """
)


def test_a_killed_writer_loses_nothing_committed(tmp_path):
    path = tmp_path / "killed.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            lines = [proc.stdout.readline().strip() for _ in range(6)]
            assert lines[-1] == "in transaction", lines
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    db = schema.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [p.source for p in query.programs(db)] == [f"x = {i}\n" for i in range(5)]
    assert [r.final_loss for r in query.runs(db, state=State.DONE)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert query.pending_runs(db) == []
    db.close()


def test_a_file_from_before_the_expected_regret_keeps_its_fits_and_gains_the_column(tmp_path, clock):
    path = tmp_path / "c.sqlite"
    db = schema.connect(path)
    program = _program(db, clock)
    record.record_fits(db, [Fit(program_id=program.id, loss_at_c_star=2.0, prob_best=1.0)], clock=clock)
    # As a file written before m010: no column, no record of the migration.
    db["fits"].transform(drop={"expected_regret"})
    db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm010_fit_expected_regret'")
    db.conn.commit()
    db.close()
    old = schema.connect_readonly(path)  # read-only files are not migrated: the record reads None
    assert query.fits_of(old, program.id)[0].expected_regret is None
    old.close()
    upgraded = schema.connect(path)
    [fit] = query.fits_of(upgraded, program.id)
    assert fit.loss_at_c_star == 2.0 and fit.expected_regret is None
    record.record_fits(upgraded, [Fit(program_id=program.id, loss_at_c_star=1.9, prob_best=1.0, expected_regret=0.0)],
                       clock=clock)
    assert [f.expected_regret for f in query.fits_of(upgraded, program.id)] == [None, 0.0]
