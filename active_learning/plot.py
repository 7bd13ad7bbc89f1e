"""Plots of a fitted law: the runs, the fitted surface along IsoFLOP lines, and the extrapolation band.

matplotlib is imported inside the function and drawn through the Agg canvas
(no pyplot, no global backend switch), so importing this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from active_learning.fit import Fit
from active_learning.isoflop import group_by_budget
from active_learning.profile import ProfileInterval
from active_learning.scaling_law import Observation

BAND_POINTS = 40  # compute values along the Laplace band (each a closed form)
PROFILE_POINTS = 10  # along the profile band: each a few L-BFGS-B fits, 0.3 to 0.5 s


def frontier_flops(runs: Sequence[Observation], target_flops: float | None, points: int) -> np.ndarray:
    """The compute values the extrapolation panel draws at: from the smallest run's to the target
    (or 100x the largest run's), log-spaced, the last exactly the target so that a band computed
    here ends at the interval the command reports there."""
    flops = np.array([r.flops for r in runs])
    top = max(target_flops or 100.0 * flops.max(), flops.max())
    grid = np.geomspace(flops.min(), top, points)
    grid[-1] = top
    return grid


def plot_fit(fit: Fit, runs: Sequence[Observation], path: str, *, target_flops: float | None = None,
             profile_band: Sequence[ProfileInterval] | None = None):
    """Write a two-panel figure to `path` (format from the extension), and return the Figure.

    Left: loss against N for each IsoFLOP group of runs, with the fitted law along
    that FLOP line. Right: the compute-optimal loss against C with its Laplace interval,
    from the smallest run out to the target (or 100x the largest run), and `profile_band`
    (profile.prediction_interval at each of frontier_flops' values; an open end drawn at the
    axis edge) over it: with E at its bound the Laplace band holds E there and is too
    narrow, and the two bands part as C grows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _isoflop_panel(left, fit, runs)
    _frontier_panel(right, fit, runs, target_flops, profile_band)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def _isoflop_panel(ax, fit: Fit, runs: Sequence[Observation]) -> None:
    groups = group_by_budget(runs, rel_tol=0.1)
    colours = [f"C{i % 10}" for i in range(len(groups))]
    for colour, group in zip(colours, groups):
        n = np.array([r.n for r in group])
        ax.scatter(n, [r.loss for r in group], color=colour, s=18)
        flops = float(np.exp(np.mean(np.log([r.flops for r in group]))))
        if len(group) > 1:
            grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 60)
            pred = fit.predict(grid, flops / (6.0 * grid))
            ax.plot(grid, [p.value for p in pred], color=colour, lw=1, label=f"C = {flops:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss")
    ax.set_title("runs and fitted law along IsoFLOP lines")
    if ax.get_lines():  # a budget with one run draws no line, and an empty legend only warns
        ax.legend(fontsize=7)


def _frontier_panel(ax, fit: Fit, runs: Sequence[Observation], target_flops: float | None,
                    profile_band: Sequence[ProfileInterval] | None) -> None:
    flops = np.array([r.flops for r in runs])
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("loss")
    ax.set_title("extrapolation")
    if fit.undetermined:  # a frontier through parameters the runs say nothing about is not worth drawing
        ax.scatter(flops, [r.loss for r in runs], s=12, color="0.5")
        ax.text(0.5, 0.5, f"not extrapolated: the runs do not determine {', '.join(fit.undetermined)}",
                transform=ax.transAxes, ha="center", va="center", fontsize=8, wrap=True)
        return
    grid = frontier_flops(runs, target_flops, BAND_POINTS)
    allocations = [fit.compute_optimal(float(c)) for c in grid]
    ax.scatter(flops, [r.loss for r in runs], s=12, color="0.5", label="runs")
    ax.plot(grid, [a.loss.value for a in allocations], color="C0", label="compute-optimal L*(C)")
    ax.fill_between(grid, [a.loss.lo for a in allocations], [a.loss.hi for a in allocations], color="C0",
                    alpha=0.25, label=f"{round(100 * fit.level)}% interval")
    if target_flops:
        target = fit.compute_optimal(target_flops)
        ax.errorbar([target_flops], [target.loss.value], fmt="o", color="C3",
                    yerr=[[target.loss.value - target.loss.lo], [target.loss.hi - target.loss.value]],
                    label=f"target C = {target_flops:.2g}")
    if profile_band:
        _profile_band(ax, profile_band, fit.level)
    ax.legend(fontsize=7)
    if math.isfinite(float(np.min(flops))):
        ax.axvspan(float(flops.min()), float(flops.max()), color="0.9", zorder=0)


def _profile_band(ax, band: Sequence[ProfileInterval], level: float) -> None:
    """The profile interval's ends along C as two dashed lines; an open end runs along the axis edge."""
    flops = [p.flops for p in band]
    ends = [np.array([np.nan if v is None else v for v in side]) for side in ([p.lo for p in band], [p.hi for p in band])]
    lines = [ax.plot(flops, side, color="C1", lw=1.5, ls="--")[0] for side in ends]
    lines[0].set_label(f"{round(100 * level)}% profile interval")
    edges = ax.get_ylim()  # autoscaled to everything finite, the closed ends included
    for line, side, edge in zip(lines, ends, edges):
        line.set_ydata(np.where(np.isnan(side), edge, side))
    ax.set_ylim(*edges)  # so that what was drawn at the edge stays at it
