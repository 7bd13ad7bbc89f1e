"""SQUAREM: extrapolating a slowly converging fixed-point iteration (Varadhan & Roland 2008).

EM-like updates of hyperparameters (prior scales, couplings, noise scale) converge
linearly, and slowly when the data say little about them: each iteration removes a fixed
fraction rho of the error along the slowest direction. Two plain iterations x1 = F(x0),
x2 = F(x1) measure that direction and its rate; SQUAREM's step

  x' = x0 + 2 a r + a^2 v,   r = x1 - x0,  v = x2 - 2 x1 + x0,  a = |r| / |v|

jumps to where the geometric series of steps is heading (for a single mode with rate
rho, a = 1 / (1 - rho) and x' is its limit). a = 1 gives x2, the plain iteration.

Reference:
  Varadhan & Roland 2008, "Simple and globally convergent methods for accelerating the
    convergence of any EM algorithm", Scandinavian Journal of Statistics 35(2) (scheme S3).
"""

from __future__ import annotations

import math

import numpy as np


def squarem_step(x0: np.ndarray, x1: np.ndarray, x2: np.ndarray, max_step: float) -> tuple[np.ndarray, float]:
    """The S3 extrapolation from three successive iterates, and the step length a taken (1 to max_step).

    The step is capped because far from the fixed point the iteration is not yet linear;
    callers grow the cap when it binds (Varadhan & Roland's "mstep") and shrink it when an
    extrapolated point proves worse.
    """
    r, v = x1 - x0, x2 - 2.0 * x1 + x0
    norm_v = float(np.linalg.norm(v))
    if not norm_v > 0.0 or not math.isfinite(norm_v):
        return x2.copy(), 1.0
    step = min(max(float(np.linalg.norm(r)) / norm_v, 1.0), max_step)
    x = x0 + 2.0 * step * r + step * step * v
    return (x, step) if np.all(np.isfinite(x)) else (x2.copy(), 1.0)
