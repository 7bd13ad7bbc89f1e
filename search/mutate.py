"""The built-in mutator: children of parents by edits from the library (``search.edits``) and by crossover.

It is the default proposer when no language model is configured, so it must
turn any program the campaign holds into a *valid*, *different* program. It
works on source text and ``ast`` only (nothing is executed), and it is seeded:
every choice takes the caller's ``np.random.Generator``.

- A child is one to ``max_edits`` edits of a parent, drawn without replacement
  with probability proportional to ``edit_weights``; better parents are mutated
  more often.
- **Crossover** takes the model block of one parent and the strategy block of
  the other; and, when both parents' model specs are known, mixes their spec
  fields, and mixes the entries of their strategy dicts (entries whose
  expressions use only the function's arguments and builtins).
- **No no-ops, no duplicates.** An edit never picks the value a setting already
  has (defaults included), and a child whose normalised source equals its
  parent's or one in the caller's ``seen`` hashes is dropped and another edit
  is tried.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Collection, Sequence
from typing import Protocol

import numpy as np

from evaluator import pyast
from search import model_spec, programs
from search.edits import EDITS, Draft


class ParentLike(Protocol):
    program_id: int
    source: str


@dataclasses.dataclass(frozen=True)
class Child:
    """A proposed program: its source, its parents, and what was changed."""

    source: str
    parent_ids: tuple[int, ...]
    note: str
    source_hash: str


# The learning rate is the hyperparameter a recipe is most sensitive to
# (Bengio 2012, "Practical recommendations for gradient-based training", sec. 3.1;
# Wortsman et al. 2023 measure loss against it at every proxy scale), and the
# schedule and warmup come next. With ~30 equally likely edits, a 30-candidate
# campaign would try the learning rate about once; these weights make it several
# times, while every other edit stays in play.
DEFAULT_EDIT_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("learning_rate", 4.0),
    ("lr_scaling", 1.5),
    ("schedule", 2.0),
    ("warmup", 1.5),
)


@dataclasses.dataclass(frozen=True)
class MutatorConfig:
    """How the mutator proposes.

    Attributes:
      evolve: the blocks it may change (the campaign's evolved blocks).
      crossover_rate: probability that a child is a crossover (with two parents or more).
      more_edits: probability of each further edit in one child.
      max_edits: edits per child at most.
      attempts: tries per child before giving up (all duplicates, say).
      edit_weights: (edit name, weight) pairs; an edit not named weighs 1. The
        chance that an edit comes first in a child is proportional to its weight.
    """

    evolve: tuple[str, ...] = ("model", "strategy")
    crossover_rate: float = 0.2
    more_edits: float = 0.35
    max_edits: int = 3
    attempts: int = 40
    edit_weights: tuple[tuple[str, float], ...] = DEFAULT_EDIT_WEIGHTS


# ----------------------------------------------------------------------------- crossover


def _self_contained(expr: str, args: Sequence[str]) -> bool:
    """Whether ``expr`` uses only the function's arguments, builtins for numbers, and math."""
    allowed = {*args, "math", "min", "max", "int", "float", "round", "abs", "None", "True", "False"}
    try:
        names = {n.id for n in ast.walk(pyast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
    except SyntaxError:
        return False
    return names <= allowed


def _mix(rng: np.random.Generator, a: dict, b: dict, keys: Sequence) -> dict | None:
    """``a`` with each differing key taken from ``b`` with probability 1/2 (at least one, not all)."""
    differ = [k for k in keys if a.get(k) != b.get(k)]
    if len(differ) < 2:
        return None
    take = rng.random(len(differ)) < 0.5
    if take.all() or not take.any():
        take[int(rng.integers(len(differ)))] ^= True
    return {**a, **{k: b[k] for k, t in zip(differ, take, strict=True) if t and k in b}}


def _spec_crossover(a: Draft, b: Draft, rng: np.random.Generator) -> str | None:
    if a.spec is None or b.spec is None:
        return None
    fa, fb = model_spec.full(a.spec), model_spec.full(b.spec)
    mixed = _mix(rng, fa, fb, list(model_spec.CHOICES))
    if mixed is None:
        return None
    a.set_spec(model_spec.diff(mixed))
    return "model spec crossover"


def _strategy_crossover(a: Draft, b: Draft, rng: np.random.Generator) -> str | None:
    ha, hb = a.hp(), b.hp()
    if ha is None or hb is None or ha.args != hb.args:
        return None
    ea = {k: ha.get(k) for k in ha.keys()}
    eb = {k: hb.get(k) for k in hb.keys() if _self_contained(hb.get(k), hb.args)}
    mixed = _mix(rng, ea, eb, sorted(eb))
    if mixed is None:
        return None
    for key, expr in mixed.items():
        if expr != ea.get(key):
            ha.set(key, expr)
    a.blocks["strategy"] = ha.render()
    return "strategy crossover"


# ----------------------------------------------------------------------------- the mutator


def edit_weights(weights: Sequence[tuple[str, float]], names: Sequence[str]) -> np.ndarray:
    """Probabilities over ``names`` (1 for an edit not in ``weights``).

    Raises:
      ValueError: an unknown edit name, or a weight that is negative or not finite.
    """
    given = dict(weights)
    unknown = sorted(set(given) - set(EDITS))
    if unknown:
        raise ValueError(f"unknown mutator edit(s) {unknown}; the edits are: {', '.join(sorted(EDITS))}")
    bad = {k: v for k, v in given.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"mutator edit weights must be finite numbers >= 0, got {bad}")
    w = np.array([float(given.get(name, 1.0)) for name in names])
    if not w.sum() > 0:
        raise ValueError("every mutator edit has weight 0; give at least one a positive weight")
    return w / w.sum()


class Mutator:
    """Proposes children of parents by edits from ``EDITS`` and by crossover."""

    def __init__(self, config: MutatorConfig = MutatorConfig()):
        self.config = config
        self.edits = [(name, fn) for name, (block, fn) in EDITS.items() if block in config.evolve]
        self.weights = edit_weights(config.edit_weights, [name for name, _ in self.edits])

    def _accept(self, parents: Sequence[ParentLike], source: str, note: str, seen: Collection[str]) -> Child | None:
        digest = programs.source_hash(source)
        if not note or digest in seen or any(digest == programs.source_hash(p.source) for p in parents):
            return None
        try:
            pyast.parse(source)
            same_blocks = programs.blocks(source).keys() == programs.blocks(parents[0].source).keys()
        except (SyntaxError, programs.BlockError):
            return None
        if not same_blocks:
            return None
        return Child(source, tuple(p.program_id for p in parents), note, digest)

    def mutate(self, parent: ParentLike, rng: np.random.Generator, seen: Collection[str] = frozenset()) -> Child | None:
        """One to ``max_edits`` edits of ``parent``; None if every attempt was a no-op or seen."""
        for _ in range(self.config.attempts):
            draft, notes = Draft(parent.source), []
            usable = int(np.count_nonzero(self.weights))
            for i in rng.choice(len(self.edits), size=usable, replace=False, p=self.weights):
                name, fn = self.edits[i]
                note = fn(draft, rng)
                if note:
                    notes.append(f"{name}: {note}")
                    if len(notes) >= self.config.max_edits or rng.random() >= self.config.more_edits:
                        break
            child = self._accept([parent], draft.text(), "; ".join(notes), seen)
            if child is not None:
                return child
        return None

    def crossover(
        self, a: ParentLike, b: ParentLike, rng: np.random.Generator, seen: Collection[str] = frozenset()
    ) -> Child | None:
        """``a``'s model block with ``b``'s strategy block; or a mix of their specs and strategy entries."""
        evolve = self.config.evolve
        swap = "model" in evolve and "strategy" in evolve
        for attempt in range(self.config.attempts):
            da, db = Draft(a.source), Draft(b.source)
            if swap and attempt == 0 and "strategy" in db.blocks and "strategy" in da.blocks:
                da.blocks["strategy"] = db.blocks["strategy"]
                note = f"crossover: model of {a.program_id}, strategy of {b.program_id}"
            else:
                parts = [
                    _spec_crossover(da, db, rng) if "model" in evolve else None,
                    _strategy_crossover(da, db, rng) if "strategy" in evolve else None,
                ]
                note = "; ".join(p for p in parts if p)
            child = self._accept([a, b], da.text(), note, seen)
            if child is not None:
                return child
        return None

    def propose(
        self, parents: Sequence[ParentLike], rng: np.random.Generator, seen: Collection[str] = frozenset(), n: int = 1
    ) -> list[Child]:
        """Up to ``n`` distinct children of ``parents`` (worst first, best last, as sampled).

        Better parents are mutated more often (weight proportional to rank), and
        a child is a crossover of two parents with probability ``crossover_rate``.
        """
        if not parents:
            raise ValueError("propose needs at least one parent")
        seen, out = set(seen), []
        weights = np.arange(1, len(parents) + 1, dtype=float)
        for _ in range(n):
            if len(parents) > 1 and rng.random() < self.config.crossover_rate:
                i, j = rng.choice(len(parents), size=2, replace=False, p=weights / weights.sum())
                child = self.crossover(parents[i], parents[j], rng, seen)  # i's model, j's strategy
            else:
                child = self.mutate(parents[int(rng.choice(len(parents), p=weights / weights.sum()))], rng, seen)
            if child is not None:
                seen.add(child.source_hash)
                out.append(child)
        return out
