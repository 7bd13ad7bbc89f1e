"""Choose width and depth for a requested N: the aspect-ratio rule.

Rule: ``d_model`` a multiple of 8, heads about ``head_dim`` (64) wide (the divisor
of ``d_model`` nearest to ``d_model / 64`` that leaves an even head width), and among all (d_model, n_layers) whose exact N lies within ``tolerance`` (10%) of
the request, the one whose aspect ratio ``d_model / n_layers`` is closest (in
log) to ``aspect`` (40), ties to the closer N. Kaplan et al. 2020 (Figure 5)
found loss nearly flat in aspect ratio over 20 to 200, so the rule keeps proxies
inside that flat region while staying shallow enough to run well on a CPU.

The block's own parameter count decides: N per layer is measured with
``jax.eval_shape`` at three widths and interpolated as ``a d^2 + b d + c`` (exact
for any block built of dense maps and norms), and the chosen shape is verified
with an exact count. Blocks whose sizes are rounded or depend on the head count
(grouped-query heads as a fraction of the heads, say) are not quadratic at
narrow widths; when no top-ranked shape verifies, the narrow widths are counted
exactly instead.
"""

from __future__ import annotations

import math

import numpy as np

from proxy_models import counting
from proxy_models.config import ModelConfig
from proxy_models.program import Program, resolve_model_options

HEAD_DIM = 64
WIDTH_STEP = 8
ASPECT = 40.0
TOLERANCE = 0.10
MAX_LAYERS = 64
MAX_WIDTH = 8192
EXACT_WIDTHS = 64  # widths the exact fallback search counts (d_model up to 8 * 64 = 512)


def heads_for(d_model: int, head_dim: int = HEAD_DIM) -> int:
    """Heads about ``head_dim`` wide that divide ``d_model`` into even widths (rotary needs even)."""
    n_heads = max(1, round(d_model / head_dim))
    while n_heads > 1 and (d_model % n_heads or (d_model // n_heads) % 2):
        n_heads -= 1
    return n_heads


def model_config(program: Program, d_model: int, n_layers: int, seq_len: int, head_dim: int = HEAD_DIM) -> ModelConfig:
    """A ``ModelConfig`` at this shape with the program's scaffolding options applied."""
    base = ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=heads_for(d_model, head_dim), seq_len=seq_len)
    options = resolve_model_options(program, base.block)
    return ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=base.n_heads, seq_len=seq_len, **options)


def _per_layer_quadratic(program: Program, seq_len: int, head_dim: int) -> np.ndarray:
    """Coefficients (a, b, c) of N per layer as a function of d_model; plus the fixed part."""
    widths = np.array([2, 4, 8]) * head_dim
    one = [counting.count_params(program, model_config(program, int(d), 1, seq_len, head_dim)).n_params for d in widths]
    two = [counting.count_params(program, model_config(program, int(d), 2, seq_len, head_dim)).n_params for d in widths]
    per_layer = np.subtract(two, one)
    fixed = np.subtract(one, per_layer)  # the final norm: linear in d
    return np.polyfit(widths, per_layer, 2), np.polyfit(widths, fixed, 1)


def _candidates(per_layer, fixed, n_target: float, tolerance: float):
    for d in range(WIDTH_STEP, MAX_WIDTH + 1, WIDTH_STEP):
        layer_n = np.polyval(per_layer, d)
        if layer_n <= 0:
            continue
        for n_layers in range(1, MAX_LAYERS + 1):
            n = n_layers * layer_n + np.polyval(fixed, d)
            if abs(n / n_target - 1) <= tolerance:
                yield d, n_layers, n


def _exact_candidates(program: Program, n_target: float, tolerance: float, seq_len: int, head_dim: int):
    """Like ``_candidates`` but from exact counts at every width, narrowest first.

    For blocks whose widths are rounded (a GLU hidden size rounded to a multiple
    of 8, say) the quadratic fitted at wide widths can be far off at narrow ones.
    Each width costs two ``eval_shape`` counts, so only the narrowest
    ``EXACT_WIDTHS`` are tried: that is where the quadratic goes wrong.
    """
    for d in range(WIDTH_STEP, WIDTH_STEP * EXACT_WIDTHS + 1, WIDTH_STEP):
        one, two = (counting.count_params(program, model_config(program, d, k, seq_len, head_dim)).n_params for k in (1, 2))
        layer_n, fixed = two - one, 2 * one - two
        if one > n_target * (1 + tolerance):
            return  # one layer is already too big, and wider layers only grow
        if layer_n <= 0:
            continue
        for n_layers in range(1, MAX_LAYERS + 1):
            n = n_layers * layer_n + fixed
            if abs(n / n_target - 1) <= tolerance:
                yield d, n_layers, n


def _rank(candidates, n_target: float, aspect: float) -> list:
    """Aspect ratio nearest ``aspect`` in log, ties to the closer N."""
    return sorted(candidates, key=lambda c: (round(abs(math.log(c[0] / c[1] / aspect)), 6), abs(c[2] / n_target - 1)))


def choose_shape(
    program: Program,
    n_target: float,
    seq_len: int = 128,
    head_dim: int = HEAD_DIM,
    aspect: float = ASPECT,
    tolerance: float = TOLERANCE,
) -> ModelConfig:
    """The shape whose exact non-embedding N is within ``tolerance`` of ``n_target``.

    Raises:
      ValueError: no shape of this block lands within tolerance (N too small for one
        layer of width ``head_dim``, or beyond ``MAX_LAYERS`` x ``MAX_WIDTH_UNITS``).
    """
    if not n_target > 0:  # also catches NaN
        raise ValueError(f"requested N must be positive, got {n_target}")
    per_layer, fixed = _per_layer_quadratic(program, seq_len, head_dim)
    for d, n_layers, _ in _rank(_candidates(per_layer, fixed, n_target, tolerance), n_target, aspect)[:8]:
        cfg = model_config(program, d, n_layers, seq_len, head_dim)  # the quadratic is exact for usual blocks
        n = counting.count_params(program, cfg).n_params
        if abs(n / n_target - 1) <= tolerance:
            return cfg
    exact = _rank(_exact_candidates(program, n_target, tolerance, seq_len, head_dim), n_target, aspect)
    if exact:
        return model_config(program, exact[0][0], exact[0][1], seq_len, head_dim)
    smallest = int(np.polyval(per_layer, WIDTH_STEP) + np.polyval(fixed, WIDTH_STEP))
    raise ValueError(
        f"no (d_model, n_layers) gives N within {tolerance:.0%} of {n_target:.3g} for this block "
        f"(one layer at d_model={WIDTH_STEP} already has N={smallest}); request a larger N"
        if n_target < smallest
        else f"no (d_model, n_layers) gives N within {tolerance:.0%} of {n_target:.3g}; "
        f"the search covers d_model up to {MAX_WIDTH} and {MAX_LAYERS} layers"
    )
