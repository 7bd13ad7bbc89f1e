"""Writes to the campaign database: one transaction per recorded result.

The storage contract, which the runner and its resume rely on:

- Every function here commits exactly one transaction, or raises and commits
  nothing. Killing the process at any moment loses at most the call in progress;
  everything an earlier call returned from is on disk (WAL, synchronous=FULL).
- Ids are assigned by the database in commit order, so replaying rows by id
  replays the campaign in the order it happened.
- A run is created when it is planned (``plan_run``), marked running when it
  starts (``start_run``) and completed when it returns (``finish_run``), like
  optuna's ask and tell. A finished run is never modified: finishing or
  restarting it again raises ``FinishedRunError``. Runs planned or running when
  the process died are the pending work that a resume redoes.
- A program's outcome (status, stage, message, fingerprint) is written once,
  when its cascade ends; a second outcome raises ``FinishedProgramError``. Its
  ``stage`` only grows afterwards, as its later runs finish.
- Fits are appended, never updated: each ``record_fits`` call is one round and
  the newest fit of a candidate is its current one.
- Registrations (the programs database's log) are written in the same
  transaction as the result that caused them, so the islands that ``resume``
  rebuilds always agree with the results on disk.

Times come from the ``clock`` argument (seconds since the epoch), so tests can
inject one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import sqlite_utils

from db import rows
from db.rows import (Campaign, Fit, Invocation, Program, Prompt, ProposerCall, Registration, Run, RunResult, State,
                     Status, Step)

Clock = Callable[[], float]


class RecordError(Exception):
    """A write that the storage contract does not allow."""


class NotFoundError(RecordError, LookupError):
    """No row with that id."""


class FinishedRunError(RecordError):
    """The run is done; finished runs are never rewritten."""


class FinishedProgramError(RecordError):
    """The program's outcome is already recorded."""


class CampaignExistsError(RecordError):
    """The database already holds a campaign."""


def _row(record) -> dict:
    """The row for a new record: no id, so that the database assigns one."""
    row = rows.to_row(record)
    for key in ("id", "seq"):
        if row.get(key) is None:
            row.pop(key, None)
    return row


def _stored(record):
    """``record`` as reading it back will give it (tuples for lists, None for NaN)."""
    return rows.from_row(type(record), rows.to_row(record))


def _get(db: sqlite_utils.Database, table: str, pk: int) -> dict:
    try:
        return db[table].get(pk)
    except sqlite_utils.db.NotFoundError:
        raise NotFoundError(f"no row {pk} in {table}") from None


def _insert(db: sqlite_utils.Database, table: str, record, pk: str = "id") -> int:
    return db[table].insert(_row(record), pk=pk).last_pk


def _write_registrations(db, registrations: Sequence[Registration], now: float) -> None:
    for reg in registrations:
        _insert(db, "registrations", dataclasses.replace(reg, created=now, seq=None), pk="seq")


def create_campaign(db: sqlite_utils.Database, campaign: Campaign, *, clock: Clock = time.time) -> Campaign:
    """Store the campaign's spec and seed.

    Raises:
      CampaignExistsError: the database holds a campaign already (resume it instead).
    """
    with db.atomic():
        if db["campaign"].count:
            raise CampaignExistsError("this database already holds a campaign; resume it or use a new file")
        record = dataclasses.replace(campaign, created=clock(), id=1)
        db["campaign"].insert(rows.to_row(record), pk="id")
    return _stored(record)


def record_invocation(db: sqlite_utils.Database, invocation: Invocation, *, clock: Clock = time.time) -> Invocation:
    """Store one ``scalesearch run`` of the campaign (the spec it runs with); returns it with its id."""
    with db.atomic():
        record = dataclasses.replace(invocation, created=clock(), id=None)
        pk = _insert(db, "invocations", record)
    return _stored(dataclasses.replace(record, id=pk))


