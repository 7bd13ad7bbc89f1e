"""Datasette over a campaign database: read-only, on 127.0.0.1, with the tables described and canned queries.

Datasette is an optional extra (``pip install 'scalesearch[ui]'``); this module
imports it only inside functions. A finished campaign is served immutable
(``--immutable``: SQLite opens it with ``immutable=1`` and nothing can write).
A campaign still running has committed rows in its write-ahead log, which an
immutable reader would not see and could catch half-checkpointed, so it is
served through Datasette's read-only connections (``mode=ro``) instead; no
write query is configured either way.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

HOST = "127.0.0.1"
DEFAULT_PORT = 8001
INSTALL_HINT = "Datasette is not installed; install it with: pip install 'scalesearch[ui]'  (or: pip install datasette)"

TABLES: dict[str, str] = {
    "campaign": "The campaign this file holds (one row): its spec as written (spec_toml) and as parsed (spec, JSON).",
    "programs": "Every candidate program: source, evolved blocks, parents (parent_ids, JSON), island, proposer, and "
                "how its evaluation cascade ended (status, stage 0 static .. 3 scaling runs, message). "
                "status is empty while the evaluation is pending.",
    "runs": "Proxy training runs, one per (program, N, D, seed): planned, running, then done with a status. "
            "N = n_params (non-embedding), D = n_tokens (bytes), C = flops_xla or flops_analytic, "
            "final_loss in nats per byte, loss_curve as (tokens, loss) pairs.",
    "fits": "Scaling-law fits, appended each fit round: the pooled fit (program_id empty) and one per candidate, "
            "with the law's parameters and intervals, the predicted loss at C* (loss_at_c_star, loss_low, "
            "loss_high), the allocation behind it (n_star, d_star), the probability of being best (prob_best) and "
            "how much higher its loss at C* is expected to be than the best's (expected_regret, a fraction). "
            "A candidate's newest row is its current fit.",
    "prompts": "Prompts shown to a language-model proposer, with the parents they showed.",
    "proposer_calls": "Every proposer call: model, tokens in and out, latency, outcome, cost.",
    "registrations": "The programs database's log (islands and scores) in order; replaying it rebuilds the islands.",
    "steps": "Search steps: the island and parents sampled, who proposed, how many children.",
    "invocations": "Every `scalesearch run` of the campaign: the spec it ran with (a resume may change budgets, "
                   "workers and the proposer) and what it changed (changes, JSON).",
}
COLUMNS: dict[str, dict[str, str]] = {
    "runs": {"stage": "2 = base run, 3 = scaling run chosen by active learning", "n_target": "N asked for",
             "d_target": "D asked for", "n_params": "N measured from the initialised parameters",
             "final_loss": "validation loss, nats per byte"},
    "fits": {"loss_at_c_star": "predicted loss at the target compute C*, at this candidate's compute-optimal N and D",
             "prob_best": "posterior probability that this candidate is the best at C*",
             "expected_regret": "posterior expectation of this candidate's loss at C* over the best candidate's, "
                                "less one: what picking it now is expected to cost (0.003 = 0.3%)"},
    "programs": {"stage": "last cascade stage entered: 0 static, 1 smoke, 2 base run, 3 scaling runs"},
}

LEADERBOARD_SQL = """
SELECT f.program_id AS program, round(f.loss_at_c_star, 4) AS predicted_loss,
       round(f.loss_low, 4) AS low, round(f.loss_high, 4) AS high, round(f.prob_best, 3) AS prob_best,
       f.n_runs AS runs, printf('%.3g', f.n_star) AS n_star, printf('%.3g', f.d_star) AS d_star,
       p.proposer, p.parent_ids, p.island, p.note AS change, f.round AS fit_round
  FROM fits f JOIN programs p ON p.id = f.program_id
 WHERE f.id IN (SELECT MAX(id) FROM fits WHERE kind != 'pooled' GROUP BY program_id)
   AND f.loss_at_c_star IS NOT NULL
 ORDER BY f.loss_at_c_star, f.program_id
"""
LINEAGE_SQL = """
WITH RECURSIVE ancestry(id, generation) AS (
  SELECT CAST(:id AS INTEGER), 0
  UNION
  SELECT CAST(j.value AS INTEGER), a.generation + 1
    FROM ancestry a JOIN programs p ON p.id = a.id, json_each(p.parent_ids) j
)
SELECT MIN(a.generation) AS generation, p.id AS program, p.proposer, p.parent_ids, p.status, p.stage, p.note AS change,
       (SELECT round(loss_at_c_star, 4) FROM fits WHERE program_id = p.id AND kind != 'pooled'
         ORDER BY id DESC LIMIT 1) AS predicted_loss
  FROM ancestry a JOIN programs p ON p.id = a.id
 GROUP BY p.id
 ORDER BY generation, p.id
