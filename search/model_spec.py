"""The mutator's view of a model block: a spec it can render, recover and edit.

A spec is a dict of the fields in ``CHOICES`` (missing fields take the
reference recipe's value, ``DEFAULTS``). ``render`` writes a complete, valid
model block from it using the helpers in ``proxy_models.layers``; ``recover``
reads a spec back from a block (its ``# spec:`` comment, trusted only when
rendering it reproduces the block's code, or one of the shipped seeds).

``FALLBACKS`` are the edits for blocks without a spec: each rewrites only the
calls or names it touches, through ``ast`` positions, and returns the new text
(or None when the block has nothing to edit) with a note.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
from collections.abc import Callable, Mapping

import numpy as np

from evaluator import pyast
from proxy_models.program import DEFAULT_MODEL_OPTIONS, seed_source
from search import programs

CHOICES: dict[str, tuple] = {
    "norm": ("rms", "layer"),
    "placement": ("pre", "post", "sandwich"),  # sandwich: pre-norm plus a norm on each branch's output
    "parallel": (False, True),  # attention and MLP read the same input (GPT-J, PaLM)
    "qk_norm": (True, False),
    "heads": (1, 0.5, 2),  # multiplier on the harness's head count
    "kv_groups": (1, 2, 4),  # query heads per key/value head (grouped-query attention)
    "positions": ("rope", "learned", "none"),
    "activation": ("gelu", "relu", "silu", "relu2"),
    "glu": (False, True),
    "mlp_ratio": ("4", "8/3", "2", "3", "6"),
    "experts": (0, 4, 8),  # 0: a dense MLP
    "top_k": (2, 1),
    "depth_scaled_init": (True, False),  # residual branch outputs initialised at 1/sqrt(2 n_layers)
    "tie_embeddings": (False, True),
    "final_norm": ("rms", "layer"),
}
DEFAULTS = {field: options[0] for field, options in CHOICES.items()}  # the reference recipe

# Specs of the shipped seed programs (recognised by their normal form).
SEED_SPECS = {
    "reference": {},
    "weakened": {"norm": "layer", "placement": "post", "qk_norm": False, "activation": "relu", "depth_scaled_init": False},
}

_DIVISOR = '''def _divisor(n, at_most, even_quotient=False):
    """The largest divisor of n that is at most at_most (leaving an even quotient if asked)."""
    for k in range(max(1, min(n, at_most)), 0, -1):
        if n % k == 0 and (not even_quotient or (n // k) % 2 == 0):
            return k
    return 1
'''


@dataclasses.dataclass(frozen=True)
class Environment:
    """What the scaffolding provides: the name of ``proxy_models.layers`` and missing imports."""

    alias: str = "L"
    preamble: tuple[str, ...] = ()

    @classmethod
    def of(cls, scaffold: str) -> Environment:
        try:
            tree = pyast.parse(scaffold)
        except SyntaxError:
            return cls(preamble=("import jax", "from proxy_models import layers as L"))
        alias, has_jax = None, False
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module == "proxy_models":
                alias = next((a.asname or a.name for a in node.names if a.name == "layers"), alias)
            elif isinstance(node, ast.Import):
                has_jax |= any(a.name == "jax" and a.asname is None for a in node.names)
                alias = next((a.asname for a in node.names if a.name == "proxy_models.layers" and a.asname), alias)
        preamble = ([] if has_jax else ["import jax"]) + ([] if alias else ["from proxy_models import layers as L"])
        return cls(alias or "L", tuple(preamble))


def full(spec: Mapping) -> dict:
    return {**DEFAULTS, **spec}


def diff(spec: Mapping) -> dict:
    """Only the fields that differ from the reference recipe."""
    return {k: v for k, v in full(spec).items() if v != DEFAULTS[k] or type(v) is not type(DEFAULTS[k])}


def check(spec: Mapping) -> None:
    """Raises ValueError naming the first field that is unknown or out of range."""
    for field, value in spec.items():
        if field not in CHOICES:
            raise ValueError(f"unknown model spec field {field!r}; known: {sorted(CHOICES)}")
        if not any(value == o and type(value) is type(o) for o in CHOICES[field]):
            raise ValueError(f"model spec {field}={value!r} is not one of {CHOICES[field]}")


def _py(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _d_ff(ratio: str) -> str:
    num, _, den = ratio.partition("/")
    return f"{num} * cfg.d_model // {den}" if den else f"{num} * cfg.d_model"


def _norm_names(s: dict) -> tuple[str, str, str | None, str | None]:
    """Parameter names of (attention input norm, MLP input norm, attention output norm, MLP output norm)."""
    attn_in, mlp_in = ("norm", "norm") if s["parallel"] else ("norm_attn", "norm_mlp")
    outs = ("norm_attn_out", "norm_mlp_out") if s["placement"] == "sandwich" else (None, None)
    return attn_in, mlp_in, *outs


def _init_lines(s: dict, lib: str) -> list[str]:
    norm_init = f"{lib}.{s['norm']}_norm_init(cfg.d_model)"
    lines = ["def init_block(key, cfg):", "    k_attn, k_mlp = jax.random.split(key)"]
    scale = ""
    if s["depth_scaled_init"]:
        lines.append("    out_scale = (2 * cfg.n_layers) ** -0.5  # residual branches shrink with depth")
        scale = ", out_scale=out_scale"
    heads = "cfg.n_heads"
    if s["heads"] != 1:
        lines.append(f"    n_heads = _divisor(cfg.d_model, int(cfg.n_heads * {s['heads']}), even_quotient=True)")
        heads = "n_heads"
    kv = f", n_kv_heads=_divisor({heads}, {heads} // {s['kv_groups']})" if s["kv_groups"] != 1 else ""
    glu = ", glu=True" if s["glu"] else ""
    if s["experts"]:
        ffn = f'"moe": {lib}.moe_init(k_mlp, cfg.d_model, {_d_ff(s["mlp_ratio"])}, n_experts={s["experts"]}, top_k={s["top_k"]}{glu})'
    else:
        ffn = f'"mlp": {lib}.mlp_init(k_mlp, cfg.d_model, {_d_ff(s["mlp_ratio"])}{glu}{scale})'
    attn_in, mlp_in, attn_out, mlp_out = _norm_names(s)
    entries = [f'"{attn_in}": {norm_init}']
    entries.append(f'"attn": {lib}.attention_init(k_attn, cfg.d_model, {heads}{kv}, qk_norm={s["qk_norm"]}{scale})')
    entries += [f'"{attn_out}": {norm_init}'] if attn_out else []
    entries += [f'"{mlp_in}": {norm_init}'] if mlp_in != attn_in else []
    entries.append(ffn)
    entries += [f'"{mlp_out}": {norm_init}'] if mlp_out else []
    return lines + ["    return {"] + [f"        {e}," for e in entries] + ["    }"]


def _apply_lines(s: dict, lib: str) -> list[str]:
    n = lambda name, h: f'{lib}.{s["norm"]}_norm(params["{name}"], {h})'  # noqa: E731
    attn = lambda h: f'{lib}.attention(params["attn"], {h}, rope={s["positions"] == "rope"})'  # noqa: E731
    lines = ["def apply_block(params, x, cfg):"]

    def ffn(h: str) -> str:
        if not s["experts"]:
            return f'{lib}.mlp(params["mlp"], {h}, "{s["activation"]}")'
        lines.append(f'    y, aux = {lib}.moe(params["moe"], {h}, "{s["activation"]}")  # aux: load-balancing loss')
        return "y"

    attn_in, mlp_in, attn_out, mlp_out = _norm_names(s)
    place = s["placement"]
    if not s["parallel"]:
        if place == "post":
            lines.append(f"    x = {n(attn_in, 'x + ' + attn('x'))}")
            lines.append(f"    x = {n(mlp_in, 'x + ' + ffn('x'))}")
        else:
            a = attn(n(attn_in, "x"))
            lines.append(f"    x = x + {n(attn_out, a) if attn_out else a}")
            f = ffn(n(mlp_in, "x"))
            lines.append(f"    x = x + {n(mlp_out, f) if mlp_out else f}")
    elif place == "post":
        f = ffn("x")
        lines.append(f"    x = {n(attn_in, 'x + ' + attn('x') + ' + ' + f)}")
    else:
        lines.append(f"    h = {n(attn_in, 'x')}")
        a, f = attn("h"), ffn("h")
        if attn_out:
            a, f = n(attn_out, a), n(mlp_out, f)
        lines.append(f"    x = x + {a} + {f}")
    lines.append("    return x, aux" if s["experts"] else "    return x")
    return lines


def render(spec: Mapping, env: Environment = Environment()) -> str:
    """The model block for ``spec``, headed by its ``# spec:`` comment.

    Raises:
      ValueError: the spec has an unknown field or value.
    """
    check(spec)
    s = full(spec)
    lines = [f"# spec: {json.dumps(diff(s), sort_keys=True)}", *env.preamble]
    if env.preamble:
        lines.append("")
    if s["heads"] != 1 or s["kv_groups"] != 1:
        lines += [*_DIVISOR.splitlines(), "", ""]
    lines += _init_lines(s, env.alias) + ["", ""] + _apply_lines(s, env.alias)
    options = {k: s[k] for k in ("tie_embeddings", "final_norm") if s[k] != DEFAULT_MODEL_OPTIONS[k]}
    if s["positions"] == "learned":
        options = {"positions": "learned", **options}
    if options:
        body = ", ".join(f'"{k}": {_py(v)}' for k, v in options.items())
        lines += ["", "", "def model_options(cfg):", f"    return {{{body}}}"]
    return "\n".join(lines) + "\n"


@functools.cache
def _seed_forms() -> dict[str, str]:
    return {name: programs.normalise(programs.blocks(seed_source(name))["model"]) for name in SEED_SPECS}


def recover(text: str, env: Environment = Environment()) -> dict | None:
    """The spec that renders to ``text``, or None if the block is not one the mutator can read."""
    form = programs.normalise(text)
    for line in text.splitlines():
        if line.startswith("# spec: "):
            try:
                spec = json.loads(line[len("# spec: ") :])
                if isinstance(spec, dict) and programs.normalise(render(spec, env)) == form:
                    return diff(spec)
            except ValueError:
                pass
            break
    for name, seed_form in _seed_forms().items():
        if form == seed_form:
            return dict(SEED_SPECS[name])
    return None


# ----------------------------------------------------------------------------- fallback edits

Fallback = Callable[[str, Environment, np.random.Generator], tuple[str | None, str]]
_NONE: tuple[None, str] = (None, "")


def _calls(tree: ast.AST, env: Environment, names: set[str]) -> list[ast.Call]:
    found = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == env.alias
        and n.func.attr in names
    ]
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def _pick(rng: np.random.Generator, options, current):
    left = [o for o in options if o != current]
    return left[int(rng.integers(len(left)))] if left else None


def _set_keyword(call: ast.Call, name: str, value) -> str:
    """The call's source with keyword ``name`` set to ``value``."""
    call = pyast.parse(ast.unparse(call), mode="eval").body  # a copy
    call.keywords = [k for k in call.keywords if k.arg != name] + [ast.keyword(name, ast.Constant(value))]
    return ast.unparse(call)