def record_program(db: sqlite_utils.Database, program: Program, *, clock: Clock = time.time) -> Program:
    """Store a proposed program, pending evaluation; returns it with its id."""
    if program.status is not None:
        raise RecordError("record a new program without a status; its outcome comes from record_program_outcome")
    with db.atomic():
        record = dataclasses.replace(program, created=clock(), id=None)
        pk = _insert(db, "programs", record)
    return _stored(dataclasses.replace(record, id=pk))


def record_program_outcome(
    db: sqlite_utils.Database,
    program_id: int,
    *,
    status: Status,
    stage: int,
    message: str = "",
    fingerprint: str | None = None,
    registrations: Sequence[Registration] = (),
    clock: Clock = time.time,
) -> Program:
    """Store how the program's cascade ended, and its registrations, in one transaction.

    Raises:
      NotFoundError: no such program.
      FinishedProgramError: its outcome is already recorded.
    """
    status = Status(status)
    with db.atomic():
        row = _get(db, "programs", program_id)
        if row["status"] is not None:
            raise FinishedProgramError(f"program {program_id} already ended with status {row['status']}")
        now = clock()
        update = {"status": status.value, "stage": max(int(stage), row["stage"]), "message": message, "ended": now}
        if fingerprint is not None:
            update["fingerprint"] = fingerprint
        db["programs"].update(program_id, update)
        _write_registrations(db, registrations, now)
    return rows.from_row(Program, {**row, **update})


def plan_run(db: sqlite_utils.Database, run: Run, *, clock: Clock = time.time) -> Run:
    """Create a run in state planned; returns it with its id."""
    if run.state is not State.PLANNED or run.status is not None:
        raise RecordError(f"a new run must be planned with no status, got state={run.state} status={run.status}")
    with db.atomic():
        _get(db, "programs", run.program_id)
        record = dataclasses.replace(run, planned_at=clock(), id=None)
        pk = _insert(db, "runs", record)
    return _stored(dataclasses.replace(record, id=pk))


def _unfinished(db: sqlite_utils.Database, run_id: int) -> dict:
    row = _get(db, "runs", run_id)
    if row["state"] == State.DONE:
        raise FinishedRunError(
            f"run {run_id} finished with status {row['status']} at {row['finished_at']}; finished runs are never rewritten"
        )
    return row


def start_run(db: sqlite_utils.Database, run_id: int, *, clock: Clock = time.time) -> Run:
    """Mark a planned (or, on resume, an interrupted running) run as running.

    Raises:
      FinishedRunError: the run is done.
    """
    with db.atomic():
        row = _unfinished(db, run_id)
        update = {"state": State.RUNNING.value, "started_at": clock()}
        db["runs"].update(run_id, update)
    return rows.from_row(Run, {**row, **update})


def finish_run(
    db: sqlite_utils.Database,
    run_id: int,
    result: RunResult,
    *,
    registrations: Sequence[Registration] = (),
    clock: Clock = time.time,
) -> Run:
    """Complete a run with its result (and the registrations it causes) in one transaction.

    The program's ``stage`` rises to the run's stage if it was lower.

    Raises:
      FinishedRunError: the run is done already.
    """
    with db.atomic():
        row = _unfinished(db, run_id)
        now = clock()
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(RunResult)}
        fields["status"] = Status(result.status)
        run = rows.from_row(Run, row)
        started = run.started_at if run.started_at is not None else now
        done = dataclasses.replace(run, **fields, state=State.DONE, started_at=started, finished_at=now)
        update = {k: v for k, v in rows.to_row(done).items() if k != "id"}
        db["runs"].update(run_id, update)
        db.execute("UPDATE programs SET stage = MAX(stage, ?) WHERE id = ?", [done.stage, done.program_id])
        _write_registrations(db, registrations, now)
    return _stored(done)


