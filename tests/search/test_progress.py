"""The plain progress lines a campaign writes when its output is a log file, not a terminal."""

from __future__ import annotations

import io
import pathlib
import sys

from rich.console import Console

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for recorded_campaign (tests/ is not a package)

from db import schema  # noqa: E402
from recorded_campaign import BEST, campaign_path  # noqa: E402
from search import inspection  # noqa: E402
from search.progress import Progress, ranking_table, short, summary_text  # noqa: E402


def _lines(capsys, *events):
    progress = Progress(None, 0, Console(file=io.StringIO(), force_terminal=False))
    for kind, info in events:
        progress(kind, info)
    return capsys.readouterr().out.splitlines()


def test_a_long_message_keeps_its_first_line_and_says_it_was_cut():
    assert short("pruned: loss 3.1 is more than 20% above the incumbents' 2.4") == (
        "pruned: loss 3.1 is more than 20% above the incumbents' 2.4")
    assert short("x" * 250) == "x" * 200 + "…"
    assert short("Traceback (most recent call last):\n  File ...") == "Traceback (most recent call last):…"
    assert short("") == ""


def test_candidate_and_run_lines(capsys):
    long = "pruned at 25,000 tokens: train loss 3.1234 is more than 20% above the incumbents' 2.4567 at this rung"
    lines = _lines(capsys, ("candidate", {"program": 7, "status": "pruned", "message": long, "loss": 3.1234}),
                   ("run", {"run": 3, "program": 1, "status": "invalid", "n": None, "d": None, "loss": None}),
                   ("run", {"run": 4, "program": 1, "status": "ok", "n": 154640, "d": 245760, "loss": 2.5}))
    assert lines[0].endswith(f"program 7: pruned base loss 3.1234 ({long})")  # the number it compared with survives
    assert lines[1].endswith("run 3 (program 1, N=-, D=-): invalid loss -")
    assert lines[2].endswith("run 4 (program 1, N=154,640, D=245,760): ok loss 2.5000")


def test_a_campaign_with_no_fit_says_so_instead_of_an_empty_ranking():
    db = schema.connect(":memory:")
    assert "no ranking yet" in ranking_table(db).plain


def test_the_summary_names_the_leader_with_its_interval_p_best_and_expected_regret():
    db = inspection.open_readonly(campaign_path())
    leader = inspection.leaderboard(db, 1)[0]
    text = summary_text(db, 40).plain
    assert (f"best program {BEST}: L(C*) {leader['loss']:.4f} [{leader['low']:.4f}, {leader['high']:.4f}], "
            f"P(best) {leader['prob_best']:.2g}, expected regret {100 * leader['expected_regret']:.2f}%") in text
    db.conn.close()
