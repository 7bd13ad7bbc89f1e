"""Reads from the campaign database: what the runner, the CLI and the user ask.

Every function returns frozen records (``db.rows``) in a stable order (by id,
which is commit order, unless it says otherwise), so that a resumed campaign
sees the same sequence as one that never stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import sqlite_utils

from db import rows
from db.record import NotFoundError
from db.rows import Campaign, Failure, Fit, Invocation, Program, Registration, Run, Stage, State, Status


@dataclasses.dataclass(frozen=True)
class Ranked:
    """A candidate with its current fit, as the leaderboard shows it."""

    program: Program
    fit: Fit


@dataclasses.dataclass(frozen=True)
class Spent:
    """What the campaign has used so far, against its budgets.

    Attributes:
      candidates: programs whose evaluation ended (any status), seeds included.
      runs: runs done.
      flops: training FLOPs of the runs done (XLA's count where given, else analytic).
      eval_seconds: wall time of the runs done, summed.
      tokens_in, tokens_out: language-model tokens.
      cost: language-model cost, where prices were given.
      proposer_calls: calls made to proposers.
    """

    candidates: int = 0
    runs: int = 0
    flops: float = 0.0
    eval_seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    proposer_calls: int = 0


def _records(cls, found: Iterable[dict]) -> list:
    return [rows.from_row(cls, row) for row in found]


def campaign(db: sqlite_utils.Database) -> Campaign | None:
    """The campaign stored in this file, or None for a fresh file."""
    found = list(db["campaign"].rows_where("id = 1"))
    return rows.from_row(Campaign, found[0]) if found else None


def invocations(db: sqlite_utils.Database) -> list[Invocation]:
    """Every ``scalesearch run`` of the campaign, oldest first (none in files from before they were recorded).

    A file opened read-only is not migrated, so an old one may lack the table.
    """
    if not db["invocations"].exists():
        return []
    return _records(Invocation, db["invocations"].rows_where(order_by="id"))


def current_spec(db: sqlite_utils.Database) -> dict:
    """The spec the campaign runs (or last ran) under: the newest invocation's, else the one it was created with.

    They differ only in what a resume may change (budgets, workers, the proposer).
    """
    found = invocations(db)
    if found:
        return found[-1].spec
    stored = campaign(db)
    return stored.spec if stored else {}


def program(db: sqlite_utils.Database, program_id: int) -> Program:
    """Raises NotFoundError if there is no such program."""
    found = list(db["programs"].rows_where("id = ?", [program_id]))
    if not found:
        raise NotFoundError(f"no program {program_id}")
    return rows.from_row(Program, found[0])


def programs(db: sqlite_utils.Database, *, status: Status | None = None) -> list[Program]:
    """All programs in id order, or those that ended with ``status``."""
    if status is None:
        return _records(Program, db["programs"].rows_where(order_by="id"))
    return _records(Program, db["programs"].rows_where("status = ?", [Status(status).value], order_by="id"))


def run(db: sqlite_utils.Database, run_id: int) -> Run:
    """Raises NotFoundError if there is no such run."""
    found = list(db["runs"].rows_where("id = ?", [run_id]))
    if not found:
        raise NotFoundError(f"no run {run_id}")
    return rows.from_row(Run, found[0])


def runs(
    db: sqlite_utils.Database, program_id: int | None = None, *, state: State | None = None, status: Status | None = None
) -> list[Run]:
    """Runs in id order, optionally of one program, in one state, with one status."""
    where, args = [], []
    for column, value in (("program_id", program_id), ("state", state), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value.value if isinstance(value, (State, Status)) else value)
    return _records(Run, db["runs"].rows_where(" AND ".join(where) or None, args, order_by="id"))


def lineage(db: sqlite_utils.Database, program_id: int) -> list[Program]:
    """The program and its ancestors, nearest first (breadth-first, each once)."""
    out, seen, queue = [], {program_id}, [program_id]
    while queue:
        record = program(db, queue.pop(0))
        out.append(record)
        for parent in record.parent_ids:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return out


def pending_programs(db: sqlite_utils.Database) -> list[Program]:
    """Programs recorded but whose cascade has not ended: a resume evaluates them again."""
    return _records(Program, db["programs"].rows_where("status IS NULL", order_by="id"))


def pending_runs(db: sqlite_utils.Database) -> list[Run]:
    """Runs planned or running but not finished: a resume redoes them."""
    where = "state != ?"
    return _records(Run, db["runs"].rows_where(where, [State.DONE.value], order_by="id"))


def failures(
    db: sqlite_utils.Database, *, limit: int | None = None, status: Status | None = None, island: int | None = None
) -> list[Failure]:
    """Failed programs and failed runs, newest first: what the next prompt shows.

    A run's failure is listed once, under its run; a program's own failure (the
    cascade stopped it) under the program.
    """
    sql = """
        SELECT id AS program_id, stage, status, message, NULL AS run_id, ended AS at, island
          FROM programs WHERE status IS NOT NULL AND status != 'ok'
        UNION ALL
        SELECT runs.program_id, runs.stage, runs.status, runs.message, runs.id, runs.finished_at, programs.island
          FROM runs JOIN programs ON programs.id = runs.program_id
         WHERE runs.state = 'done' AND runs.status != 'ok' AND (programs.status IS NULL OR programs.status = 'ok')
    """
    where, args = [], []
    if status is not None:
        where.append("status = ?")
        args.append(Status(status).value)
    if island is not None:
        where.append("island = ?")
        args.append(island)
    sql = f"SELECT * FROM ({sql}) {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY at DESC, program_id DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [rows.from_row(Failure, row) for row in db.query(sql, args)]


def status_counts(db: sqlite_utils.Database) -> dict[str, dict[str, int]]:
    """``{"programs": {status: n}, "runs": {status: n}}``; pending ones counted under ``"pending"``."""
    out = {}
    for table, pending in (("programs", "status IS NULL"), ("runs", "state != 'done'")):
        sql = f"SELECT CASE WHEN {pending} THEN 'pending' ELSE status END AS s, COUNT(*) AS n FROM {table} GROUP BY s"
        out[table] = {row["s"]: row["n"] for row in db.query(sql)}
    return out


def latest_fits(db: sqlite_utils.Database) -> dict[int | None, Fit]:
    """Each candidate's newest fit by program id; the newest pooled fit under None."""
    sql = """
        SELECT * FROM fits WHERE id IN (
            SELECT MAX(id) FROM fits WHERE kind != 'pooled' GROUP BY program_id
            UNION SELECT MAX(id) FROM fits WHERE kind = 'pooled')
        ORDER BY id
    """
    out = {}
    for fit in (rows.from_row(Fit, row) for row in db.query(sql)):
        out[None if fit.kind == "pooled" else fit.program_id] = fit
    return out


def best_candidates(db: sqlite_utils.Database, k: int | None = None) -> list[Ranked]:
    """Candidates by their current predicted loss at C*, lowest first (ties by id).

    Candidates without a prediction are left out: they have no fit yet.
    """
    fits = [f for key, f in latest_fits(db).items() if key is not None and f.loss_at_c_star is not None]
    fits.sort(key=lambda f: (f.loss_at_c_star, f.program_id))
    fits = fits[:k] if k is not None else fits
    return [Ranked(program(db, f.program_id), f) for f in fits]


def base_losses(db: sqlite_utils.Database) -> dict[int, float]:
    """Each program's base-run loss (the mean over seeds of its ok base runs)."""
    sql = """
        SELECT program_id, AVG(final_loss) AS loss FROM runs
         WHERE stage = ? AND state = 'done' AND status = 'ok' AND final_loss IS NOT NULL
         GROUP BY program_id ORDER BY program_id
    """
    return {row["program_id"]: row["loss"] for row in db.query(sql, [int(Stage.BASE)])}


def registrations(db: sqlite_utils.Database) -> list[Registration]:
    """The programs database's log in commit order: replay it to rebuild the islands."""
    return _records(Registration, db["registrations"].rows_where(order_by="seq"))


def seen_hashes(db: sqlite_utils.Database) -> set[str]:
    """Normalised-source hashes of every program recorded: the mutator must not repeat one."""
    return {row["source_hash"] for row in db.query("SELECT DISTINCT source_hash FROM programs") if row["source_hash"]}


def fingerprints(db: sqlite_utils.Database) -> dict[str, int]:
    """Fingerprint -> the first program that had it, for the evaluator's duplicate check."""
    sql = "SELECT fingerprint, MIN(id) AS id FROM programs WHERE fingerprint IS NOT NULL GROUP BY fingerprint"
    return {row["fingerprint"]: row["id"] for row in db.query(sql)}


def spent(db: sqlite_utils.Database) -> Spent:
    """Totals to hold against the campaign's budgets."""
    run_sql = """
        SELECT COUNT(*) AS runs, COALESCE(SUM(COALESCE(flops_xla, flops_analytic, 0)), 0) AS flops,
               COALESCE(SUM(finished_at - started_at), 0) AS eval_seconds
          FROM runs WHERE state = 'done'
    """
    call_sql = """
        SELECT COUNT(*) AS proposer_calls, COALESCE(SUM(tokens_in), 0) AS tokens_in,
               COALESCE(SUM(tokens_out), 0) AS tokens_out, COALESCE(SUM(cost), 0) AS cost
          FROM proposer_calls
    """
    totals = {**next(db.query(run_sql)), **next(db.query(call_sql))}
    totals["candidates"] = db.execute("SELECT COUNT(*) FROM programs WHERE status IS NOT NULL").fetchone()[0]
    return Spent(**totals)


# ----------------------------------------------------------------------------- the runner's reads


def step_count(db: sqlite_utils.Database) -> int:
    """Search steps recorded so far (each seeds its own random generator)."""
    return db.execute("SELECT COUNT(*) FROM steps").fetchone()[0]


def latest_pooled_runs(db: sqlite_utils.Database) -> int:
    """How many ok runs the newest pooled fit saw (0 when there is none)."""
    row = db.execute("SELECT n_runs FROM fits WHERE kind = 'pooled' ORDER BY id DESC LIMIT 1").fetchone()
    return int(row[0]) if row else 0


def incumbent_curves(db: sqlite_utils.Database, program_ids, stage: int = 2) -> list[list[list[float]]]:
    """Base-run curves of these programs as ``[[step, tokens, loss], ...]`` (the early-stopping reference)."""
    out = []
    for pid in program_ids:
        for run in runs(db, pid, state=State.DONE, status=Status.OK):
            if run.stage == stage and run.loss_curve:
                out.append([[i + 1, tokens, loss] for i, (tokens, loss) in enumerate(run.loss_curve)])
                break
    return out


# ----------------------------------------------------------------------------- inspection reads (status, show, plots)


@dataclasses.dataclass(frozen=True)
class RoundBest:
    """The leader of one fit round: the search's progress as the plots show it.

    Attributes:
      round: the fit round.
      created: when it was recorded.
      fit: the candidate fit with the lowest predicted loss at C* in that round.
      n_candidates: candidates with a prediction in that round.
    """

    round: int
    created: float
    fit: Fit
    n_candidates: int


def fit_rounds(db: sqlite_utils.Database) -> list[RoundBest]:
    """Each fit round's best candidate by predicted loss at C* (ties by id), in round order."""
    sql = """
        SELECT f.*, r.n FROM fits f JOIN (
            SELECT round, COUNT(*) AS n FROM fits
             WHERE kind != 'pooled' AND loss_at_c_star IS NOT NULL GROUP BY round) r ON r.round = f.round
         WHERE f.id = (SELECT id FROM fits g WHERE g.round = f.round AND g.kind != 'pooled'
                          AND g.loss_at_c_star IS NOT NULL ORDER BY g.loss_at_c_star, g.program_id LIMIT 1)
         ORDER BY f.round
    """
    out = []
    for row in db.query(sql):
        n = row.pop("n")
        fit = rows.from_row(Fit, row)
        out.append(RoundBest(fit.round, fit.created, fit, n))
    return out


def fits_of(db: sqlite_utils.Database, program_id: int) -> list[Fit]:
    """Every fit of one candidate, oldest first: how its prediction moved as runs came in."""
    return _records(Fit, db["fits"].rows_where("program_id = ? AND kind != 'pooled'", [program_id], order_by="id"))


def children(db: sqlite_utils.Database, program_id: int) -> list[Program]:
    """Programs derived from ``program_id`` (it is among their parents), in id order."""
    sql = "SELECT p.* FROM programs p, json_each(p.parent_ids) j WHERE j.value = ? GROUP BY p.id ORDER BY p.id"
    return [rows.from_row(Program, row) for row in db.query(sql, [program_id])]
