"""What the inspection commands show, as plain dicts: pure reads of a campaign database.

``status``, ``top``, ``show`` and ``compare`` print these (``search.views``
renders them as rich tables, ``--json`` prints them as they are), and the
tests check them directly. Nothing here writes, imports JAX or refits.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import sqlite3
from typing import Any

import sqlite_utils

from db import query
from db.rows import Fit, Program, Run, Stage, State, Status

TOP_IN_STATUS = 5
RECENT_FAILURES = 5
# budget key in the spec -> (what it counts, how to read it from query.Spent)
BUDGETS = {
    "candidates": ("programs evaluated", lambda s: s.candidates),
    "proxy_flops": ("proxy training FLOPs", lambda s: s.flops),
    "llm_tokens": ("language-model tokens", lambda s: s.tokens_in + s.tokens_out),
}


class CampaignFileError(ValueError):
    """The path is not a campaign database; the message says what it is instead."""


def open_readonly(path: str | pathlib.Path) -> sqlite_utils.Database:
    """Open a campaign database for reading only (``mode=ro``): inspection never writes, migrates or creates.

    Raises:
      CampaignFileError: no such file, not SQLite, or not a campaign database.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise CampaignFileError(f"{path}: no such campaign database (`scalesearch run SPEC` creates one)")
    db = sqlite_utils.Database(sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True))
    db.execute("PRAGMA busy_timeout=10000")  # a running campaign may be committing
    try:
        tables = db.table_names()
    except sqlite3.DatabaseError as e:
        raise CampaignFileError(f"{path} is not a SQLite database ({e})") from None
    if "campaign" not in tables or "programs" not in tables:
        raise CampaignFileError(f"{path} is not a scalesearch campaign database (it has tables {tables})")
    return db


def _spec(db: sqlite_utils.Database) -> dict[str, Any]:
    """The spec the campaign runs under now (a resume may have changed its budgets or proposer)."""
    return query.current_spec(db)


def fit_dict(fit: Fit | None) -> dict[str, Any] | None:
    """A candidate's fit as the commands show it."""
    if fit is None:
        return None
    return {"round": fit.round, "law": fit.law, "params": dict(fit.params),
            "intervals": {k: list(v) for k, v in fit.intervals.items()}, "c_star": fit.c_star,
            "loss": fit.loss_at_c_star, "low": fit.loss_low, "high": fit.loss_high, "n_star": fit.n_star,
            "d_star": fit.d_star, "prob_best": fit.prob_best, "expected_regret": fit.expected_regret,
            "n_runs": fit.n_runs}


def _seconds(run: Run) -> float | None:
    """Wall time of the run: as the evaluator measured it, else from when it was started and finished."""
    for key in ("wall_s", "stage_wall_s", "train_s"):
        if isinstance((run.timings or {}).get(key), (int, float)):
            return float(run.timings[key])
    return (run.finished_at - run.started_at) if run.finished_at and run.started_at else None


def run_dict(run: Run) -> dict[str, Any]:
    return {"id": run.id, "stage": Stage(run.stage).name.lower(), "state": str(run.state),
            "status": None if run.status is None else str(run.status), "n_params": run.n_params or run.n_target,
            "n_tokens": run.n_tokens or run.d_target, "flops": run.flops, "seed": run.seed, "loss": run.final_loss,
            "seconds": _seconds(run),
            "reason": run.reason, "message": run.message}


def _program_summary(p: Program) -> dict[str, Any]:
    return {"id": p.id, "proposer": p.proposer, "parent_ids": list(p.parent_ids), "island": p.island,
            "status": None if p.status is None else str(p.status), "stage": Stage(p.stage).name.lower(),
            "note": p.note, "message": p.message, "created": p.created}


# ----------------------------------------------------------------------------- leaderboard and status


def leaderboard(db: sqlite_utils.Database, k: int | None = None) -> list[dict[str, Any]]:
    """Candidates by predicted loss at C*, best first, with interval, P(best), expected regret, runs and ancestry."""
    base = query.base_losses(db)
    out = []
    for rank, r in enumerate(query.best_candidates(db, k), 1):
        out.append({"rank": rank, **_program_summary(r.program), **fit_dict(r.fit),
                    "base_loss": base.get(r.program.id)})
    return out


def _budgets(spec: dict, spent: query.Spent, elapsed_h: float) -> list[dict[str, Any]]:
    limits = spec.get("budget", {})
    rows = [{"name": name, "what": what, "limit": limits.get(name) or None, "spent": read(spent)}
            for name, (what, read) in BUDGETS.items()]
    rows.append({"name": "wall_hours", "what": "hours of the latest `run` (limit: per `run`)",
                 "limit": limits.get("wall_hours") or None, "spent": elapsed_h})
    for row in rows:
        row["fraction"] = row["spent"] / row["limit"] if row["limit"] else None
    return rows


def _last_activity(db: sqlite_utils.Database) -> float | None:
    sql = """SELECT MAX(t) FROM (SELECT MAX(created) AS t FROM programs UNION ALL SELECT MAX(ended) FROM programs
             UNION ALL SELECT MAX(finished_at) FROM runs UNION ALL SELECT MAX(created) FROM fits)"""
    return db.execute(sql).fetchone()[0]