def _keyword(call: ast.Call, name: str, default):
    found = [k.value for k in call.keywords if k.arg == name]
    if not found:
        return default
    return found[-1].value if isinstance(found[-1], ast.Constant) else ...


def _norm(text: str, env: Environment, rng: np.random.Generator) -> tuple[str | None, str]:
    names = {"rms_norm", "rms_norm_init", "layer_norm", "layer_norm_init"}
    attrs = [
        n
        for n in ast.walk(pyast.parse(text))
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == env.alias and n.attr in names
    ]
    kinds = sorted({a.attr.split("_")[0] for a in attrs})
    if not attrs:
        return _NONE
    target = {"rms": "layer", "layer": "rms"}[kinds[0]] if len(kinds) == 1 else kinds[int(rng.integers(2))]
    edits = [(programs.span(text, a), f"{env.alias}.{target}_norm{'_init' if a.attr.endswith('_init') else ''}") for a in attrs]
    return programs.splice(text, edits), f"every norm -> {target}"


def _activation(force: str | None = None) -> Fallback:
    def fn(text: str, env: Environment, rng: np.random.Generator) -> tuple[str | None, str]:
        calls = _calls(pyast.parse(text), env, {"mlp", "moe"})
        if not calls or any(len(c.args) > 3 or c.keywords for c in calls):
            return _NONE
        current = [c.args[2].value if len(c.args) == 3 and isinstance(c.args[2], ast.Constant) else "gelu" for c in calls]
        new = force if force is not None else _pick(rng, CHOICES["activation"], current[0])
        if new is None or all(c == new for c in current):
            return _NONE
        edits = []
        for c in calls:
            args = [ast.unparse(a) for a in c.args[:2]] + [json.dumps(new)]
            edits.append((programs.span(text, c), f"{ast.unparse(c.func)}({', '.join(args)})"))
        return programs.splice(text, edits), f"activation {current[0]} -> {new}"

    return fn


