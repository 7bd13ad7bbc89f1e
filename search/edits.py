"""The mutator's library: edits of candidate programs that keep them valid.

Each edit takes a ``Draft`` (a program being edited) and the caller's generator,
changes one setting, and returns a description, or None when it does not apply
(a setting it cannot read, or no value left to try). ``EDITS`` names them all,
with the block each changes; ``search.mutate`` draws from it.

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
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evaluator import pyast
from proxy_models.program import DEFAULT_HYPERPARAMETERS, is_read
from search import model_spec, programs
from search.programs import ReturnedDict

_UNKNOWN = object()  # a setting whose value cannot be read from the source


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
