"""The campaign as PNG figures: search progress, the top candidates' laws out to C*, and the runs in (N, D).

matplotlib is imported inside the functions and drawn on the Agg canvas (no
pyplot, no global backend switch), so importing this module costs nothing and
it works with no display.

Figures (``plot_campaign`` writes all three):
  progress.png  the leader's predicted loss at C* (with its interval) after each fit
                round, against programs evaluated and against proxy FLOPs spent;
  laws.png      the top candidates' compute-optimal loss L*(C) from their runs out to
                C*, with the pooled fit's interval band, and their predictions at C*;
  runs_nd.png   every run in the (N, D) plane coloured by candidate, IsoFLOP lines,
                and each top candidate's compute-optimal (N*, D*) on the C* line.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import numpy as np
import sqlite_utils

from db import query
from db.rows import Run, State, Status

TOP_K = 5
DODGE = 0.07  # log-N offset between candidates whose runs share an (N, D)
DPI = 120
LOSS_LABEL = "validation loss (nats/byte)"
FLOPS_LABEL = "training compute C (FLOPs)"


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, np.atleast_1d(axes)


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _c_star(db: sqlite_utils.Database) -> float | None:
    campaign = query.campaign(db)
    return (campaign.spec.get("target_flops") if campaign else None) or None


def _mark_c_star(ax, c_star: float | None) -> None:
    if c_star:
        ax.axvline(c_star, color="0.3", ls="--", lw=1)
        ax.annotate(f"C* = {c_star:.2g}", (c_star, 0.0), xycoords=("data", "axes fraction"), xytext=(-4, 4),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8, color="0.3")


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------------------- progress


def progress_points(db: sqlite_utils.Database) -> list[dict]:
    """Per fit round: programs evaluated and FLOPs spent by then, and the leader's prediction."""
    ended = sorted(p.ended for p in query.programs(db) if p.ended is not None)
    done = sorted((r.finished_at, r.flops or 0.0) for r in query.runs(db, state=State.DONE) if r.finished_at)
    times = np.array([t for t, _ in done])
    cumulative = np.cumsum([f for _, f in done]) if done else np.array([])
    out = []
    for r in query.fit_rounds(db):
        k = int(np.searchsorted(times, r.created, side="right"))
        out.append({"round": r.round, "evaluations": int(np.searchsorted(ended, r.created, side="right")),
                    "flops": float(cumulative[k - 1]) if k else 0.0, "program_id": r.fit.program_id,
                    "loss": r.fit.loss_at_c_star, "low": r.fit.loss_low, "high": r.fit.loss_high})
    return out


def plot_progress(db: sqlite_utils.Database, path: pathlib.Path) -> pathlib.Path:
    fig, (by_evals, by_flops) = _figure(11, 4.2, 2)
    points = progress_points(db)
    c_star = _c_star(db)
    for ax, key, label in ((by_evals, "evaluations", "programs evaluated"),
                           (by_flops, "flops", "proxy training compute spent (FLOPs)")):
        if not points:
            _empty(ax, "no fit round yet")
            continue
        x = np.array([p[key] for p in points], dtype=float)
        y = np.array([p["loss"] for p in points])
        lo = np.array([p["low"] if p["low"] is not None else p["loss"] for p in points])
        hi = np.array([p["high"] if p["high"] is not None else p["loss"] for p in points])
        ax.fill_between(x, lo, hi, step="post", color="C0", alpha=0.2, label="90% interval")
        ax.step(x, y, where="post", color="C0", lw=1.5, label="leader's predicted loss at C*")
        ax.plot(x, y, "o", color="C0", ms=4)
        for i, p in enumerate(points):
            if i == 0 or p["program_id"] != points[i - 1]["program_id"]:
                ax.annotate(f"#{p['program_id']}", (x[i], y[i]), xytext=(3, 6), textcoords="offset points", fontsize=8)
        if key == "flops" and x.min() > 0 and x.max() / x.min() > 10:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"predicted {LOSS_LABEL}")
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    title = f"Search progress: best predicted loss at C* = {c_star:.2g} FLOPs" if c_star else "Search progress"
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# ----------------------------------------------------------------------------- laws