def record_fits(
    db: sqlite_utils.Database,
    fits: Sequence[Fit],
    *,
    registrations: Sequence[Registration] = (),
    clock: Clock = time.time,
) -> list[Fit]:
    """Append one round of fits (pooled and per candidate) and the re-scorings it causes."""
    with db.atomic():
        now = clock()
        round_ = (db.execute("SELECT MAX(round) FROM fits").fetchone()[0] or 0) + 1
        out = []
        for fit in fits:
            record = dataclasses.replace(fit, round=round_, created=now, id=None)
            out.append(_stored(dataclasses.replace(record, id=_insert(db, "fits", record))))
        _write_registrations(db, registrations, now)
    return out


def record_prompt(db: sqlite_utils.Database, prompt: Prompt, *, clock: Clock = time.time) -> Prompt:
    with db.atomic():
        record = dataclasses.replace(prompt, created=clock(), id=None)
        pk = _insert(db, "prompts", record)
    return _stored(dataclasses.replace(record, id=pk))


def record_proposer_call(db: sqlite_utils.Database, call: ProposerCall, *, clock: Clock = time.time) -> ProposerCall:
    with db.atomic():
        record = dataclasses.replace(call, created=clock(), id=None)
        pk = _insert(db, "proposer_calls", record)
    return _stored(dataclasses.replace(record, id=pk))


def record_registrations(
    db: sqlite_utils.Database, registrations: Sequence[Registration], *, clock: Clock = time.time
) -> None:
    """Append registrations on their own (the seed's, for instance)."""
    with db.atomic():
        _write_registrations(db, registrations, clock())


# ----------------------------------------------------------------------------- the runner's compound writes


def record_step(
    db: sqlite_utils.Database,
    step: Step,
    programs: Sequence[Program],
    *,
    prompt: Prompt | None = None,
    calls: Sequence[ProposerCall] = (),
    clock: Clock = time.time,
) -> tuple[Step, list[Program]]:
    """A whole proposal in one transaction: its prompt, calls, step row and child programs."""
    with db.atomic():
        now = clock()
        prompt_id = record_prompt(db, prompt, clock=clock).id if prompt is not None else None
        for call in calls:
            record_proposer_call(db, dataclasses.replace(call, prompt_id=prompt_id), clock=clock)
        stored = dataclasses.replace(step, prompt_id=prompt_id, n_children=len(programs), created=now, id=None)
        step_id = _insert(db, "steps", stored)
        out = []
        for program in programs:
            record = record_program(db, dataclasses.replace(program, prompt_id=prompt_id), clock=clock)
            db["programs"].update(record.id, {"step_id": step_id})
            out.append(record)
    return _stored(dataclasses.replace(stored, id=step_id)), out


def record_cascade(
    db: sqlite_utils.Database,
    program_id: int,
    *,
    status: Status,
    stage: int,
    message: str = "",
    fingerprint: str | None = None,
    runs: Sequence[tuple[Run, RunResult]] = (),
    registrations: Sequence[Registration] = (),
    clock: Clock = time.time,
) -> Program:
    """A candidate's whole cascade (its training runs and outcome) in one transaction.

    Either all of it is committed or none, so a resumed campaign redoes a
    candidate entirely or not at all.
    """
    with db.atomic():
        for run, result in runs:
            planned = plan_run(db, run, clock=clock)
            finish_run(db, planned.id, result, clock=clock)
        return record_program_outcome(db, program_id, status=status, stage=stage, message=message,
                                      fingerprint=fingerprint, registrations=registrations, clock=clock)


def plan_runs_with_fits(
    db: sqlite_utils.Database, fits: Sequence[Fit], runs: Sequence[Run], *,
    registrations: Sequence[Registration] = (), clock: Clock = time.time,
) -> tuple[list[Fit], list[Run]]:
    """A fit round and the scaling runs it plans, in one transaction."""
    with db.atomic():
        stored = record_fits(db, fits, registrations=registrations, clock=clock) if fits else []
        if not fits and registrations:
            record_registrations(db, registrations, clock=clock)
        planned = [plan_run(db, run, clock=clock) for run in runs]
    return stored, planned
