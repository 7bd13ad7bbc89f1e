"""The reads the runner and the CLI rely on, on a small hand-made campaign."""

import pytest

from db import query, record
from db.rows import Fit, Program, ProposerCall, Run, RunResult, Stage, State, Status


@pytest.fixture
def campaign(db, clock):
    """Seed 1; children 2 (ok), 3 (invalid), 4 (ok, child of 2 and 1), 5 (pending); runs and fits."""
    add = lambda **kw: record.record_program(db, Program(source=f"x = {kw.pop('n')}\n", **kw), clock=clock)  # noqa: E731
    seed = add(n=1, source_hash="h1")
    a = add(n=2, parent_ids=(seed.id,), island=0, source_hash="h2")
    bad = add(n=3, parent_ids=(seed.id,), island=1, source_hash="h3")
    b = add(n=4, parent_ids=(a.id, seed.id), island=0, source_hash="h4")
    add(n=5, parent_ids=(b.id,), island=0, source_hash="h5")
    record.record_program_outcome(db, bad.id, status=Status.INVALID, stage=0, message="open() refused", clock=clock)

    def run(program, loss, stage=Stage.BASE, status=Status.OK, flops=1e12, finish=True):
        r = record.plan_run(db, Run(program_id=program.id, stage=int(stage), n_target=1e5, d_target=5e5), clock=clock)
        if finish:
            record.start_run(db, r.id, clock=clock)
            result = RunResult(status=status, final_loss=loss, flops_analytic=flops, message="" if loss else "nan")
            record.finish_run(db, r.id, result, clock=clock)
        return r

    for program, losses in ((seed, (2.5, 2.7)), (a, (2.4,)), (b, (2.6,))):
        for loss in losses:
            run(program, loss)
        fp = f"fp{program.id}"
        record.record_program_outcome(db, program.id, status=Status.OK, stage=2, fingerprint=fp, clock=clock)
    run(a, None, stage=Stage.SCALING, status=Status.DIVERGED)
    pending = run(b, None, stage=Stage.SCALING, finish=False)
    record.record_fits(db, [Fit(program_id=seed.id, loss_at_c_star=1.9), Fit(program_id=a.id, loss_at_c_star=1.7)])
    record.record_fits(
        db,
        [
            Fit(program_id=None, kind="pooled", params={"alpha": 0.3}),
            Fit(program_id=a.id, loss_at_c_star=1.95),
            Fit(program_id=b.id, loss_at_c_star=1.8),
        ],
    )
    record.record_proposer_call(db, ProposerCall(model="m", tokens_in=100, tokens_out=40, cost=0.01), clock=clock)
    record.record_proposer_call(db, ProposerCall(model="m", tokens_in=50, tokens_out=10, outcome="timeout"))
    return {"pending_run": pending.id}


def test_best_candidates_rank_by_the_newest_prediction(db, campaign):
    ranked = query.best_candidates(db)
    assert [(r.program.id, r.fit.loss_at_c_star) for r in ranked] == [(4, 1.8), (1, 1.9), (2, 1.95)]
    assert [r.program.id for r in query.best_candidates(db, k=1)] == [4]
    assert query.latest_fits(db)[None].params == {"alpha": 0.3}


def test_lineage_is_nearest_first_and_each_ancestor_once(db, campaign):
    assert [p.id for p in query.lineage(db, 5)] == [5, 4, 2, 1]


def test_pending_work_is_what_a_resume_redoes(db, campaign):
    assert [p.id for p in query.pending_programs(db)] == [5]
    assert [r.id for r in query.pending_runs(db)] == [campaign["pending_run"]]
    assert query.pending_runs(db)[0].state is State.PLANNED


def test_runs_of_a_program_and_base_losses(db, campaign):
    assert [r.final_loss for r in query.runs(db, 1)] == [2.5, 2.7]
    assert [r.status for r in query.runs(db, 2)] == [Status.OK, Status.DIVERGED]
    assert query.base_losses(db) == pytest.approx({1: 2.6, 2: 2.4, 4: 2.6})


def test_failures_newest_first_with_their_messages(db, campaign):
    failures = query.failures(db)
    assert [(f.program_id, f.status, f.run_id is not None) for f in failures] == [
        (2, Status.DIVERGED, True),
        (3, Status.INVALID, False),
    ]
    assert [f.message for f in query.failures(db, status=Status.INVALID)] == ["open() refused"]
    assert [f.program_id for f in query.failures(db, island=1)] == [3]
    assert len(query.failures(db, limit=1)) == 1


def test_counts_and_budgets_spent(db, campaign):
    counts = query.status_counts(db)
    assert counts["programs"] == {"ok": 3, "invalid": 1, "pending": 1}
    assert counts["runs"] == {"ok": 4, "diverged": 1, "pending": 1}
    spent = query.spent(db)
    assert spent.candidates == 4 and spent.runs == 5 and spent.flops == pytest.approx(5e12)
    assert spent.eval_seconds == pytest.approx(5.0)  # the clock ticks once between start and finish
    assert (spent.tokens_in, spent.tokens_out, spent.proposer_calls) == (150, 50, 2)
    assert spent.cost == pytest.approx(0.01)


def test_seen_hashes_and_fingerprints(db, campaign):
    assert query.seen_hashes(db) == {"h1", "h2", "h3", "h4", "h5"}
    assert query.fingerprints(db) == {"fp1": 1, "fp2": 2, "fp4": 4}


def test_missing_rows_raise_not_found(db):
    with pytest.raises(record.NotFoundError):
        query.program(db, 1)
    with pytest.raises(record.NotFoundError):
        query.run(db, 1)
    assert query.campaign(db) is None and query.best_candidates(db) == []