def campaign_status(db: sqlite_utils.Database, top: int = TOP_IN_STATUS) -> dict[str, Any]:
    """Progress, budgets spent, failures by status and the current top candidates."""
    campaign, spec = query.campaign(db), _spec(db)
    counts, spent = query.status_counts(db), query.spent(db)
    last = _last_activity(db)
    created = campaign.created if campaign and campaign.created else last
    rounds = query.fit_rounds(db)
    invocations = query.invocations(db)
    # wall_hours limits each `run`: count from the latest one's start (from creation in files without the record).
    started = invocations[-1].created if invocations else created
    return {
        "campaign": {"name": campaign.name if campaign else None, "seed": campaign.seed if campaign else None,
                     "created": created, "last_activity": last, "target_flops": spec.get("target_flops"),
                     "inference_tokens": spec.get("inference_tokens"), "fit_law": spec.get("fit_law")},
        "counts": counts,
        "failures": {table: {s: n for s, n in c.items() if s not in ("ok", "pending")} for table, c in counts.items()},
        "recent_failures": [dataclasses.asdict(f) | {"status": str(f.status)}
                            for f in query.failures(db, limit=RECENT_FAILURES)],
        "spent": dataclasses.asdict(spent),
        "budgets": _budgets(spec, spent, max((last or 0) - (started or 0), 0.0) / 3600.0),
        "invocations": {"count": len(invocations), "latest": invocations[-1].created if invocations else None,
                        "changes": list(invocations[-1].changes) if invocations else []},
        "fit_rounds": len(rounds),
        "top": leaderboard(db, top),
    }


# ----------------------------------------------------------------------------- one program, two programs


def source_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    """A unified diff of two program sources ("" when they are the same)."""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), old_name, new_name)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _rank(db: sqlite_utils.Database, program_id: int) -> int | None:
    return next((i for i, r in enumerate(query.best_candidates(db), 1) if r.program.id == program_id), None)


def program_detail(db: sqlite_utils.Database, program_id: int) -> dict[str, Any]:
    """Source, diff against its first parent, runs, fitted law and its history, lineage and children.

    Raises:
      db.record.NotFoundError: no such program.
    """
    program = query.program(db, program_id)
    latest = query.latest_fits(db).get(program_id)
    base = query.base_losses(db)
    parent = query.program(db, program.parent_ids[0]) if program.parent_ids else None
    return {
        **_program_summary(program),
        "source": program.source,
        "parent_diff": source_diff(parent.source, program.source, f"program {parent.id}", f"program {program_id}")
        if parent else None,
        "runs": [run_dict(r) for r in query.runs(db, program_id)],
        "fit": fit_dict(latest),
        "rank": _rank(db, program_id),
        "fit_history": [{"round": f.round, "loss": f.loss_at_c_star, "low": f.loss_low, "high": f.loss_high,
                         "prob_best": f.prob_best, "n_runs": f.n_runs} for f in query.fits_of(db, program_id)],
        "lineage": [{**_program_summary(p), "base_loss": base.get(p.id)} for p in query.lineage(db, program_id)],
        "children": [p.id for p in query.children(db, program_id)],
    }


def _common_ancestor(db: sqlite_utils.Database, a: int, b: int) -> int | None:
    theirs = {p.id for p in query.lineage(db, b)}
    return next((p.id for p in query.lineage(db, a) if p.id in theirs), None)


def _shared_runs(db: sqlite_utils.Database, a: int, b: int) -> list[dict[str, Any]]:
    """Runs of both at the same requested (N, D) and seed: a like-for-like comparison."""
    def ok(pid):
        return {(r.n_target, r.d_target, r.seed): r.final_loss
                for r in query.runs(db, pid, state=State.DONE, status=Status.OK) if r.final_loss is not None}

    mine, theirs = ok(a), ok(b)
    return [{"n": n, "d": d, "seed": s, "loss_a": mine[n, d, s], "loss_b": theirs[n, d, s],
             "delta": theirs[n, d, s] - mine[n, d, s]} for (n, d, s) in sorted(set(mine) & set(theirs))]


def comparison(db: sqlite_utils.Database, a: int, b: int) -> dict[str, Any]:
    """Two candidates side by side: predictions, laws, shared runs, the diff from a to b.

    Raises:
      db.record.NotFoundError: either program does not exist.
    """
    pa, pb = query.program(db, a), query.program(db, b)
    fits = query.latest_fits(db)
    fa, fb = fits.get(a), fits.get(b)
    verdict = None
    if fa and fb and fa.loss_at_c_star is not None and fb.loss_at_c_star is not None:
        better, worse = (fa, fb) if fa.loss_at_c_star <= fb.loss_at_c_star else (fb, fa)
        overlap = better.loss_high is not None and worse.loss_low is not None and better.loss_high >= worse.loss_low
        verdict = {"better": better.program_id, "margin": worse.loss_at_c_star - better.loss_at_c_star,
                   "intervals_overlap": overlap}
    return {
        "a": {**_program_summary(pa), "fit": fit_dict(fa), "rank": _rank(db, a)},
        "b": {**_program_summary(pb), "fit": fit_dict(fb), "rank": _rank(db, b)},
        "verdict": verdict,
        "common_ancestor": _common_ancestor(db, a, b),
        "shared_runs": _shared_runs(db, a, b),
        "diff": source_diff(pa.source, pb.source, f"program {a}", f"program {b}"),
    }
