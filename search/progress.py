"""What a running campaign shows: a rich live panel on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

import sqlite_utils
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from db import query
from search.inspection import leaderboard
from search.views import g, leaderboard_table, percent

WARNING = "warning: "


def ranking_table(db: sqlite_utils.Database, k: int = 10, title: str = "Ranking by predicted loss at C* (nats/byte)",
                  width: int = 200) -> Table | Text:
    """The top-k candidates: predicted loss at C* with its interval, probability best, runs (views.leaderboard_table)."""
    rows = leaderboard(db, k)
    if not rows:  # a header over nothing reads as a bug; say why there is no ranking
        return Text("no ranking yet: no scaling law has been fitted (a fit needs finished runs)")
    return leaderboard_table(rows, title, width=width)


def summary_text(db: sqlite_utils.Database, budget_candidates: int, message: str = "") -> Text:
    spent = query.spent(db)
    counts = query.status_counts(db)["programs"]
    failures = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()) if s not in ("ok", "pending")) or "none"
    best = query.best_candidates(db, 1)
    best_line = "no fit yet"
    if best:
        f = best[0].fit
        best_line = (f"program {best[0].program.id}: L(C*) {f.loss_at_c_star:.4f} "
                     f"[{f.loss_low:.4f}, {f.loss_high:.4f}], P(best) {g(f.prob_best, 2)}, "
                     f"expected regret {percent(f.expected_regret)}")
    text = Text()
    text.append(f"candidates {spent.candidates}/{budget_candidates or '∞'}  runs {spent.runs}  "
                f"proxy FLOPs {spent.flops:.3g}  failures: {failures}\n")
    text.append(f"best {best_line}")
    if spent.proposer_calls:
        text.append(f"\nlanguage model: {spent.proposer_calls} calls, {spent.tokens_in + spent.tokens_out} tokens")
    if message:
        text.append(f"\n{message}", style="yellow")
    return text


def short(message: str, limit: int = 200) -> str:
    """A message's first line, cut at ``limit`` characters with an ellipsis (a log line, not a traceback)."""
    text = message.strip()
    first = text.split("\n", 1)[0]
    return first if first == text and len(first) <= limit else first[:limit].rstrip() + "…"


class Progress:
    """``on_event`` for the loop: redraws a live panel (TTY) or prints one line per event."""

    def __init__(self, db: sqlite_utils.Database, budget_candidates: int, console: Console | None = None):
        self.db, self.budget = db, budget_candidates
        self.console = console or Console()
        self.live = Live(console=self.console, refresh_per_second=2, transient=False) if self.console.is_terminal else None
        # Two slots: a step's message would otherwise overwrite a fit's warning on the
        # panel, and the warning stands until a later fit settles, not until the next step.
        self.step_message, self.warning = "", ""

    @property
    def message(self) -> str:
        return "\n".join(m for m in (self.warning, self.step_message) if m)

    def __enter__(self) -> Progress:
        if self.live:
            self.live.__enter__()
            self._draw()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def _draw(self) -> None:
        ranking = ranking_table(self.db, 5, width=self.console.width)
        self.live.update(Group(summary_text(self.db, self.budget, self.message), ranking))

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "step" and info.get("message"):
            self.step_message = info["message"]
        if kind == "fit":  # the words the fit's record keeps (judge.unsettled_warning); cleared when a later fit settles
            self.warning = WARNING + info["warning"] if info.get("warning") else ""
        if self.live:
            self._draw()
            return
        stamp = time.strftime("%H:%M:%S")
        if kind == "candidate":
            loss = f" base loss {info['loss']:.4f}" if info.get("loss") else ""
            msg = f" ({short(info['message'])})" if info.get("message") else ""
            line = f"program {info['program']}: {info['status']}{loss}{msg}"
        elif kind == "run":
            loss = f"{info['loss']:.4f}" if info.get("loss") else "-"
            n, d = (f"{info[k]:,}" if info.get(k) else "-" for k in ("n", "d"))  # None when the run failed before training
            line = f"run {info['run']} (program {info['program']}, N={n}, D={d}): {info['status']} loss {loss}"
        elif kind == "fit":
            line = f"fit on {info['runs']} runs; {info['planned']} scaling runs planned"
            if info.get("warning"):
                line += f" ({WARNING}{info['warning']})"
            line += " | " + summary_text(self.db, self.budget).plain.replace("\n", " | ")
        else:
            line = f"step {info['step']}: {info['children']} children from {info['proposer']} (island {info['island']})"
            if info.get("message"):
                line += f" [{info['message']}]"
        print(f"[{stamp}] {line}", file=sys.stdout, flush=True)
