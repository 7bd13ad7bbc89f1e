"""The plain progress lines a campaign writes when its output is a log file, not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from db import schema
from search.progress import Progress, ranking_table, short


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
