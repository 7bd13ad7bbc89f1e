"""Stage 2's early stopping: prune a base run whose learning curve is clearly behind.

Successive-halving style (Jamieson & Talwalkar 2016; Li et al. 2017,
Hyperband): at a few rungs (fractions of the run's D) the candidate's train
loss is compared with the incumbents' at the same token count and the same
(N, D); a candidate worse than the incumbents' ``quantile`` by more than
``margin`` (relative) stops there as ``pruned``. Losses are averaged over a
window before each rung, because one fused step's loss is noisy. The margin
defaults to 10% at the end of the run, because seed-to-seed spread at a few
hundred steps is 1 to 5% (DESIGN.md), and widens as ``margin / sqrt(rung)``
at earlier rungs (20% at a quarter of D), because early in training the curves
are steep and relative gaps are larger than the gaps they end with: only a
candidate well outside the noise is stopped, and DESIGN.md's lesson that
rankings at small budgets can flip argues for erring on the side of training.

Pure Python on plain data, so the worker builds the stopper from the JSON it
receives and nothing here imports JAX.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evaluator.protocol import Curve

ShouldStop = Callable[[int, float], bool]


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Attributes:
    rungs: fractions of D at which the candidate is compared (increasing, in (0, 1)).
    margin: prune when the candidate's loss exceeds the reference by this fraction
      (at rung r the margin used is ``margin / sqrt(r)`` when ``widen_early``).
    quantile: which incumbent is the reference at each rung: 0 the best, 0.5 the
      median, 1 the worst.
    window: fraction of D before each rung over which losses are averaged.
    min_incumbents: compare only when at least this many incumbent curves exist.
    widen_early: widen the margin at early rungs as ``1 / sqrt(rung)``.
    """

    rungs: tuple[float, ...] = (0.25, 0.5, 0.75)
    margin: float = 0.10
    quantile: float = 0.5
    window: float = 0.1
    min_incumbents: int = 1
    widen_early: bool = True

    def margin_at(self, rung: float) -> float:
        return self.margin / math.sqrt(rung) if self.widen_early else self.margin

    def __post_init__(self):
        if not self.rungs or any(not 0 < r < 1 for r in self.rungs) or list(self.rungs) != sorted(self.rungs):
            raise ValueError(f"rungs must be increasing fractions in (0, 1), got {self.rungs!r}")
        if self.margin < 0 or not 0 <= self.quantile <= 1 or not 0 < self.window < 1 or self.min_incumbents < 1:
            raise ValueError(f"bad early-stopping settings {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Stopper:
    """The ``should_stop(tokens, train_loss)`` callable ``train_run`` receives.

    ``decision`` says why it stopped the run (None while it has not).
    """

    def __init__(self, incumbents: Sequence[Curve], n_tokens: int, config: EarlyStopping):
        self.config = config
        self.n_tokens = int(n_tokens)
        self.seen: list[tuple[int, float]] = []
        self.next_rung = 0
        self.decision: str | None = None
        self.references = [self._reference(incumbents, r) for r in config.rungs]

    def _reference(self, incumbents: Sequence[Curve], rung: float) -> float | None:
        lo, hi = (rung - self.config.window) * self.n_tokens, rung * self.n_tokens
        values = [v for curve in incumbents if (v := window_mean(curve, lo, hi)) is not None]
        if len(values) < self.config.min_incumbents:
            return None
        return quantile(values, self.config.quantile)

    def __call__(self, tokens: int, loss: float) -> bool:
        self.seen.append((int(tokens), float(loss)))
        while self.next_rung < len(self.config.rungs) and tokens >= self.config.rungs[self.next_rung] * self.n_tokens:
            rung, reference = self.config.rungs[self.next_rung], self.references[self.next_rung]
            self.next_rung += 1
            if reference is None:
                continue
            lo = (rung - self.config.window) * self.n_tokens
            mine = [v for t, v in self.seen if t >= lo] or [float(loss)]
            value = statistics.fmean(mine)
            margin = self.config.margin_at(rung)
            if not math.isfinite(value) or value > reference * (1 + margin):
                self.decision = (
                    f"at {rung:.0%} of D ({tokens} tokens) train loss {value:.4f} is more than "
                    f"{margin:.0%} above the incumbents' {reference:.4f} (quantile {self.config.quantile:g})"
                )
                return True
        return False


def make_should_stop(spec: Mapping[str, Any] | None, n_tokens: int) -> Stopper | None:
    """Build the stopper from the plain dict a ``StageSpec.early_stopping`` holds.

    The dict holds ``EarlyStopping`` fields plus ``curves`` (the incumbents'
    learning curves at this (N, D)). No curves, no stopping.
    """
    if not spec or not spec.get("curves"):
        return None
    fields = {f.name for f in dataclasses.fields(EarlyStopping)}
    config = EarlyStopping(**{k: tuple(v) if k == "rungs" else v for k, v in spec.items() if k in fields})
    return Stopper(spec["curves"], n_tokens, config)


def window_mean(curve: Curve, lo: float, hi: float) -> float | None:
    """Mean train loss of ``curve`` points with tokens in ``[lo, hi]``, else the
    loss interpolated at ``hi``; None when the curve does not reach ``hi``."""
    points = sorted((float(p[1]), float(p[2])) for p in curve)
    if not points or points[-1][0] < hi:
        return None
    inside = [v for t, v in points if lo <= t <= hi]
    if inside:
        return statistics.fmean(inside)
    tokens = [t for t, _ in points]
    i = bisect.bisect_left(tokens, hi)
    if i == 0:
        return points[0][1]
    (t0, v0), (t1, v1) = points[i - 1], points[i]
    return v0 + (v1 - v0) * (hi - t0) / (t1 - t0)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    i = math.floor(pos)
    if i + 1 >= len(xs):
        return xs[-1]
    return xs[i] + (xs[i + 1] - xs[i]) * (pos - i)
