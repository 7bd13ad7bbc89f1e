"""status, top, show and compare on a small recorded campaign: the numbers, the text, the JSON, the errors."""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for recorded_campaign (tests/ is not a package)

from db import query  # noqa: E402
from recorded_campaign import BEST, FAILED, OK_PROGRAMS, TARGET_FLOPS, campaign_path  # noqa: E402
from search import inspection  # noqa: E402
from search.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def path() -> pathlib.Path:
    return campaign_path()


@pytest.fixture(scope="module")
def db(path):
    database = inspection.open_readonly(path)
    yield database
    database.conn.close()


def _json(capsys, argv) -> object:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_the_leaderboard_ranks_every_fitted_candidate_by_predicted_loss_with_its_interval(db):
    rows = inspection.leaderboard(db)
    assert {r["id"] for r in rows} == set(OK_PROGRAMS)
    assert rows[0]["id"] == BEST and [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in rows] == sorted(r["loss"] for r in rows)
    for r in rows:
        assert r["low"] < r["loss"] < r["high"] and r["c_star"] == TARGET_FLOPS
        assert r["n_runs"] >= 2 and 0 <= r["prob_best"] <= 1 and r["base_loss"] > r["loss"]
    assert sum(r["prob_best"] for r in rows) == pytest.approx(1.0, abs=0.01)


def test_each_candidates_expected_regret_is_at_least_its_predicted_gap_to_the_leader(db):
    # min_j L_j <= L_leader in every draw, and E[exp(x)] >= exp(E[x]) (Jensen): a candidate's expected
    # regret is at least its predicted loss over the leader's, less one (up to the draws' Monte Carlo error).
    rows = inspection.leaderboard(db)
    leader = rows[0]
    assert leader["expected_regret"] == min(r["expected_regret"] for r in rows) and leader["expected_regret"] >= 0
    for r in rows[1:]:
        assert r["expected_regret"] >= r["loss"] / leader["loss"] - 1.0 - 1e-3


def test_status_counts_outcomes_budgets_and_failures_and_shows_the_top_five(db):
    s = inspection.campaign_status(db)
    assert s["campaign"]["name"] == "inspect-test" and s["campaign"]["target_flops"] == TARGET_FLOPS
    assert s["counts"]["programs"]["ok"] == len(OK_PROGRAMS)
    assert s["failures"]["programs"] == {str(v): 1 for v in FAILED.values()}
    assert s["failures"]["runs"] == {"diverged": 1, "pruned": 1, "timeout": 1}
    budgets = {b["name"]: b for b in s["budgets"]}
    assert budgets["candidates"]["spent"] == 10 and budgets["candidates"]["fraction"] == pytest.approx(10 / 40)
    assert budgets["proxy_flops"]["limit"] is None  # 0 in the spec means no limit
    assert s["spent"]["runs"] == 16 and s["fit_rounds"] == 5
    assert [r["id"] for r in s["top"]] == [r["id"] for r in inspection.leaderboard(db, 5)]
    assert s["recent_failures"][0]["status"] == "timeout"  # newest first


def test_show_gives_the_diff_against_the_parent_runs_law_history_and_lineage(db):
    d = inspection.program_detail(db, BEST)
    assert d["parent_ids"] == [3] and d["rank"] == 1
    assert '-        "z_loss": 1e-4,' in d["parent_diff"] and '+        "z_loss": 2e-4,' in d["parent_diff"]
    assert [p["id"] for p in d["lineage"]] == [5, 3, 1] and d["children"] == [8, 10]
    assert [r["stage"] for r in d["runs"]] == ["base", "scaling", "scaling", "scaling"]
    assert set(d["fit"]["params"]) == {"E", "A", "B", "alpha", "beta"} and d["fit"]["n_runs"] == 4
    assert [h["round"] for h in d["fit_history"]] == [3, 4, 5]  # first fitted in round 3, when it had a run
    seed = inspection.program_detail(db, 1)
    assert seed["parent_diff"] is None and seed["children"] == [3, 4, 9]


def test_compare_finds_shared_runs_the_common_ancestor_and_which_is_better(db):
    d = inspection.comparison(db, 4, 5)
    assert d["verdict"]["better"] == 5 and d["verdict"]["margin"] > 0 and d["verdict"]["intervals_overlap"]
    assert d["common_ancestor"] == 1
    shared = {(r["n"], r["d"]) for r in d["shared_runs"]}
    assert shared == {(1e5, 5e5), (2e5, 1e6)}
    assert all(r["delta"] == pytest.approx(r["loss_b"] - r["loss_a"]) for r in d["shared_runs"])
    assert '"gelu")' in d["diff"] and '"silu")' in d["diff"]


def test_the_inspection_reads_in_db_query(db):
    rounds = query.fit_rounds(db)
    assert [r.round for r in rounds] == [1, 2, 3, 4, 5] and rounds[-1].fit.program_id == BEST
    assert all(r.n_candidates >= 2 for r in rounds)
    assert [f.round for f in query.fits_of(db, 2)] == [1, 2, 3, 4, 5]
    assert [p.id for p in query.children(db, 3)] == [5, 7]


def test_top_json_is_the_leaderboard(capsys, path, db):
    rows = _json(capsys, ["top", str(path), "-k", "3", "--json"])
    assert [r["id"] for r in rows] == [r["id"] for r in inspection.leaderboard(db, 3)]
    assert rows[0]["loss"] == pytest.approx(inspection.leaderboard(db, 1)[0]["loss"])


def test_every_command_prints_text_and_json(capsys, path):
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inspect-test" in out and "Top 5 by predicted loss" in out and "timeout" in out and "25%" in out
    assert "exp. regret" in out
    assert main(["show", str(path), str(BEST)]) == 0
    out = capsys.readouterr().out
    assert "diff against its parent" in out and "Lineage" in out and "EVOLVE-BLOCK-START" in out
    assert "expected regret" in out
    assert main(["compare", str(path), "4", "5"]) == 0
    out = capsys.readouterr().out
    assert "predicted better at C*" in out and "5 - 4" in out  # which way the runs' difference is taken
    for argv in (["status", str(path), "--json"], ["show", str(path), "5", "--json"],
                 ["compare", str(path), "1", "5", "--json"]):
        assert isinstance(_json(capsys, argv), dict)


def test_mistakes_exit_2_with_a_message(capsys, path, tmp_path):
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello")
    for argv, message in ((["top", str(tmp_path / "missing.sqlite")], "no such campaign database"),
                          (["status", str(not_db)], "not a SQLite database"),
                          (["show", str(path), "99"], "no program 99"),
                          (["compare", str(path), "1", "99"], "no program 99"),
                          (["top", str(path), "-k", "0"], "at least 1"),
                          (["plot", str(path), "--out", str(not_db)], "is a file, not a folder")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite").exists()  # inspecting never creates a database


def test_inspecting_never_writes_the_database(capsys, path):
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for argv in (["status", str(path)], ["top", str(path)], ["show", str(path), "5"], ["compare", str(path), "1", "5"]):
        assert main(argv) == 0
    capsys.readouterr()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_commands_import_neither_jax_nor_matplotlib_until_they_run():
    code = "import sys; print(sorted(m for m in ('jax', 'matplotlib', 'datasette', 'scipy') if m in sys.modules))"
    names = ("status", "top", "show", "compare", "plot", "ui", "export")
    modules = "; ".join(f"import search.commands.{n}" for n in names)
    out = subprocess.run([sys.executable, "-c", f"{modules}; {code}"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
