"""A standalone ``model.py``: the proxy's own source plus a candidate program, in one file.

The exported model must train exactly as the proxy did, today and after
``proxy_models`` changes. So nothing is rewritten by hand: the file is
assembled from the *current* source of the proxy modules (``SECTIONS``), with
their imports hoisted and their cross-module references (``layers.norm``)
turned into plain names, followed by the candidate's source with its
``from proxy_models import layers as L`` pointed at a namespace of the same
helpers. ``tests/search/test_export.py`` trains the result in a process that
cannot import this project and checks that the losses agree with
``proxy_models.train.train``.

A candidate is free to name a top-level helper ``attention`` or ``schedule``.
The candidate's code is kept as written; the proxy's colliding definitions are
renamed instead (``attention_``), with Python's scoping rules (``search.scopes``),
so that locals and keyword arguments of the same name are left alone.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from collections.abc import Iterable, Mapping

from evaluator import pyast
from search.programs import offset, splice
from search.scopes import Binding, import_bindings, rename_globals

PROXY_PACKAGE = "proxy_models"
LAYERS_MODULE = "proxy_models.layers"
# (module, top-level names to take; None takes the whole module), in dependency order.
SECTIONS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("proxy_models.config", None),
    ("proxy_models.layers", None),
    ("proxy_models.program", ("DEFAULT_HYPERPARAMETERS", "DEFAULT_MODEL_OPTIONS", "ProgramError", "Program",
                              "resolve_hyperparameters", "_check_hyperparameters", "resolve_model_options")),
    ("proxy_models.optim", None),
    ("proxy_models.transformer", None),
    ("proxy_models.counting", None),
    ("proxy_models.shape", None),
    ("proxy_models.data", None),
    ("proxy_models.train", None),
)
FORBIDDEN_IMPORTS = ("proxy_models", "search", "evaluator", "active_learning", "db")


class AssemblyError(ValueError):
    """The proxy's source or the program cannot be assembled into one file; the message says where."""


@dataclasses.dataclass(frozen=True)
class Section:
    """One proxy module, reduced to the statements the standalone file needs.

    Attributes:
      module: its dotted name.
      text: the statements, imports removed and ``module.attr`` references made plain.
      imports: name -> what it is imported as, for the imports hoisted to the top.
      defined: top-level name -> the defining statement (as ``ast.dump``).
    """

    module: str
    text: str
    imports: dict[str, Binding]
    defined: dict[str, str]


# ----------------------------------------------------------------------------- reading modules


def module_source(module: str) -> str:
    """The source file of ``module``, read without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise AssemblyError(f"cannot find the source of {module}")
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


def _is_proxy(module: str) -> bool:
    return module == PROXY_PACKAGE or module.startswith(PROXY_PACKAGE + ".")


def _module_refs(bindings: Mapping[str, Binding]) -> set[str]:
    """Names that refer to a proxy *module* (``from proxy_models import layers``)."""
    return {name for name, (mod, attr) in bindings.items() if _is_proxy(mod) and (attr is None or mod == PROXY_PACKAGE)}


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return list(import_bindings(node))
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return [n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)]


def _statement_text(source: str, node: ast.stmt) -> str:
    """The statement's lines, with its decorators and the comment lines right above it."""
    lines = source.splitlines()
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    return "\n".join(lines[first: node.end_lineno])


def _plain_references(text: str, refs: set[str], where: str) -> str:
    """``layers.norm`` -> ``norm`` for each module alias in ``refs``."""
    tree = pyast.parse(text)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in refs:
            start = offset(text, node.lineno, node.col_offset)
            edits.append(((start, offset(text, node.end_lineno, node.end_col_offset)), node.attr))
    out = splice(text, edits)
    leftover = [n.id for n in ast.walk(pyast.parse(out)) if isinstance(n, ast.Name) and n.id in refs]
    if leftover:
        raise AssemblyError(f"{where} uses module {leftover[0]!r} other than as module.attribute")
    return out


