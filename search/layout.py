"""Tables that fit the terminal: numbers are never cut, text gives way, optional columns go first.

rich shrinks every column of a table too wide for the terminal, numbers included: on an
80-column terminal the campaign's ranking lost its rank and program columns entirely, and
``show`` printed losses as "2.15…". Here each column's width is decided before rich sees
the table: a number keeps its widest cell; text columns share what is left, the widest
shrinking first, down to MIN_TEXT characters and an ellipsis; and while the table still does
not fit, the optional columns are dropped, least important first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rich.table import Table

MIN_TEXT = 8
# rich's default box: a border and one space of padding either side of every cell.
PER_COLUMN, EDGE = 3, 1


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: its header, whether it holds a number, its widest text, how soon it goes.

    drop: 0 for a column that always shows; among the others, the highest goes first.
    """

    name: str
    number: bool = True
    max_width: int | None = None
    drop: int = 0
    justify: str | None = None


def _natural(col: Column, cells: Sequence[str]) -> int:
    width = max([len(col.name), *map(len, cells)])
    return width if col.max_width is None else min(width, max(col.max_width, len(col.name)))


def _share(naturals: Sequence[int], room: int) -> list[int] | None:
    """Text columns' widths within room: all are cut to one cap, the largest that fits; None if it is under MIN_TEXT."""
    cap = max(naturals, default=0)
    while cap > 0 and sum(min(n, cap) for n in naturals) > room:
        cap -= 1
    if cap < MIN_TEXT and any(n > cap for n in naturals):
        return None
    return [min(n, cap) for n in naturals]


def widths(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[int | None]:
    """Each column's width, None where it is dropped, so the table is at most ``width`` wide."""
    kept = list(range(len(columns)))
    natural = [_natural(c, [r[i] for r in rows]) for i, c in enumerate(columns)]
    while True:
        room = width - EDGE - PER_COLUMN * len(kept) - sum(natural[i] for i in kept if columns[i].number)
        text = [i for i in kept if not columns[i].number]
        shared = _share([natural[i] for i in text], room) if room >= 0 else None
        optional = [i for i in kept if columns[i].drop]
        if shared is not None or not optional:
            out: list[int | None] = [None] * len(columns)
            for i in kept:
                out[i] = natural[i]
            for i, w in zip(text, shared or [natural[i] for i in text]):
                out[i] = w
            return out
        kept.remove(max(optional, key=lambda i: (columns[i].drop, i)))


def fitted_table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> Table:
    """A rich table of ``rows`` with the columns ``widths`` keeps, at those widths, one line per row."""
    sizes = widths(columns, rows, width)
    table = Table(title=title, title_justify="left")
    for col, size in zip(columns, sizes):
        if size is not None:
            table.add_column(col.name, justify=col.justify or ("right" if col.number else "left"), no_wrap=True,
                             overflow="ellipsis", min_width=size, max_width=size)
    for row in rows:
        table.add_row(*(cell for cell, size in zip(row, sizes) if size is not None))
    return table
