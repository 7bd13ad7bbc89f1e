"""Baseline designs to compare active learning with: a full grid, random points, and an IsoFLOP design.

References:
  Hoffmann et al. 2022, sec. 3.2 (IsoFLOP profiles, Approach 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from active_learning import allocate

ExperimentPoint = tuple[str, float, float]  # (candidate id, N, D)
PoolPoint = tuple[float, float]  # (N, D)

def _van_der_corput_order(n: int) -> list[int]:
    """A coarse-to-fine order of n indices (bit-reversal), so any prefix is spread out."""
    bits = max(1, math.ceil(math.log2(max(n, 2))))
    keys = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(2**bits)]
    return [i for _, i in sorted(zip(keys, range(2**bits))) if i < n]


def _flops(model: allocate.FlopsModel, point: PoolPoint) -> float:
    return float(model.per_token(point[0]) * point[1])


def grid_design(candidates: Sequence[str], pool: Sequence[PoolPoint], flop_budget: float | None = None, *,
                flops_models: Mapping[str, allocate.FlopsModel] | None = None) -> list[ExperimentPoint]:
    """Every pool point for every candidate; under a budget, a coarse-to-fine prefix, round-robin.

    The prefix visits pool points in bit-reversed order, the same order for every
    candidate, and stops when the next run would exceed the budget.
    """
    models = flops_models or {}
    order = _van_der_corput_order(len(pool))
    out, spent = [], 0.0
    for m in order:
        for c in candidates:
            cost = _flops(models.get(c, allocate.FlopsModel()), pool[m])
            if flop_budget is not None and spent + cost > flop_budget:
                return out
            out.append((c, float(pool[m][0]), float(pool[m][1])))
            spent += cost
    return out


def random_design(candidates: Sequence[str], pool: Sequence[PoolPoint], flop_budget: float,
                  rng: np.random.Generator, *,
                  flops_models: Mapping[str, allocate.FlopsModel] | None = None) -> list[ExperimentPoint]:
    """Uniformly random (candidate, pool point) pairs without replacement until the budget is spent."""
    models = flops_models or {}
    pairs = [(c, m) for c in candidates for m in range(len(pool))]
    out, spent = [], 0.0
    for i in rng.permutation(len(pairs)):
        c, m = pairs[i]
        cost = _flops(models.get(c, allocate.FlopsModel()), pool[m])
        if spent + cost <= flop_budget:
            out.append((c, float(pool[m][0]), float(pool[m][1])))
            spent += cost
    return out


def isoflop_design(budgets: Sequence[float], n_min: float, n_max: float, points_per_budget: int = 7, *,
                   flops_per_param_token: float = 6.0) -> list[PoolPoint]:
    """Chinchilla's Approach-2 design: for each budget C, N log-spaced in [n_min, n_max] and D = C / (6N).

    Points whose D would fall below N (fewer than one token per parameter) are dropped.
    """
    if not (0 < n_min < n_max) or points_per_budget < 3:
        raise ValueError("isoflop_design needs 0 < n_min < n_max and at least 3 points per budget")
    out = []
    for c in budgets:
        for n in np.geomspace(n_min, n_max, points_per_budget):
            d = c / (flops_per_param_token * n)
            if d >= n:
                out.append((float(n), float(d)))
    return out
