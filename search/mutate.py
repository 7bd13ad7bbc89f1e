"""The built-in mutator: a library of meaningful edits to candidate programs, and crossover.

It is the default proposer when no language model is configured, so it must
turn any program the campaign holds into a *valid*, *different* program. It
works on source text and ``ast`` only (nothing is executed), and it is seeded:
every choice takes the caller's ``np.random.Generator``.

How edits stay valid:

- **Model block: a spec when one can be recovered, else targeted AST edits.**
  The mutator owns a canonical renderer (``search.model_spec.render``) that
  writes the model block from a small spec (norm type and placement, QK-norm,
  heads, grouped-query heads, positions, activation, GLU, MLP ratio, parallel
  attention and MLP, mixture of experts, depth-scaled init, tied embeddings,
  final norm). A rendered block carries its spec as a ``# spec:`` comment; the
  spec is trusted only if rendering it gives back the block's code exactly (so
  a language model's later edit of the code, with a stale comment, is noticed).
  The shipped seed programs are recognised by their normal form. With a spec,
  every model edit is a change of one or a few spec fields followed by a
  re-render, which is valid by construction. A block the mutator cannot read
  (a language model wrote it) gets edits that rewrite only what they touch: the
  norm functions' names, an activation string, a keyword of ``attention_init``
  / ``attention`` / ``mlp_init``, the MLP width, or an entry of the dict that
  ``model_options`` returns. Structural edits (placement, parallel, heads, MoE)
  need a spec and are skipped otherwise.
- **Strategy block: edits of the returned dict.** ``hyperparameters`` nearly
  always returns a dict display; an edit replaces or adds one entry's
  expression and leaves everything else, comments included, as it was. A
  function that builds its dict some other way is first wrapped, once, as
  ``return {**_hyperparameters_base(n_params, n_tokens), ...}`` so that the
  same edits apply.
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
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import numpy as np

from evaluator import pyast
from proxy_models.program import DEFAULT_HYPERPARAMETERS, is_read
from search import model_spec, programs
from search.programs import ReturnedDict

_UNKNOWN = object()  # a setting whose value cannot be read from the source


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



# ----------------------------------------------------------------------------- drafts


class Draft:
    """A program being edited: its blocks, its model spec if known, and its strategy dict."""

    def __init__(self, source: str):
        self.source = source
        self.blocks = programs.blocks(source)
        self.env = model_spec.Environment.of(programs.scaffold(source))
        model = self.blocks.get("model")
        self.spec = model_spec.recover(model, self.env) if model is not None else None

    def text(self) -> str:
        out = self.source
        for name, text in self.blocks.items():
            out = programs.replace_block(out, name, text)
        return out

    def set_spec(self, spec: dict) -> None:
        self.spec = spec
        self.blocks["model"] = model_spec.render(spec, self.env)

    def set_model_text(self, text: str) -> None:
        """A fallback edit: the spec no longer describes the block, so its comment goes."""
        self.spec = None
        self.blocks["model"] = "".join(l for l in text.splitlines(keepends=True) if not l.startswith("# spec:"))

    def returned_dict(self, block: str, name: str, args: str) -> ReturnedDict | None:
        """The dict that ``name`` returns in ``block`` (see ``programs.returned_dict``)."""
        text = self.blocks.get(block)
        return programs.returned_dict(text, name, args) if text is not None else None

    def hp(self) -> ReturnedDict | None:
        found = self.returned_dict("strategy", "hyperparameters", "n_params, n_tokens")
        return found if found is not None and len(found.args) == 2 else None

    def options(self) -> ReturnedDict | None:
        return self.returned_dict("model", "model_options", "cfg") if self.spec is None else None


def _literal(expr: str | None) -> Any:
    try:
        return ast.literal_eval(expr)
    except (ValueError, SyntaxError, TypeError):
        return _UNKNOWN


def _current(d: ReturnedDict, key: str, defaults: dict) -> Any:
    expr = d.get(key)
    if expr is None:
        return defaults.get(key) if not d.spreads else _UNKNOWN
    return _literal(expr)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b or (type(a) is type(b) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1e-300)
    return a == b


def _choose(rng: np.random.Generator, options: Sequence, current: Any) -> Any:
    left = [o for o in options if not _same(o, current)]
    return left[int(rng.integers(len(left)))] if left else _UNKNOWN


def _num(x: float) -> str:
    """A short literal: three significant digits, always a float unless ``x`` is an int."""
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    s = f"{x:.3g}"
    return s if any(c in s for c in ".en") else s + ".0"


def _py(value: Any) -> str:
    if isinstance(value, float):
        return _num(value)
    return '"' + value + '"' if isinstance(value, str) else repr(value)


def _show(value: Any) -> str:
    return "?" if value is _UNKNOWN else _py(value)


# ----------------------------------------------------------------------------- the library

Edit = Callable[[Draft, np.random.Generator], "str | None"]
EDITS: dict[str, tuple[str, Edit]] = {}  # name -> (block, edit); each returns a description or None


def edit(name: str, block: str):
    def register(fn: Edit) -> Edit:
        EDITS[name] = (block, fn)
        return fn

    return register


def _spec_edit(d: Draft, rng: np.random.Generator, field: str, when: Callable[[dict], bool] = lambda s: True):
    if d.spec is None or not when(model_spec.full(d.spec)):
        return None
    current = model_spec.full(d.spec)[field]
    new = _choose(rng, model_spec.CHOICES[field], current)
    if new is _UNKNOWN:
        return None
    d.set_spec({**d.spec, field: new})
    return f"{field} {_show(current)} -> {_show(new)}"


def _model_edit(field: str, fallback: Callable[[Draft, np.random.Generator], str | None] | None = None, when=None):
    def fn(d: Draft, rng: np.random.Generator) -> str | None:
        if d.spec is not None:
            return _spec_edit(d, rng, field, when or (lambda s: True))
        return fallback(d, rng) if fallback is not None else None

    return fn


def _fallback(kind: str) -> Callable[[Draft, np.random.Generator], str | None]:
    def fn(d: Draft, rng: np.random.Generator) -> str | None:
        text, note = model_spec.FALLBACKS[kind](d.blocks["model"], d.env, rng)
        if text is None:
            return None
        d.set_model_text(text)
        return note

    return fn


def _options_edit(key: str, options: Sequence) -> Callable[[Draft, np.random.Generator], str | None]:
    def fn(d: Draft, rng: np.random.Generator) -> str | None:
        opts = d.options()
        if opts is None:
            return None
        current = _current(opts, key, model_spec.DEFAULT_MODEL_OPTIONS)
        new = _choose(rng, options, current)
        if new is _UNKNOWN:
            return None
        opts.set(key, _py(new))
        d.set_model_text(opts.render())
        return f"model_options {key} {_show(current)} -> {_show(new)}"

    return fn


edit("norm_type", "model")(_model_edit("norm", _fallback("norm")))
edit("norm_placement", "model")(_model_edit("placement"))
edit("parallel_block", "model")(_model_edit("parallel"))
edit("qk_norm", "model")(_model_edit("qk_norm", _fallback("qk_norm")))
edit("activation", "model")(_model_edit("activation", _fallback("activation")))
edit("glu", "model")(_model_edit("glu", _fallback("glu")))
edit("mlp_ratio", "model")(_model_edit("mlp_ratio", _fallback("mlp_ratio")))
edit("head_count", "model")(_model_edit("heads"))
edit("grouped_query", "model")(_model_edit("kv_groups"))
edit("positions", "model")(_model_edit("positions", _fallback("positions")))
edit("moe_experts", "model")(_model_edit("experts", when=lambda s: s["experts"] > 0))
edit("moe_top_k", "model")(_model_edit("top_k", when=lambda s: s["experts"] > 0))
edit("depth_scaled_init", "model")(_model_edit("depth_scaled_init"))
edit("tied_embeddings", "model")(_model_edit("tie_embeddings", _options_edit("tie_embeddings", (False, True))))
edit("final_norm", "model")(_model_edit("final_norm", _options_edit("final_norm", ("rms", "layer"))))


@edit("swiglu", "model")
def _swiglu(d: Draft, rng: np.random.Generator) -> str | None:
    target = {"glu": True, "activation": "silu", "mlp_ratio": "8/3"}
    if d.spec is None:
        notes = [_fallback(kind)(d, rng) for kind in ("glu_on", "silu")]
        return "swiglu: " + ", ".join(n for n in notes if n) if any(notes) else None
    if all(model_spec.full(d.spec)[k] == v for k, v in target.items()):
        return None
    d.set_spec({**d.spec, **target})
    return "swiglu: gated SiLU MLP, width 8/3 D"


@edit("mixture_of_experts", "model")
def _moe(d: Draft, rng: np.random.Generator) -> str | None:
    if d.spec is None:
        return None
    if model_spec.full(d.spec)["experts"]:
        d.set_spec({**d.spec, "experts": 0})
        return "dense MLP instead of mixture of experts"
    experts, top_k = int(rng.choice([4, 8])), int(rng.choice([1, 2]))
    d.set_spec({**d.spec, "experts": experts, "top_k": top_k})
    return f"mixture of {experts} experts, top-{top_k}"


def _read(hp: ReturnedDict, key: str) -> bool:
    """Whether the strategy reads ``key`` (see ``is_read``); True when its schedule or optimizer is computed."""
    known = {k: _current(hp, k, DEFAULT_HYPERPARAMETERS) for k in ("schedule", "optimizer")}
    return any(v is _UNKNOWN for v in known.values()) or is_read(key, known)


def _hp_edit(key: str, options: Sequence) -> Edit:
    def fn(d: Draft, rng: np.random.Generator) -> str | None:
        hp = d.hp()
        if hp is None or not _read(hp, key):  # editing a setting nothing reads would be a no-op
            return None
        current = _current(hp, key, DEFAULT_HYPERPARAMETERS)
        new = _choose(rng, options, current)
        if new is _UNKNOWN:
            return None
        hp.set(key, _py(new))
        d.blocks["strategy"] = hp.render()
        return f"{key} {_show(current)} -> {_show(new)}"

    return fn


edit("warmup", "strategy")(_hp_edit("warmup_fraction", (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)))
edit("schedule", "strategy")(_hp_edit("schedule", ("cosine", "linear", "wsd", "constant")))
edit("final_lr", "strategy")(_hp_edit("final_lr_fraction", (0.0, 0.01, 0.05, 0.1, 0.2)))
edit("wsd_decay", "strategy")(_hp_edit("decay_fraction", (0.1, 0.2, 0.3, 0.5)))
edit("beta1", "strategy")(_hp_edit("beta1", (0.8, 0.9, 0.95)))
edit("beta2", "strategy")(_hp_edit("beta2", (0.95, 0.98, 0.99, 0.995, 0.999)))
edit("weight_decay", "strategy")(_hp_edit("weight_decay", (None, 0.0, 1e-4, 3e-4, 1e-3)))
edit("z_loss", "strategy")(_hp_edit("z_loss", (0.0, 1e-5, 1e-4, 1e-3)))
edit("clipping", "strategy")(_hp_edit("clip", (None, 0.25, 0.5, 1.0, 2.0)))


def _lr_rule(expr: str, n_name: str) -> tuple[float, float] | None:
    """(value at N = 1e5, exponent e) of ``c`` or ``c * (N / 1e5) ** -e``; None for anything else."""
    value = _literal(expr)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), 0.0
    try:
        node = pyast.parse(expr, mode="eval").body
        c, power = node.left.value, node.right
        ratio, e = power.left, -_literal(ast.unparse(power.right))
        ok = isinstance(node.op, ast.Mult) and isinstance(power.op, ast.Pow) and isinstance(ratio.op, ast.Div)
        ok = ok and ratio.left.id == n_name and _literal(ast.unparse(ratio.right)) == 1e5
        return (float(c), float(e)) if ok else None
    except (AttributeError, TypeError):
        return None


def _render_lr(c: float, e: float, n_name: str) -> str:
    return _num(c) if e == 0 else f"{_num(c)} * ({n_name} / 1e5) ** -{_num(e)}"


def _lr(d: Draft) -> tuple[ReturnedDict, str] | None:
    hp = d.hp()
    if hp is None:
        return None
    expr = hp.get("learning_rate")
    if expr is None:
        default = _num(DEFAULT_HYPERPARAMETERS["learning_rate"])
        expr = f'({hp.spreads[-1]}).get("learning_rate", {default})' if hp.spreads else default
    return hp, expr


@edit("learning_rate", "strategy")
def _learning_rate(d: Draft, rng: np.random.Generator) -> str | None:
    found = _lr(d)
    if found is None:
        return None
    hp, expr = found
    factor = float(rng.choice([0.5, 0.7, 1.4, 2.0]))
    rule = _lr_rule(expr, hp.args[0])
    hp.set("learning_rate", _render_lr(rule[0] * factor, rule[1], hp.args[0]) if rule else f"{factor} * ({expr})")
    d.blocks["strategy"] = hp.render()
    return f"learning rate x{factor}"


@edit("lr_scaling", "strategy")
def _lr_scaling(d: Draft, rng: np.random.Generator) -> str | None:
    """Learning rate as a power of N (at a fixed aspect ratio, width^-2e), anchored at N = 1e5."""
    found = _lr(d)
    if found is None:
        return None
    hp, expr = found
    rule = _lr_rule(expr, hp.args[0])
    e = _choose(rng, (0.0, 0.1, 0.25, 0.5), rule[1] if rule else 0.0)
    n = hp.args[0]
    hp.set("learning_rate", _render_lr(rule[0], e, n) if rule else f"({expr}) * ({n} / 1e5) ** -{_num(e)}")
    d.blocks["strategy"] = hp.render()
    return f"learning rate proportional to N^-{_num(e)}"


@edit("batch_size", "strategy")
def _batch_size(d: Draft, rng: np.random.Generator) -> str | None:
    """A constant batch, or one that grows as a power of D (rounded to multiples of 8)."""
    hp = d.hp()
    if hp is None:
        return None
    current = hp.get("batch_size")
    if rng.random() < 0.5:
        new = _choose(rng, (8, 16, 32, 64), _current(hp, "batch_size", DEFAULT_HYPERPARAMETERS))
        if new is _UNKNOWN:
            return None
        expr, note = str(new), f"batch size {new}"
    else:
        base, power = int(rng.choice([8, 16, 32])), float(rng.choice([0.25, 0.5]))
        expr = f"max(8, min(128, round({base} * ({hp.args[1]} / 5e5) ** {power} / 8) * 8))"
        note = f"batch size {base} at D = 5e5, growing as D^{power}"
    if expr == current:
        return None
    hp.set("batch_size", expr)
    d.blocks["strategy"] = hp.render()
    return note


_DILOCO = ("diloco_replicas", "diloco_inner_steps", "diloco_outer_lr", "diloco_outer_momentum")


@edit("diloco", "strategy")
def _diloco(d: Draft, rng: np.random.Generator) -> str | None:
    """Switch between AdamW and DiLoCo (M replicas, H inner AdamW steps, Nesterov outer step)."""
    hp = d.hp()
    if hp is None:
        return None
    current = _current(hp, "optimizer", DEFAULT_HYPERPARAMETERS)
    if current == "diloco":
        hp.set("optimizer", '"adamw"')
        for key in _DILOCO:
            hp.delete(key)
        note = "optimizer diloco -> adamw"
    else:
        replicas, inner = int(rng.choice([2, 4])), int(rng.choice([4, 8, 16]))
        hp.set("optimizer", '"diloco"')
        hp.set("diloco_replicas", str(replicas))
        hp.set("diloco_inner_steps", str(inner))
        note = f"optimizer -> diloco ({replicas} replicas, {inner} inner steps)"
    d.blocks["strategy"] = hp.render()
    return note


@edit("diloco_settings", "strategy")
def _diloco_settings(d: Draft, rng: np.random.Generator) -> str | None:
    hp = d.hp()
    if hp is None or _current(hp, "optimizer", DEFAULT_HYPERPARAMETERS) != "diloco":
        return None
    options = {
        "diloco_replicas": (2, 4, 8),
        "diloco_inner_steps": (4, 8, 16, 32),
        "diloco_outer_lr": (0.5, 0.7, 1.0),
        "diloco_outer_momentum": (0.8, 0.9),
    }
    key = _DILOCO[int(rng.integers(len(_DILOCO)))]
    return _hp_edit(key, options[key])(d, rng)


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
