"""The campaign database's schema: sqlite-utils migrations, one function per change.

``connect(path)`` is the only way in: it opens the file, switches it to WAL with
full synchronous commits, turns on foreign keys, and applies any pending
migration, so an old campaign file is upgraded when it is opened. A new schema
change is a new decorated function at the end of this file, never an edit of an
old one (files in the wild have the old ones applied already).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import sqlite3
from collections.abc import Iterator

import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("scalesearch")

TABLES = ("campaign", "programs", "runs", "fits", "prompts", "proposer_calls", "registrations", "steps",
          "invocations")


def connect(path: str | pathlib.Path, *, check_same_thread: bool = True) -> sqlite_utils.Database:
    """Open (or create) the campaign database at ``path`` (``":memory:"`` for tests).

    Args:
      path: the campaign file, or ``":memory:"``.
      check_same_thread: False lets other threads use the connection; the caller
        must then serialise the calls (a lock), or two threads' transactions mix.

    Raises:
      sqlite3.DatabaseError: the file is not a SQLite database.
    """
    db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=check_same_thread))
    db.execute("PRAGMA busy_timeout=10000")  # first: another process may be mid-commit
    if str(path) != ":memory:":
        db.enable_wal()
        # FULL: a commit survives power loss too, and commits are rare (one per result).
        db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    migrations.apply(db)
    return db


def connect_readonly(path: str | pathlib.Path) -> sqlite_utils.Database:
    """Open an existing campaign file for reading only, beside a running campaign.

    Raises:
      FileNotFoundError: there is no such file.
    """
    if not pathlib.Path(path).exists():
        raise FileNotFoundError(f"no campaign database at {path}")
    conn = sqlite3.connect(f"file:{pathlib.Path(path).resolve()}?mode=ro", uri=True)
    conn.execute("PRAGMA busy_timeout=10000")
    return sqlite_utils.Database(conn)


class CampaignBusy(RuntimeError):
    """Another process is running this campaign."""


@contextlib.contextmanager
def writer_lock(path: str | pathlib.Path) -> Iterator[None]:
    """Hold the campaign's single-writer lock (``PATH.lock``) for the with-block.

    SQLite keeps two writers' transactions apart, but two ``scalesearch run`` on
    one campaign would each propose, train and plan from the same state and commit
    both, doubling the work and breaking the replay from the seed. The lock is
    flock(2) on a file beside the database (not on the database, whose locks are
    SQLite's), so the kernel drops it when its holder dies, even on kill -9.

    Raises:
      CampaignBusy: another process holds it.
    """
    lock = pathlib.Path(f"{path}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CampaignBusy(f"another scalesearch run (pid {holder}) is running the campaign in {path}; "
                               "wait for it to stop, or stop it (Ctrl-C) and run again to resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@migrations()
def m001_campaign(db: sqlite_utils.Database) -> None:
    db["campaign"].create(
        {"id": int, "name": str, "spec_toml": str, "spec": str, "seed": int, "created": float},
        pk="id",
        not_null={"spec_toml", "spec", "seed"},
    )


@migrations()
def m002_prompts(db: sqlite_utils.Database) -> None:
    db["prompts"].create(
        {"id": int, "text": str, "island": int, "parent_ids": str, "created": float},
        pk="id",
        not_null={"text"},
    )


@migrations()
def m003_programs(db: sqlite_utils.Database) -> None:
    db["programs"].create(
        {
            "id": int,
            "source": str,
            "blocks": str,
            "parent_ids": str,
            "island": int,
            "proposer": str,
            "prompt_id": int,
            "source_hash": str,
            "note": str,
            "fingerprint": str,
            "status": str,
            "message": str,
            "stage": int,
            "created": float,
            "ended": float,
        },
        pk="id",
        not_null={"source", "proposer", "stage"},
        foreign_keys=[("prompt_id", "prompts", "id")],
    )
    db["programs"].create_index(["status"])
    db["programs"].create_index(["source_hash"])
    db["programs"].create_index(["fingerprint"])


@migrations()
def m004_runs(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": int,
            "program_id": int,
            "stage": int,
            "n_target": float,
            "d_target": float,
            "seed": int,
            "reason": str,
            "state": str,
            "status": str,
            "n_params": int,
            "n_active_params": int,
            "n_tokens": int,
            "flops_analytic": float,
            "flops_xla": float,
            "final_loss": float,
            "loss_curve": str,
            "timings": str,
            "metrics": str,
            "jax_version": str,
            "xla_version": str,
            "device": str,
            "isolation": str,
            "message": str,
            "planned_at": float,
            "started_at": float,
            "finished_at": float,
        },
        pk="id",
        not_null={"program_id", "stage", "state"},
        foreign_keys=[("program_id", "programs", "id")],
    )
    db["runs"].create_index(["program_id"])
    db["runs"].create_index(["state"])


@migrations()
def m005_fits(db: sqlite_utils.Database) -> None:
    db["fits"].create(
        {
            "id": int,
            "program_id": int,
            "kind": str,
            "law": str,
            "params": str,
            "intervals": str,
            "c_star": float,
            "loss_at_c_star": float,
            "loss_low": float,
            "loss_high": float,
            "n_star": float,
            "d_star": float,
            "prob_best": float,
            "n_runs": int,
            "round": int,
            "created": float,
        },
        pk="id",
        not_null={"kind", "law", "round"},
        foreign_keys=[("program_id", "programs", "id")],
    )
    db["fits"].create_index(["program_id", "round"])


@migrations()
def m006_proposer_calls(db: sqlite_utils.Database) -> None:
    db["proposer_calls"].create(
        {
            "id": int,
            "model": str,
            "prompt_id": int,
            "tokens_in": int,
            "tokens_out": int,
            "latency_s": float,
            "outcome": str,
            "cost": float,
            "n_programs": int,
            "message": str,
            "created": float,
        },
        pk="id",
        not_null={"model", "outcome"},
        foreign_keys=[("prompt_id", "prompts", "id")],
    )


@migrations()
def m007_registrations(db: sqlite_utils.Database) -> None:
    db["registrations"].create(
        {"seq": int, "program_id": int, "island": int, "score": float, "stage": int, "length": int, "created": float},
        pk="seq",
        not_null={"program_id", "score", "stage", "length"},
        foreign_keys=[("program_id", "programs", "id")],
    )


@migrations()
def m008_steps(db: sqlite_utils.Database) -> None:
    # One row per search step (one proposal), committed with its children so a
    # resumed campaign never proposes the same step twice.
    db["steps"].create(
        {"id": int, "island": int, "parent_ids": str, "proposer": str, "prompt_id": int, "n_children": int,
         "message": str, "created": float},
        pk="id",
        not_null={"proposer", "n_children"},
        foreign_keys=[("prompt_id", "prompts", "id")],
    )
    db["programs"].add_column("step_id", int)


@migrations()
def m009_invocations(db: sqlite_utils.Database) -> None:
    # One row per `scalesearch run`: a resume may change the budgets, workers or
    # proposer, and status must show the limits the campaign now runs under.
    db["invocations"].create(
        {"id": int, "spec_toml": str, "spec": str, "changes": str, "created": float},
        pk="id",
        not_null={"spec_toml", "spec"},
    )


@migrations()
def m010_fit_expected_regret(db: sqlite_utils.Database) -> None:
    # P(best) cannot say whether the candidates that may beat the leader do so by 0.1% or by 5%;
    # the expected regret (how much higher a candidate's loss at C* is expected to be than the best's) can.
    db["fits"].add_column("expected_regret", float)