"""
FAILURES_BY_STATUS_SQL = """
SELECT 'program' AS what, status, COUNT(*) AS n, MAX(ended) AS latest_at,
       (SELECT message FROM programs q WHERE q.status = p.status ORDER BY q.id DESC LIMIT 1) AS latest_message
  FROM programs p WHERE status IS NOT NULL AND status != 'ok' GROUP BY status
UNION ALL
SELECT 'run', status, COUNT(*), MAX(finished_at),
       (SELECT message FROM runs q WHERE q.status = r.status ORDER BY q.id DESC LIMIT 1)
  FROM runs r WHERE state = 'done' AND status != 'ok' GROUP BY status
ORDER BY what, n DESC, status
"""
FAILURES_SQL = """
SELECT p.id AS program, NULL AS run, p.stage, p.status, p.message, p.ended AS at
  FROM programs p WHERE p.status IS NOT NULL AND p.status != 'ok' AND (:status = '' OR p.status = :status)
UNION ALL
SELECT r.program_id, r.id, r.stage, r.status, r.message, r.finished_at
  FROM runs r WHERE r.state = 'done' AND r.status != 'ok' AND (:status = '' OR r.status = :status)
ORDER BY at DESC
"""
QUERIES: dict[str, dict[str, str]] = {
    "leaderboard": {"title": "Leaderboard: predicted loss at C*", "sql": LEADERBOARD_SQL,
                    "description": "Each candidate's current fit, best first: predicted loss at the target compute "
                                   "with its 90% interval, probability of being best, runs behind the fit."},
    "lineage": {"title": "A program's lineage", "sql": LINEAGE_SQL,
                "description": "The program (id) and every ancestor, by generation (0 is the program itself)."},
    "failures_by_status": {"title": "Failures by status", "sql": FAILURES_BY_STATUS_SQL,
                           "description": "How many programs and runs ended with each failing status, with the "
                                          "latest message of each."},
    "failures": {"title": "Failures", "sql": FAILURES_SQL,
                 "description": "Every failed program and run, newest first; status filters (empty for all)."},
}


def database_name(path: str | pathlib.Path) -> str:
    """The name Datasette gives the database: the file's stem."""
    return pathlib.Path(path).stem


def metadata(name: str) -> dict[str, Any]:
    """Datasette metadata for a campaign database called ``name``."""
    tables = {t: {"description": d, **({"columns": COLUMNS[t]} if t in COLUMNS else {})} for t, d in TABLES.items()}
    queries = {k: {**q, "sql": q["sql"].strip()} for k, q in QUERIES.items()}
    return {
        "title": "scalesearch campaign",
        "description": "Candidates ranked by the loss their fitted scaling law predicts at the target compute C*. "
                       "Read-only. Start with the leaderboard query.",
        "databases": {name: {"tables": tables, "queries": queries}},
    }


def is_live(path: str | pathlib.Path) -> bool:
    """True when the campaign has an unmerged write-ahead log: a runner has it open (or died holding it)."""
    wal = pathlib.Path(f"{path}-wal")
    return wal.exists() and wal.stat().st_size > 0


def available() -> bool:
    try:
        import datasette  # noqa: F401
    except ImportError:
        return False
    return True


def make_datasette(path: str | pathlib.Path, *, immutable: bool = True):
    """An in-process Datasette over the campaign (for ``ds.client`` in tests, or to serve).

    Raises:
      ImportError: Datasette is not installed.
    """
    from datasette.app import Datasette

    path = str(pathlib.Path(path).resolve())
    files, immutables = ([], [path]) if immutable else ([path], [])
    return Datasette(files, immutables=immutables, metadata=metadata(database_name(path)),
                     settings={"truncate_cells_html": 300})


def serve_command(path: str | pathlib.Path, metadata_path: str | pathlib.Path, *, port: int, immutable: bool,
                  open_browser: bool = False) -> list[str]:
    """The ``datasette serve`` command line: bound to 127.0.0.1, read-only, with the campaign metadata."""
    path = str(pathlib.Path(path).resolve())
    cmd = [sys.executable, "-m", "datasette", "serve", "--host", HOST, "--port", str(port),
           "--metadata", str(metadata_path), "--setting", "truncate_cells_html", "300"]
    cmd += ["--immutable", path] if immutable else [path]
    return cmd + (["--open"] if open_browser else [])


def write_metadata(path: str | pathlib.Path, folder: str | pathlib.Path) -> pathlib.Path:
    out = pathlib.Path(folder) / "metadata.json"
    out.write_text(json.dumps(metadata(database_name(path)), indent=2))
    return out
