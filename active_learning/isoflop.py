"""IsoFLOP analysis (Chinchilla's Approach 2): a parabola per FLOP budget, then power laws in C.

For each budget, loss is fitted as a parabola in log N; its vertex is that
budget's N_opt (and D_opt = C / fpt(N_opt)). Across budgets, log N_opt and
log D_opt are fitted as straight lines in log C: N_opt ~ C^a, D_opt ~ C^b.

References:
  Hoffmann et al. 2022, sec. 3.2 ("Approach 2: IsoFLOP profiles") and table 2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from active_learning.scaling_law import Observation


@dataclasses.dataclass(frozen=True)
class IsoFlopProfile:
    """One budget's profile.

    Attributes:
      flops: the budget C (geometric mean of its runs' FLOPs).
      n_opt: vertex of the parabola in log N.
      d_opt: tokens at n_opt: C / fpt(n_opt).
      loss_opt: the parabola's minimum.
      n_runs: runs in the profile.
    """

    flops: float
    n_opt: float
    d_opt: float
    loss_opt: float
    n_runs: int


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
    """Power laws N_opt = exp(n_intercept) C^a and D_opt = exp(d_intercept) C^b.

    Attributes:
      profiles: the per-budget profiles used.
      a: exponent of N_opt in C.
      b: exponent of D_opt in C.
      n_intercept: log N_opt at C = 1.
      d_intercept: log D_opt at C = 1.
    """

    profiles: tuple[IsoFlopProfile, ...]
    a: float
    b: float
    n_intercept: float
    d_intercept: float

    def n_opt(self, flops: float) -> float:
        return math.exp(self.n_intercept + self.a * math.log(flops))

    def d_opt(self, flops: float) -> float:
        return math.exp(self.d_intercept + self.b * math.log(flops))


def group_by_budget(runs: Sequence[Observation], rel_tol: float = 0.05) -> list[list[Observation]]:
    """Runs clustered by FLOPs: a run joins a group if within rel_tol of the group's first run."""
    groups: list[list[Observation]] = []
    for run in sorted(runs, key=lambda r: r.flops):
        if groups and abs(math.log(run.flops / groups[-1][0].flops)) <= math.log1p(rel_tol):
            groups[-1].append(run)
        else:
            groups.append([run])
    return groups


def profile(runs: Sequence[Observation]) -> IsoFlopProfile | None:
    """The parabola vertex of loss against log N; None when it has no interior-ish minimum."""
    if len({r.n for r in runs}) < 3:
        return None
    log_n = np.log([r.n for r in runs])
    centre = float(log_n.mean())
    c2, c1, c0 = np.polyfit(log_n - centre, [r.loss for r in runs], 2)
    if not c2 > 0:
        return None
    vertex = -c1 / (2.0 * c2)
    if abs(vertex) > 2.0 * float(np.ptp(log_n)):  # far outside the sizes tried: not a measured optimum
        return None
    flops = float(np.exp(np.mean(np.log([r.flops for r in runs]))))
    n_opt = math.exp(centre + vertex)
    fpt = np.mean([(r.flops_per_token or 6.0 * r.n) / r.n for r in runs]) * n_opt
    return IsoFlopProfile(flops, n_opt, flops / fpt, float(c0 - c1 * c1 / (4.0 * c2)), len(runs))


def fit_isoflop(runs: Sequence[Observation], rel_tol: float = 0.05) -> IsoFlopFit:
    """Approach 2 on runs laid out on IsoFLOP lines.

    Raises:
      ValueError: if fewer than two budgets have a usable profile (three or more sizes,
        and a loss curve that bends upwards around its minimum).
    """
    profiles = [p for group in group_by_budget(runs, rel_tol) if (p := profile(group)) is not None]
    if len(profiles) < 2:
        raise ValueError("IsoFLOP analysis needs at least two budgets, each with 3+ model sizes around a minimum")
    log_c = np.log([p.flops for p in profiles])
    a, n0 = np.polyfit(log_c, np.log([p.n_opt for p in profiles]), 1)
    b, d0 = np.polyfit(log_c, np.log([p.d_opt for p in profiles]), 1)
    return IsoFlopFit(tuple(profiles), float(a), float(b), float(n0), float(d0))
