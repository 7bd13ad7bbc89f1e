"""Rich renderings of what ``search.inspection`` returns: the text output of status, top, show, compare."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from search.layout import Column, fitted_table

LAW_FORM = "L(N, D) = E + A / N^alpha + B / D^beta"


def g(x: float | None, digits: int = 3) -> str:
    """A number in short form ("-" for none)."""
    return "-" if x is None else f"{x:.{digits}g}"


def loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.2f}%"


def interval(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"[{lo:.4f}, {hi:.4f}]"


def when(t: float | None) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _parents(ids: Sequence[int]) -> str:
    return ", ".join(map(str, ids)) or "-"


def leaderboard_table(rows: Sequence[dict[str, Any]], title: str, *, width: int = 200) -> Table:
    """The leaderboard: rank, program, predicted loss at C* with interval, P(best), expected regret, runs, ancestry.

    Columns are dropped, least important first, to fit a terminal ``width`` characters wide.
    """
    # The expected regret always shows: P(best) alone cannot say whether a rival beats the leader by 0.1% or by 5%.
    columns = [Column("#"), Column("id"), Column("L(C*)"), Column("90% interval"), Column("P(best)"),
               Column("exp. regret"), Column("runs"), Column("N*", drop=4), Column("D*", drop=4),
               Column("base loss", drop=3), Column("proposer", number=False, max_width=16, drop=1),
               Column("parents", number=False, max_width=12, drop=5),
               Column("change", number=False, max_width=40, drop=2)]
    cells = [[str(r["rank"]), str(r["id"]), loss(r["loss"]), interval(r["low"], r["high"]), g(r["prob_best"], 2),
              percent(r["expected_regret"]), str(r["n_runs"]), g(r["n_star"]), g(r["d_star"]), loss(r["base_loss"]),
              r["proposer"], _parents(r["parent_ids"]), r["note"] or ""] for r in rows]
    return fitted_table(title, columns, cells, width)


def _counts_table(status: dict[str, Any]) -> Table:
    table = Table(title="Outcomes", title_justify="left")
    table.add_column("status")
    table.add_column("programs", justify="right")
    table.add_column("runs", justify="right")
    names = sorted(set(status["counts"]["programs"]) | set(status["counts"]["runs"]),
                   key=lambda s: (s != "ok", s == "pending", s))
    for name in names:
        table.add_row(name, str(status["counts"]["programs"].get(name, 0)), str(status["counts"]["runs"].get(name, 0)))
    return table


def _budget_table(budgets: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="Budgets", title_justify="left")
    for name, justify in (("budget", "left"), ("spent", "right"), ("limit", "right"), ("used", "right")):
        table.add_column(name, justify=justify)
    for b in budgets:
        used = "no limit" if b["fraction"] is None else f"{100 * b['fraction']:.0f}%"
        table.add_row(b["what"], g(b["spent"]), g(b["limit"]) if b["limit"] else "-", used)
    return table


def _invocations_line(invocations: dict[str, Any] | None) -> str:
    """A line 'run N times, the latest started T (changed ...)', or '' for files without the record."""
    if not invocations or not invocations["count"]:
        return ""
    changed = f" (changed {'; '.join(invocations['changes'])})" if invocations["changes"] else ""
    times = "once," if invocations["count"] == 1 else f"{invocations['count']} times, the latest"
    return f"\nrun {times} started {when(invocations['latest'])}{changed}"


def status_view(status: dict[str, Any], width: int = 200) -> RenderableType:
    """``scalesearch status``: header, outcomes and budgets, recent failures, the top candidates."""
    c, spent = status["campaign"], status["spent"]
    header = Text.assemble(
        (f"campaign {c['name']!r}", "bold"), f"  C* = {g(c['target_flops'])} FLOPs",
        f", inference tokens {g(c['inference_tokens'])}" if c["inference_tokens"] else "",
        f"  law {c['fit_law']}\nstarted {when(c['created'])}, last activity {when(c['last_activity'])}; ",
        f"{spent['candidates']} programs evaluated, {spent['runs']} runs ({g(spent['flops'])} FLOPs, "
        f"{spent['eval_seconds'] / 3600:.2f} h of training), {status['fit_rounds']} fit rounds, "
        f"{spent['proposer_calls']} proposer calls ({spent['tokens_in'] + spent['tokens_out']:,} tokens)",
        _invocations_line(status.get("invocations")))
    parts: list[RenderableType] = [header, _counts_table(status), _budget_table(status["budgets"])]
    if status["recent_failures"]:
        columns = [Column("program"), Column("run"), Column("stage"), Column("status", justify="left"),
                   Column("message", number=False, max_width=70)]
        rows = [[str(f["program_id"]), str(f["run_id"] or "-"), str(f["stage"]), f["status"],
                 f["message"].splitlines()[0] if f["message"] else ""] for f in status["recent_failures"]]
        table = fitted_table("Recent failures", columns, rows, width)
        parts.append(table)
    if status["top"]:
        parts.append(leaderboard_table(status["top"], f"Top {len(status['top'])} by predicted loss at C* "
                                       "(nats/byte)", width=min(width, 120)))
    else:
        parts.append(Text("No candidate has a fitted law yet."))
    return Group(*parts)


def law_text(fit: dict[str, Any] | None) -> str:
    """The fitted law with its parameters and intervals, one line."""
    if not fit or not fit["params"]:
        return "no fit yet"
    p, iv = fit["params"], fit["intervals"]
    if not {"E", "A", "B", "alpha", "beta"} <= set(p):
        return ", ".join(f"{k} = {g(v)}" for k, v in p.items())
    terms = [f"{k} = {g(p[k])}" + (f" [{g(iv[k][0])}, {g(iv[k][1])}]" if k in iv else "")
             for k in ("E", "A", "alpha", "B", "beta")]
    return f"{LAW_FORM}: " + ", ".join(terms) + f" ({fit['n_runs']} runs)"


def _runs_table(runs: Sequence[dict[str, Any]], width: int) -> Table:
    columns = [Column("run"), Column("stage", justify="left"), Column("status", justify="left"), Column("N"),
               Column("D"), Column("C FLOPs", drop=2), Column("seed"), Column("loss"), Column("seconds", drop=1),
               Column("message", number=False, max_width=50)]
    rows = [[str(r["id"]), r["stage"], r["status"] or r["state"], g(r["n_params"]), g(r["n_tokens"]), g(r["flops"]),
             str(r["seed"]), loss(r["loss"]), g(r["seconds"]), r["message"] or ""] for r in runs]
    return fitted_table("Runs", columns, rows, width)


def _lineage_table(lineage: Sequence[dict[str, Any]], width: int) -> Table:
    columns = [Column("program", justify="left"), Column("proposer", number=False, max_width=16),
               Column("parents", number=False, max_width=12), Column("status", justify="left"),
               Column("base loss"), Column("change", number=False, max_width=50)]
    rows = [[str(p["id"]), p["proposer"], _parents(p["parent_ids"]), p["status"] or "pending", loss(p["base_loss"]),
             p["note"] or ""] for p in lineage]
    return fitted_table("Lineage (nearest first)", columns, rows, width)


def program_view(d: dict[str, Any], *, source: bool = True, width: int = 200) -> RenderableType:
    """``scalesearch show``: summary, law, runs, lineage, the diff against the parent, the source."""
    fit = d["fit"]
    head = Text.assemble((f"program {d['id']}", "bold"), f"  {d['proposer']}, island {g(d['island'])}, "
                         f"parents {_parents(d['parent_ids'])}, children {_parents(d['children'])}\n",
                         f"status {d['status'] or 'pending'} at stage {d['stage']}",
                         f": {d['message']}" if d["message"] else "", f"\nchange: {d['note']}" if d["note"] else "")
    parts: list[RenderableType] = [head]
    if fit:
        parts.append(Text(f"rank {d['rank'] or '-'}: predicted loss at C* = {g(fit['c_star'])}: {loss(fit['loss'])} "
                          f"{interval(fit['low'], fit['high'])}, P(best) {g(fit['prob_best'], 2)}, expected regret "
                          f"{percent(fit['expected_regret'])}, at N* = "
                          f"{g(fit['n_star'])}, D* = {g(fit['d_star'])}\n{law_text(fit)}"))
        history = "  ".join(f"r{h['round']}: {loss(h['loss'])}" for h in d["fit_history"])
        parts.append(Text(f"prediction by fit round: {history}", style="dim"))
    else:
        parts.append(Text("no fitted law yet"))
    parts += [_runs_table(d["runs"], width), _lineage_table(d["lineage"], width)]
    if d["parent_diff"]:
        parts.append(Panel(Syntax(d["parent_diff"], "diff", theme="ansi_dark", word_wrap=True), title="diff against its parent"))
    if source:
        parts.append(Panel(Syntax(d["source"], "python", theme="ansi_dark", line_numbers=True, word_wrap=True), title="source"))
    return Group(*parts)


def comparison_view(d: dict[str, Any]) -> RenderableType:
    """``scalesearch compare``: the two side by side, their shared runs, and the diff."""
    a, b = d["a"], d["b"]
    table = Table(title=f"program {a['id']} vs program {b['id']}", title_justify="left")
    table.add_column("")
    table.add_column(f"program {a['id']}", justify="right")
    table.add_column(f"program {b['id']}", justify="right")
    fa, fb = a["fit"] or {}, b["fit"] or {}
    rows = [("proposer", a["proposer"], b["proposer"]), ("parents", _parents(a["parent_ids"]), _parents(b["parent_ids"])),
            ("status", a["status"] or "pending", b["status"] or "pending"), ("rank", g(a["rank"]), g(b["rank"])),
            ("L(C*)", loss(fa.get("loss")), loss(fb.get("loss"))),
            ("90% interval", interval(fa.get("low"), fa.get("high")), interval(fb.get("low"), fb.get("high"))),
            ("P(best)", g(fa.get("prob_best"), 2), g(fb.get("prob_best"), 2)),
            ("expected regret", percent(fa.get("expected_regret")), percent(fb.get("expected_regret"))),
            ("N*, D*", f"{g(fa.get('n_star'))}, {g(fa.get('d_star'))}", f"{g(fb.get('n_star'))}, {g(fb.get('d_star'))}"),
            ("runs", g(fa.get("n_runs")), g(fb.get("n_runs")))]
    for name in ("E", "A", "alpha", "B", "beta"):
        rows.append((name, g((fa.get("params") or {}).get(name)), g((fb.get("params") or {}).get(name))))
    for row in rows:
        table.add_row(*row)
    parts: list[RenderableType] = [table]
    v = d["verdict"]
    if v:
        sure = "but their intervals overlap" if v["intervals_overlap"] else "and their intervals do not overlap"
        parts.append(Text(f"program {v['better']} is predicted better at C* by {v['margin']:.4f} nats/byte, {sure}."))
    parts.append(Text(f"nearest common ancestor: {g(d['common_ancestor'])}"))
    if d["shared_runs"]:
        runs = Table(title="Runs at the same (N, D, seed)", title_justify="left")
        for name in ("N", "D", "seed", f"loss {a['id']}", f"loss {b['id']}", f"{b['id']} - {a['id']}"):
            runs.add_column(name, justify="right")
        for r in d["shared_runs"]:
            runs.add_row(g(r["n"]), g(r["d"]), str(r["seed"]), loss(r["loss_a"]), loss(r["loss_b"]), f"{r['delta']:+.4f}")
        parts.append(runs)
    if d["diff"]:
        parts.append(Panel(Syntax(d["diff"], "diff", theme="ansi_dark", word_wrap=True), title=f"diff {a['id']} -> {b['id']}"))
    else:
        parts.append(Text("the two sources are identical"))
    return Group(*parts)