def _frontiers(pooled, grid: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each candidate's compute-optimal loss along ``grid`` with its interval: (loss, low, high)."""
    if pooled is None:
        return {}
    preds = [pooled.predict_at_target(float(c)) for c in grid]
    return {cand: tuple(np.array([getattr(p[cand], f) for p in preds]) for f in ("loss", "lo", "hi"))
            for cand in pooled.candidates}


def _stored_frontier(params: dict, grid: np.ndarray) -> np.ndarray:
    from active_learning import allocate
    from active_learning.scaling_law import chinchilla_params, get_law

    theta = chinchilla_params(params["E"], params["A"], params["B"], params["alpha"], params["beta"])
    return np.array([math.exp(float(allocate.optimal_log_loss(get_law("chinchilla"), theta, float(c)))) for c in grid])


def _ok_runs(db: sqlite_utils.Database, program_id: int) -> list[Run]:
    return [r for r in query.runs(db, program_id, state=State.DONE, status=Status.OK)
            if r.final_loss is not None and r.flops]


def _refit(db: sqlite_utils.Database):
    from search.export import pooled_fit

    campaign = query.campaign(db)
    try:
        return pooled_fit(db, campaign.spec if campaign else {})
    except (ValueError, ArithmeticError, np.linalg.LinAlgError):
        return None  # the stored fits are drawn instead, without bands


def plot_laws(db: sqlite_utils.Database, path: pathlib.Path, k: int = TOP_K) -> pathlib.Path:
    fig, (ax, forest) = _figure(12, 4.8, 2)
    top = query.best_candidates(db, k)
    if not top:
        _empty(ax, "no candidate has a fitted law yet")
        _empty(forest, "")
        return _save(fig, path)
    c_star = _c_star(db) or top[0].fit.c_star
    runs = {r.program.id: _ok_runs(db, r.program.id) for r in top}
    smallest = min((run.flops for rs in runs.values() for run in rs), default=c_star / 1e3)
    grid = np.geomspace(smallest / 2, c_star * 2, 40)
    frontiers = _frontiers(_refit(db), grid)
    for i, r in enumerate(top):
        pid, colour, cand = r.program.id, _colour(i), str(r.program.id)
        label = f"#{pid} ({r.program.proposer})"
        if cand in frontiers:
            loss, lo, hi = frontiers[cand]
            ax.fill_between(grid, lo, hi, color=colour, alpha=0.15)
        elif {"E", "A", "B", "alpha", "beta"} <= set(r.fit.params):
            loss = _stored_frontier(r.fit.params, grid)
        else:
            loss = None
        if loss is not None:
            ax.plot(grid, loss, color=colour, lw=1.5, label=label + " L*(C)")
        ax.scatter([run.flops for run in runs[pid]], [run.final_loss for run in runs[pid]], color=colour, s=22,
                   edgecolor="white", lw=0.5, zorder=3)
        ax.errorbar([r.fit.c_star or c_star], [r.fit.loss_at_c_star], fmt="D", color=colour, ms=5, capsize=3,
                    yerr=[[r.fit.loss_at_c_star - (r.fit.loss_low or r.fit.loss_at_c_star)],
                          [(r.fit.loss_high or r.fit.loss_at_c_star) - r.fit.loss_at_c_star]], zorder=4)
    run_flops = [run.flops for rs in runs.values() for run in rs]
    if run_flops:
        ax.axvspan(min(run_flops), max(run_flops), color="0.92", zorder=0, label="proxy runs")
    _mark_c_star(ax, c_star)
    ax.set_xscale("log")
    ax.set_xlabel(FLOPS_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("Top candidates: runs (dots) and compute-optimal law out to C*", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    _forest(forest, top, c_star)
    return _save(fig, path)


def _forest(ax, top: Sequence[query.Ranked], c_star: float) -> None:
    """Predicted loss at C* with its interval per candidate, best at the top."""
    y = np.arange(len(top))[::-1]
    for yi, (i, r) in zip(y, enumerate(top)):
        f = r.fit
        lo, hi = f.loss_low or f.loss_at_c_star, f.loss_high or f.loss_at_c_star
        ax.errorbar([f.loss_at_c_star], [yi], xerr=[[f.loss_at_c_star - lo], [hi - f.loss_at_c_star]], fmt="o",
                    color=_colour(i), capsize=4)
        best = f"P(best) {f.prob_best:.2f}" if f.prob_best is not None else ""
        ax.annotate(f"{f.loss_at_c_star:.4f}  {best}", (hi, yi), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(y, [f"#{r.program.id} {r.program.proposer}" for r in top])
    ax.set_xlabel(f"predicted {LOSS_LABEL} at C* = {c_star:.2g} FLOPs (90% interval)")
    ax.set_title("Predictions at the target compute", fontsize=10)
    ax.margins(x=0.35, y=0.15)
    ax.grid(alpha=0.3, axis="x")


# ----------------------------------------------------------------------------- runs in (N, D)


def plot_runs_nd(db: sqlite_utils.Database, path: pathlib.Path, k: int = TOP_K) -> pathlib.Path:
    fig, (ax,) = _figure(7.5, 6)
    top = query.best_candidates(db, k)
    colours = {r.program.id: _colour(i) for i, r in enumerate(top)}
    runs = [r for r in query.runs(db, state=State.DONE) if (r.n_params or r.n_target) and (r.n_tokens or r.d_target)]
    if not runs:
        _empty(ax, "no finished run yet")
        return _save(fig, path)
    shown = set()
    order = {pid: i for i, pid in enumerate(sorted({r.program_id for r in runs}))}
    for r in runs:
        n, d = r.n_params or r.n_target, r.n_tokens or r.d_target
        n *= math.exp(DODGE * (order[r.program_id] - (len(order) - 1) / 2))  # runs at the same point side by side
        ok = r.status is Status.OK
        colour = colours.get(r.program_id, "0.6")
        label = f"#{r.program_id}" if r.program_id in colours else "other candidates"
        if not ok:  # a pruned run was stopped early on purpose; any other status is a failure
            label, colour = ("pruned run", "0.45") if r.status is Status.PRUNED else ("failed run", "black")
        ax.scatter([n], [d], marker="o" if ok else "x", s=30 if r.program_id in colours else 16, color=colour,
                   alpha=0.85, label=None if label in shown else label, zorder=3)
        shown.add(label)
    c_star = _c_star(db) or (top[0].fit.c_star if top else None)
    points = [(r.fit.n_star, r.fit.d_star, colours[r.program.id]) for r in top if r.fit.n_star and r.fit.d_star]
    for n, d, colour in points:
        ax.scatter([n], [d], marker="*", s=160, color=colour, edgecolor="black", lw=0.5, zorder=4)
    if points:
        ax.scatter([], [], marker="*", s=120, color="white", edgecolor="black", label="(N*, D*) at C*")
    _isoflops(ax, runs, points, c_star)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("training tokens D (bytes)")
    ax.set_title("Runs in the (N, D) plane (dodged where they coincide); dashed: C = 6ND", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _isoflops(ax, runs: Sequence[Run], points, c_star: float | None) -> None:
    ns = [r.n_params or r.n_target for r in runs] + [n for n, _, _ in points]
    ds = [r.n_tokens or r.d_target for r in runs] + [d for _, d, _ in points]
    n_lo, n_hi = min(ns) / 2, max(ns) * 2
    ax.set_xlim(n_lo, n_hi)
    ax.set_ylim(min(ds) / 2, max(ds) * 2)
    n = np.geomspace(n_lo, n_hi, 50)
    lo, hi = math.floor(math.log10(6 * min(ns) * min(ds))), math.ceil(math.log10(6 * max(ns) * max(ds)))
    for e in range(lo, hi + 1):
        ax.plot(n, 10.0**e / (6 * n), color="0.75", lw=0.7, ls="--", zorder=1)
    if c_star:
        ax.plot(n, c_star / (6 * n), color="0.2", lw=1.2, ls="--", zorder=2, label=f"C* = {c_star:.2g} FLOPs")


# ----------------------------------------------------------------------------- all of them


def plot_campaign(db: sqlite_utils.Database, out_dir: str | pathlib.Path, k: int = TOP_K) -> list[pathlib.Path]:
    """Write progress.png, laws.png and runs_nd.png into ``out_dir``; returns their paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_progress(db, out / "progress.png"), plot_laws(db, out / "laws.png", k),
            plot_runs_nd(db, out / "runs_nd.png", k)]