def _keyword_toggle(max_args: dict[str, int], keyword: str, default: bool, force: bool | None = None) -> Fallback:
    """Flip (or force) ``keyword`` in calls of the named helpers that do not pass it by position."""

    def fn(text: str, env: Environment, rng: np.random.Generator) -> tuple[str | None, str]:
        calls = [c for c in _calls(pyast.parse(text), env, set(max_args)) if len(c.args) <= max_args[c.func.attr]]
        values = [_keyword(c, keyword, default) for c in calls]
        if not calls or any(not isinstance(v, bool) for v in values):
            return _NONE
        new = (not values[0]) if force is None else force
        if all(v == new for v in values):
            return _NONE
        edits = [(programs.span(text, c), _set_keyword(c, keyword, new)) for c in calls]
        return programs.splice(text, edits), f"{keyword} -> {new}"

    return fn


def _mlp_ratio(text: str, env: Environment, rng: np.random.Generator) -> tuple[str | None, str]:
    calls = [c for c in _calls(pyast.parse(text), env, {"mlp_init", "moe_init"}) if len(c.args) >= 3]
    if not calls:
        return _NONE
    def d_ff(ratio: str, call: ast.Call) -> str:
        num, _, den = ratio.partition("/")
        return f"{num} * {ast.unparse(call.args[1])}" + (f" // {den}" if den else "")

    first = ast.unparse(calls[0].args[2])
    current = next((r for r in CHOICES["mlp_ratio"] if programs.normalise(d_ff(r, calls[0])) == first), None)
    ratio = _pick(rng, CHOICES["mlp_ratio"], current)
    new = programs.splice(text, [(programs.span(text, c.args[2]), d_ff(ratio, c)) for c in calls])
    return (new, f"MLP width {ratio} D") if programs.normalise(new) != programs.normalise(text) else _NONE