def read_section(module: str, names: Iterable[str] | None = None) -> Section:
    """The statements of ``module`` (all, or those defining ``names``), made standalone."""
    source = module_source(module)
    tree = pyast.parse(source)
    imports: dict[str, Binding] = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (
                isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            imports.update(import_bindings(node))
    wanted = None if names is None else set(names)
    parts, defined = [], {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
            continue  # the module docstring
        names_here = _defined_names(node)
        if wanted is not None and not wanted & set(names_here):
            continue
        parts.append(_statement_text(source, node))
        defined.update(dict.fromkeys(names_here, ast.dump(node)))
    missing = (wanted or set()) - set(defined)
    if missing:
        raise AssemblyError(f"{module} no longer defines {sorted(missing)}")
    text = _plain_references("\n\n\n".join(parts), _module_refs(imports), module)
    hoisted = {k: v for k, v in imports.items() if not _is_proxy(v[0])}
    return Section(module, text, hoisted, defined)


# ----------------------------------------------------------------------------- the candidate program


def _layers_replacement(node: ast.Import | ast.ImportFrom) -> str | None:
    """What replaces an import of the project's helpers in the program (None: not such an import)."""
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_proxy(node.module):
        if node.module == PROXY_PACKAGE and all(a.name == "layers" for a in node.names):
            return "; ".join(f"{a.asname or 'layers'} = layers" for a in node.names)
        if node.module == LAYERS_MODULE:
            return "; ".join(f"{a.asname or a.name} = layers.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import) and any(_is_proxy(a.name) for a in node.names):
        if len(node.names) == 1 and node.names[0].name == LAYERS_MODULE:
            name = node.names[0].asname
            return f"{name} = layers" if name else "proxy_models = types.SimpleNamespace(layers=layers)"
    else:
        return None
    raise AssemblyError(f"line {node.lineno}: the program imports {ast.unparse(node)!r}; "
                        f"only {LAYERS_MODULE} can be inlined")


def program_text(source: str) -> str:
    """The program with its imports of the project's helpers pointed at the ``layers`` namespace."""
    tree = pyast.parse(source)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            if node not in tree.body:
                raise AssemblyError(f"line {node.lineno}: a __future__ import must be at the top")
            new = ""
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            new = _layers_replacement(node)
            if new is None:
                continue
            new += f"  # was: {ast.unparse(node)}"
        else:
            continue
        start = offset(source, node.lineno, node.col_offset)
        edits.append(((start, offset(source, node.end_lineno, node.end_col_offset)), new))
    return splice(source, edits)


def _bindings(text: str, layer_names: set[str]) -> dict[str, Binding | None]:
    """Top-level names of ``text``: imports as what they import, helpers taken from ``layers`` as such, else None."""
    out: dict[str, Binding | None] = {}
    for node in pyast.parse(text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(import_bindings(node))
            continue
        for name in _defined_names(node):
            out[name] = None
        value = getattr(node, "value", None)
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
                and value.value.id == "layers" and value.attr == node.targets[0].id in layer_names):
            out[node.targets[0].id] = (LAYERS_MODULE, value.attr)
    return out


# ----------------------------------------------------------------------------- the whole file


def _import_lines(bindings: Mapping[str, Binding], mapping: Mapping[str, str]) -> str:
    plain, froms = [], {}
    for name, (module, attr) in sorted(bindings.items(), key=lambda kv: (kv[1][0], kv[0])):
        new = mapping.get(name, name)
        if attr is None:
            if new == module:
                plain.append(f"import {module}")
            elif "." in module and module.split(".")[0] == name:
                raise AssemblyError(f"cannot rename {name!r} bound by 'import {module}'")
            else:
                plain.append(f"import {module} as {new}" if new != module else f"import {module}")
        else:
            froms.setdefault(module, []).append(attr if new == attr else f"{attr} as {new}")
    lines = sorted(set(plain)) + [f"from {m} import {', '.join(sorted(set(ns)))}" for m, ns in sorted(froms.items())]
    return "\n".join(lines)


def _merge_imports(sections: Iterable[Section], extra: Mapping[str, Binding]) -> dict[str, Binding]:
    out: dict[str, Binding] = dict(extra)
    for section in sections:
        for name, binding in section.imports.items():
            if out.setdefault(name, binding) != binding:
                raise AssemblyError(f"{section.module} imports {name!r} as {binding}, another module as {out[name]}")
    return out


def _check_unique(sections: Iterable[Section]) -> None:
    """Two modules may define the same name only the same way (``Params = dict``): the file has one namespace."""
    seen: dict[str, tuple[str, str]] = {}
    for section in sections:
        for name, statement in section.defined.items():
            module, first = seen.setdefault(name, (section.module, statement))
            if first != statement:
                raise AssemblyError(f"{module} and {section.module} both define {name!r}, differently")


def _check_standalone(text: str) -> None:
    for node in ast.walk(pyast.parse(text)):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        bad = [m for m in modules if m.split(".")[0] in FORBIDDEN_IMPORTS]
        if bad:
            raise AssemblyError(f"line {node.lineno}: the assembled file still imports {bad[0]}")


def _header(title: str) -> str:
    return f"# {'-' * 77} {title}"


def assemble(program_source: str, tail: str, *, docstring: str, extra_imports: Mapping[str, Binding] = ()) -> str:
    """The standalone file: hoisted imports, the proxy's sections, the program, then ``tail``.

    Args:
      program_source: the candidate program, as stored.
      tail: code run after the program (it may use any proxy name and the program's functions).
      docstring: the file's docstring.
      extra_imports: imports ``tail`` needs (name -> (module, attribute or None)).

    Raises:
      AssemblyError: a proxy module changed in a way this cannot follow, or the program imports
        something other than the helpers.
    """
    sections = [read_section(module, names) for module, names in SECTIONS]
    layer_names = {n for s in sections if s.module == LAYERS_MODULE for n in s.defined if not n.startswith("_")}
    namespace = ("# The helpers candidates call as ``L.<name>`` (proxy_models/layers.py).\nlayers = types.SimpleNamespace(\n"
                 + "".join(f"    {n}={n},\n" for n in sorted(layer_names)) + ")")
    imports = _merge_imports(sections, {"types": ("types", None), **dict(extra_imports)})
    program = program_text(program_source)
    scaffold_names = set(imports) | {"layers"} | {n for s in sections for n in s.defined} | set(_bindings(tail, set()))
    collisions = {}
    for name, binding in _bindings(program, layer_names).items():
        identical = binding is not None and (imports.get(name) == binding or binding == (LAYERS_MODULE, name))
        if name in scaffold_names and not identical:
            new = name + "_"
            while new in scaffold_names or new in _bindings(program, layer_names):
                new += "_"
            collisions[name] = new
    _check_unique(sections)
    body = [part for s in sections for part in (_header(s.module.replace(".", "/") + ".py"), s.text)]
    scaffold = rename_globals("\n\n\n".join(body + [namespace]), collisions)
    head = f'"""{docstring}"""\n\nfrom __future__ import annotations\n\n' + _import_lines(imports, collisions)
    parts = [head, scaffold, _header("the candidate program"), program, _header("building and training it"),
             rename_globals(tail, collisions)]
    text = "\n\n\n".join(p.strip("\n") for p in parts) + "\n"
    compile(text, "model.py", "exec")
    _check_standalone(text)
    return text


# ----------------------------------------------------------------------------- model.py

MODEL_IMPORTS: dict[str, Binding] = {"argparse": ("argparse", None), "json": ("json", None),
                                     "pathlib": ("pathlib", None), "sys": ("sys", None), "jax": ("jax", None)}
MODEL_TAIL = '''
CONFIG_PATH = pathlib.Path(__file__).with_name("config.json")

PROGRAM = Program(
    source="(inlined above)",
    name=__PROGRAM_NAME__,
    __PROGRAM_FIELDS__
)


def load_config(path=CONFIG_PATH) -> dict:
    """The exported ``config.json``: the recommended architecture, training run and fitted law."""
    with open(path) as f:
        return json.load(f)


def recommended(config: dict) -> tuple[ModelConfig, int]:
    """The recommended architecture and number of training tokens in ``config``."""
    allocation = config["allocations"][config["recommended"]]
    return ModelConfig(**allocation["architecture"]["model_config"]), int(allocation["training"]["n_tokens"])


def build(cfg: ModelConfig, n_tokens: int, seed: int = 0, tcfg: TrainConfig | None = None):
    """``(params, optimizer, hyperparameters)`` for a run of ``n_tokens`` at shape ``cfg``, as the proxy builds them."""
    tcfg = tcfg or TrainConfig(n_tokens=int(n_tokens), seed=seed)
    counts = count_params(PROGRAM, cfg)
    hp = resolve_hyperparameters(PROGRAM, counts.n_params, int(n_tokens))
    total_steps, _ = plan_steps(int(n_tokens), int(hp["batch_size"]) * cfg.seq_len, tcfg.steps_per_call,
                                tcfg.curve_points)
    key_model, _ = jax.random.split(jax.random.key(tcfg.seed))
    return init_params(PROGRAM, cfg, key_model), build_optimizer(PROGRAM, hp, total_steps), hp


def main(argv: list[str] | None = None) -> int:
    """Train the model: at the recommended scale in config.json, or at a proxy scale to check a campaign's loss."""
    parser = argparse.ArgumentParser(description=__doc__.split("\\n\\n")[0])
    parser.add_argument("--config", default=str(CONFIG_PATH), help="exported config.json (default: beside this file)")
    parser.add_argument("--corpus", help="folder of text files (default: the Python standard library, as the proxy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-params", type=float, help="choose a shape for this N as the proxy does (instead of config.json)")
    parser.add_argument("--d-model", type=int, help="explicit width (with --n-layers)")
    parser.add_argument("--n-layers", type=int, help="explicit depth (with --d-model)")
    parser.add_argument("--n-tokens", type=float, help="training tokens D (default: config.json's)")
    parser.add_argument("--seq-len", type=int, default=128, help="context length with --n-params/--d-model (default 128)")
    parser.add_argument("--eval-tokens", type=int, default=TrainConfig(1).eval_tokens)
    parser.add_argument("--steps-per-call", type=int, default=TrainConfig(1).steps_per_call)
    parser.add_argument("--curve-points", type=int, default=TrainConfig(1).curve_points)
    parser.add_argument("--out", help="write the full result as JSON here")
    args = parser.parse_args(argv)
    if args.n_params:
        cfg, n_tokens = choose_shape(PROGRAM, args.n_params, seq_len=args.seq_len), args.n_tokens
    elif args.d_model:
        cfg, n_tokens = model_config(PROGRAM, args.d_model, args.n_layers or 1, args.seq_len), args.n_tokens
    else:
        cfg, n_tokens = recommended(load_config(args.config))
        n_tokens = args.n_tokens or n_tokens
    if not n_tokens:
        parser.error("--n-tokens is needed with --n-params or --d-model")
    tcfg = TrainConfig(n_tokens=int(n_tokens), seed=args.seed, eval_tokens=args.eval_tokens,
                       curve_points=args.curve_points, steps_per_call=args.steps_per_call)
    progress = lambda step, total, loss: print(f"step {step}/{total}  train loss {loss:.4f}", file=sys.stderr)
    result = train(PROGRAM, cfg, tcfg, load_corpus(args.corpus), on_progress=progress)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result.to_dict(), f)
    print(f"{result.status}: val loss {result.val_loss:.6f} nats/byte | N={result.n_params} "
          f"(d_model {result.d_model}, {result.n_layers} layers) D={result.n_tokens} {result.message}")
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
'''


def _program_fields(program_source: str) -> str:
    defined = {n.name for n in pyast.parse(program_source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    fields = ["init_block", "apply_block", "hyperparameters"] + [f for f in ("make_optimizer", "model_options") if f in defined]
    return "\n    ".join(f"{f}={f}," for f in fields)


def model_py(program_source: str, name: str, docstring: str) -> str:
    """The standalone ``model.py`` for ``program_source``: model, optimizer and training, as the proxy does them."""
    tail = MODEL_TAIL.replace("__PROGRAM_NAME__", repr(name)).replace("__PROGRAM_FIELDS__", _program_fields(program_source))
    return assemble(program_source, tail, docstring=docstring, extra_imports=MODEL_IMPORTS)
