"""Tables that fit the terminal: numbers whole, text cut evenly, optional columns dropped in order."""

from __future__ import annotations

import io
import pathlib
import sys

import pytest
from rich.console import Console

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for recorded_campaign (tests/ is not a package)

from recorded_campaign import BEST, campaign_path  # noqa: E402
from search import inspection, progress, views  # noqa: E402
from search.layout import EDGE, MIN_TEXT, PER_COLUMN, Column, widths  # noqa: E402

COLUMNS = [Column("id"), Column("loss"), Column("N*", drop=2), Column("note", number=False, drop=1),
           Column("message", number=False)]
ROWS = [["12", "2.1556", "4.02e+06", "x" * 30, "y" * 50], ["7", "2.3", "5e+04", "short", "z"]]


def _total(sizes: list[int | None]) -> int:
    kept = [s for s in sizes if s is not None]
    return sum(kept) + PER_COLUMN * len(kept) + EDGE


def test_a_wide_terminal_shows_every_column_at_its_natural_width():
    assert widths(COLUMNS, ROWS, 200) == [2, 6, 8, 30, 50]


@pytest.mark.parametrize("width", range(40, 120, 7))
def test_numbers_stay_whole_and_the_table_fits(width):
    sizes = widths(COLUMNS, ROWS, width)
    assert sizes[:2] == [2, 6]  # never dropped, never cut
    assert sizes[2] in (None, 8)
    assert _total(sizes) <= width
    text = [s for s, c in zip(sizes, COLUMNS) if not c.number and s is not None]
    assert all(s >= MIN_TEXT for s in text)


def test_text_is_cut_to_one_cap_before_anything_is_dropped():
    # Room for the numbers and 40 characters of text: note 20 and message 20, both kept.
    width = 2 + 6 + 8 + 40 + 5 * PER_COLUMN + EDGE
    assert widths(COLUMNS, ROWS, width) == [2, 6, 8, 20, 20]


def test_optional_columns_go_highest_drop_first():
    # 15 characters for two text columns is under MIN_TEXT each, so N* (drop 2) goes; its 8 characters
    # and its border make 26 for the two, 13 each, and the note (drop 1) stays.
    width = 2 + 6 + 8 + 15 + 5 * PER_COLUMN + EDGE
    sizes = widths(COLUMNS, ROWS, width)
    assert sizes[2] is None and sizes[3] == sizes[4] == (15 + 8 + PER_COLUMN) // 2
    # Room for the two numbers and one text column of MIN_TEXT: the note (drop 1) goes too.
    narrower = widths(COLUMNS, ROWS, 2 + 6 + MIN_TEXT + 3 * PER_COLUMN + EDGE)
    assert narrower == [2, 6, None, None, MIN_TEXT]


def _render(renderable, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue().splitlines()


@pytest.fixture(scope="module")
def db():
    database = inspection.open_readonly(campaign_path())
    yield database
    database.conn.close()


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160])
def test_the_ranking_keeps_every_rank_program_and_interval_whole(db, width):
    rows = inspection.leaderboard(db)
    lines = _render(progress.ranking_table(db, 10, width=width), width)
    text = "\n".join(lines)
    assert all(len(line) <= width for line in lines)
    for r in rows:
        assert views.interval(r["low"], r["high"]) in text and views.loss(r["loss"]) in text
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert [c[:2] for c in cells] == [[str(r["rank"]), str(r["id"])] for r in rows]


@pytest.mark.parametrize("width", [80, 120])
def test_show_keeps_each_runs_numbers_whole(db, width):
    detail = inspection.program_detail(db, BEST)
    lines = _render(views.program_view(detail, source=False, width=width), width)
    text = "\n".join(lines)
    assert all(len(line) <= width for line in lines)
    for r in detail["runs"]:
        assert views.g(r["n_params"]) in text and views.g(r["n_tokens"]) in text
        if r["loss"] is not None:
            assert views.loss(r["loss"]) in text