def _positions(text: str, env: Environment, rng: np.random.Generator) -> tuple[str | None, str]:
    calls = [c for c in _calls(pyast.parse(text), env, {"attention"}) if len(c.args) <= 2]
    ropes = [_keyword(c, "rope", True) for c in calls]
    options = programs.returned_dict(text, "model_options", "cfg")
    if not calls or options is None or any(not isinstance(r, bool) for r in ropes):
        return _NONE
    try:
        learned = ast.literal_eval(options.get("positions") or "None") == "learned"
    except ValueError:
        return _NONE
    current = "learned" if learned else "rope" if ropes[0] else "none"
    new = _pick(rng, CHOICES["positions"], current)
    text = programs.splice(text, [(programs.span(text, c), _set_keyword(c, "rope", new == "rope")) for c in calls])
    options = programs.returned_dict(text, "model_options", "cfg")
    options.set("positions", '"learned"' if new == "learned" else '"none"')
    return options.render(), f"positions {current} -> {new}"


FALLBACKS: dict[str, Fallback] = {
    "norm": _norm,
    "activation": _activation(),
    "silu": _activation("silu"),
    "qk_norm": _keyword_toggle({"attention_init": 4}, "qk_norm", True),
    "glu": _keyword_toggle({"mlp_init": 3, "moe_init": 5}, "glu", False),
    "glu_on": _keyword_toggle({"mlp_init": 3, "moe_init": 5}, "glu", False, force=True),
    "mlp_ratio": _mlp_ratio,
    "positions": _positions,
}
