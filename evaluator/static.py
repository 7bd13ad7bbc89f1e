"""Stage 0: read a candidate's source without running it.

``check(source)`` parses the program (after light repair of language-model
output), checks that it defines the contract of DESIGN.md ("Candidate
programs"), and refuses what a model block or a training strategy has no use
for. Every refusal names what was refused and the line, because the message
goes back to the proposer. Pure and fast (no JAX, no imports of the program).

What is refused:

- imports of anything but ``ALLOWED_MODULES`` (``from proxy_models import
  layers`` is how the helpers are imported);
- the builtins in ``DENIED_BUILTINS`` (``open``, ``exec``, ``eval``,
  ``compile``, ``__import__``, ``globals``, ``vars``, ``setattr``, ...) used in
  any way, and ``getattr``/``hasattr`` unless called directly with a constant,
  allowed attribute name;
- any dunder name (``__class__``, ``__subclasses__``, ``__globals__``,
  ``__builtins__`` ...) as an attribute, as a variable (``__name__`` excepted)
  or inside a string constant (the ``getattr(x, "__cl" + "ass__")`` and
  ``typing.get_type_hints`` routes), and private attributes (``jax._src``);
- attributes in ``DENIED_ATTRIBUTES``, whatever object they are taken from:
  modules that reach the operating system (``os``, ``sys``, ``subprocess``,
  ``builtins`` ... as in ``jax.version.subprocess``), frame and code
  introspection (``gi_frame``, ``f_globals``, ``tb_frame``, ``mro``), file I/O
  (``load``, ``save``, ``fromfile``, ``tofile``, ``dump``, ``memmap``, ``ctypes``)
  and JAX's doors to the host (``pure_callback``, ``io_callback``,
  ``debug.callback``, ``debug.breakpoint``, ``experimental``, ``profiler``,
  ``distributed``, ``ffi``, ``dlpack``, ``config``, ``interpreters`` ...);
- the module paths in ``DENIED_PATHS`` (``jax.numpy.load``, ``jax.profiler`` ...),
  resolved through import aliases, and any ``proxy_models.layers`` attribute that
  is not one of the helpers that module defines itself (``L.jax`` is refused).

This is a first line of defence that gives clear messages; it is not what
keeps a hostile program in. The sandbox (``evaluator.sandbox``) is, and the
tests run every attack with this stage bypassed.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re

from evaluator import pyast
from evaluator.result import EvalResult, Status

REQUIRED = {"init_block": 2, "apply_block": 3, "hyperparameters": 2}
OPTIONAL = {"make_optimizer": 2, "model_options": 1}
MAX_SOURCE_BYTES = 200_000

ALLOWED_MODULES = frozenset(
    {"jax", "jax.numpy", "jax.nn", "jax.lax", "jax.random", "optax", "math", "functools", "proxy_models.layers"}
)
DENIED_BUILTINS = frozenset(
    {
        "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "setattr", "delattr",
        "breakpoint", "input", "memoryview", "help", "exit", "quit", "license", "credits", "copyright",
        "__build_class__", "__loader__", "__spec__", "__builtins__",
    }
)  # fmt: skip
OS_MODULES = frozenset(
    {
        "os", "sys", "posix", "nt", "subprocess", "builtins", "importlib", "imp", "ctypes", "cffi", "socket",
        "shutil", "pathlib", "io", "pickle", "marshal", "shelve", "inspect", "gc", "threading", "_thread",
        "multiprocessing", "concurrent", "signal", "tempfile", "glob", "urllib", "http", "requests", "runpy",
        "code", "codeop", "pdb", "types", "logging", "traceback", "weakref", "atexit", "resource",
        "platform", "sysconfig", "site", "zipimport", "pkgutil", "mmap", "fcntl", "select", "asyncio",
    }
)  # fmt: skip
DENIED_ATTRIBUTES = OS_MODULES | frozenset(
    {
        # frames, code objects, type internals
        "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
        "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "tb_next", "co_code",
        "co_consts", "func_globals", "func_code", "im_func", "im_self", "mro",
        # processes, environment, files
        "system", "popen", "spawn", "spawnl", "spawnv", "fork", "forkpty", "kill", "killpg", "execv",
        "execve", "execl", "environ", "getenv", "putenv", "unsetenv", "load", "loads", "save", "savez",
        "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile", "tofile", "dump", "dumps",
        "memmap", "ctypes", "get_type_hints", "singledispatch", "singledispatchmethod",
        # JAX and optax doors to the host
        "experimental", "interpreters", "version", "profiler", "distributed", "dlpack", "ffi", "extend",
        "monitoring", "export", "config", "lib", "tools", "callback", "pure_callback", "io_callback",
        "debug_callback", "host_callback", "breakpoint", "infeed", "outfeed", "compiler_ir",
        "runtime_executable", "write_bytecode", "client", "unsafe_buffer_pointer",
    }
)  # fmt: skip
DENIED_PATHS = (
    "jax.experimental", "jax.interpreters", "jax.version", "jax.profiler", "jax.distributed", "jax.dlpack",
    "jax.ffi", "jax.extend", "jax.monitoring", "jax.export", "jax.config", "jax.lib", "jax.tools",
    "jax.pure_callback", "jax.debug.callback", "jax.debug.breakpoint", "jax.numpy.load", "jax.numpy.save",
    "jax.numpy.savez", "jax.numpy.fromfile", "jax.numpy.memmap", "optax.experimental",
)  # fmt: skip
_DUNDER = re.compile(r"__\w+__")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _layers_names() -> frozenset[str]:
    """Public names that ``proxy_models/layers.py`` defines itself, read without importing it."""
    path = pathlib.Path(__file__).resolve().parent.parent / "proxy_models" / "layers.py"
    if not path.exists():
        return frozenset()
    names = set()
    for node in pyast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(n for n in names if not n.startswith("_"))


LAYERS_NAMES = _layers_names()


@dataclasses.dataclass(frozen=True)
class Problem:
    """One refusal: what, and where (1-based line; 0 for the whole file)."""

    line: int
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}" if self.line else self.what


@dataclasses.dataclass(frozen=True)
class StaticReport:
    """Attributes:
    source: the program after repair (what later stages run).
    problems: every refusal, in source order; empty when the program passes.
    repairs: what ``repair`` changed ("removed Markdown fences", ...).
    """

    source: str
    problems: tuple[Problem, ...]
    repairs: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def message(self) -> str:
        return "; ".join(str(p) for p in self.problems[:10]) + (" ..." if len(self.problems) > 10 else "")


def repair(source: str) -> tuple[str, tuple[str, ...]]:
    """Undo common language-model damage before judging: fences, trailing junk.

    Keeps the fenced block that defines the most of the contract, and trims
    trailing lines that stop the file from parsing (funsearch's
    ``_trim_function_body``), as long as what remains still parses.
    """
    notes = []
    if "```" in source:
        blocks = re.findall(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", source, re.S)
        if blocks:
            source = max(blocks, key=lambda b: (sum(f"def {n}" in b for n in REQUIRED), len(b)))
            notes.append("kept the fenced code block")
    try:
        pyast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        lines = source.rstrip().split("\n")
        for cut in range(1, min(len(lines), 20)):
            candidate = "\n".join(lines[:-cut]) + "\n"
            try:
                pyast.parse(candidate)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                continue
            if all(f"def {n}" in candidate for n in REQUIRED):
                notes.append(f"dropped {cut} trailing line(s) that did not parse")
                source = candidate
            break
    return source, tuple(notes)


def check(source: str) -> StaticReport:
    # One lock across the whole check: see evaluator/pyast.py (gh-106905).
    with pyast.LOCK:
        return _check(source)


def _check(source: str) -> StaticReport:
    """Stage 0 on ``source``: repaired source plus every problem found (none means pass)."""
    if len(source.encode("utf-8", "replace")) > MAX_SOURCE_BYTES:
        return StaticReport(source, (Problem(0, f"the program is larger than {MAX_SOURCE_BYTES} bytes"),))
    source, repairs = repair(source)
    if _BIDI.search(source):
        line = source[: _BIDI.search(source).start()].count("\n") + 1
        return StaticReport(source, (Problem(line, "bidirectional control characters are not allowed"),), repairs)
    try:
        tree = pyast.parse(source)
    except SyntaxError as e:
        return StaticReport(source, (Problem(e.lineno or 0, f"syntax error: {e.msg}"),), repairs)
    except (ValueError, RecursionError, MemoryError) as e:
        return StaticReport(source, (Problem(0, f"the program cannot be parsed: {type(e).__name__}: {e}"),), repairs)
    checker = _Checker(_docstring_nodes(tree))
    checker.visit(tree)
    problems = checker.problems + _contract_problems(tree)
    return StaticReport(source, tuple(sorted(problems, key=lambda p: p.line)), repairs)


def static_stage(source: str) -> tuple[EvalResult, str]:
    """Stage 0 as an ``EvalResult`` (ok or invalid) and the source later stages should run."""
    report = check(source)
    metrics = {"repairs": list(report.repairs), "problems": [str(p) for p in report.problems]}
    if report.ok:
        return EvalResult("static", Status.OK, metrics=metrics), report.source
    return EvalResult("static", Status.INVALID, message=f"refused: {report.message}", metrics=metrics), report.source


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            ids.add(id(body[0].value))
    return ids


def _contract_problems(tree: ast.Module) -> list[Problem]:
    defined: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defined[node.name] = node
        elif isinstance(node, ast.Assign):
            defined.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    problems = []
    for name, arity in {**REQUIRED, **OPTIONAL}.items():
        node = defined.get(name)
        if node is None:
            if name in REQUIRED:
                problems.append(Problem(0, f"the program does not define {name}(); the contract needs {', '.join(REQUIRED)}"))
            continue
        if isinstance(node, ast.AsyncFunctionDef):
            problems.append(Problem(node.lineno, f"{name} must be a plain function, not async"))
        elif isinstance(node, ast.FunctionDef) and not _accepts(node.args, arity):
            problems.append(Problem(node.lineno, f"{name} must accept {arity} positional argument(s)"))
    return problems


def _accepts(args: ast.arguments, n: int) -> bool:
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    return required <= n and (positional >= n or args.vararg is not None)


class _Checker(ast.NodeVisitor):
    """Walks the tree once, tracking import aliases to resolve dotted module paths."""

    def __init__(self, docstrings: set[int]):
        self.problems: list[Problem] = []
        self.aliases: dict[str, str] = {}
        self.docstrings = docstrings
        self.checked_names: set[int] = set()

    def refuse(self, node: ast.AST, what: str) -> None:
        self.problems.append(Problem(getattr(node, "lineno", 0), what))

    # ---------------------------------------------------------------- imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name not in ALLOWED_MODULES:
                self.refuse(node, f"import of {alias.name!r} is not allowed; {_allowed_text()}")
            elif alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or module == "__future__":
            if node.level:
                self.refuse(node, "relative imports are not allowed")
            return
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if alias.name == "*":
                self.refuse(node, f"'from {module} import *' is not allowed; import names explicitly")
            elif full in ALLOWED_MODULES:
                self.aliases[alias.asname or alias.name] = full
            elif module not in ALLOWED_MODULES:
                self.refuse(node, f"import from {module!r} is not allowed; {_allowed_text()}")
            elif problem := _path_problem(full) or _name_problem(alias.name):
                self.refuse(node, f"'from {module} import {alias.name}': {problem}")
            else:
                self.aliases[alias.asname or alias.name] = full

    # ---------------------------------------------------------------- names and attributes
    def visit_Name(self, node: ast.Name) -> None:
        if id(node) in self.checked_names:
            return
        if node.id in DENIED_BUILTINS:
            self.refuse(node, f"use of {node.id!r} is not allowed")
        elif node.id in ("getattr", "hasattr"):
            self.refuse(node, f"{node.id} may only be called directly with a constant attribute name")
        elif _DUNDER.fullmatch(node.id) and not (node.id == "__name__" and isinstance(node.ctx, ast.Load)):
            self.refuse(node, f"the name {node.id!r} is not allowed")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        problem = _name_problem(node.attr)
        path = self._dotted(node)
        if problem is None and path is not None:
            problem = _path_problem(path)
        if problem:
            self.refuse(node, f"attribute '.{node.attr}' ({path or 'expression'}): {problem}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr"):
            self.checked_names.add(id(func))
            name = node.args[1] if len(node.args) >= 2 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                self.refuse(node, f"{func.id} needs a constant attribute name")
            elif problem := _name_problem(name.value):
                self.refuse(node, f"{func.id}(..., {name.value!r}): {problem}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, (str, bytes)) and id(node) not in self.docstrings:
            text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            match = _DUNDER.search(text)
            if match and text != "__main__":  # the main guard is harmless
                self.refuse(node, f"string constants may not contain dunder names ({match.group()!r})")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        # Defining __init__ or __call__ on a helper class is ordinary Python; using dunders is not.
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            if _DUNDER.fullmatch(name):
                self.refuse(node, f"the name {name!r} is not allowed")

    def _dotted(self, node: ast.Attribute) -> str | None:
        """``jnp.linalg.norm`` -> ``jax.numpy.linalg.norm`` when the root is an import alias."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        return ".".join([self.aliases[node.id], *reversed(parts)])


def _name_problem(attr: str) -> str | None:
    if _DUNDER.fullmatch(attr):
        return "dunder attributes are not allowed"
    if attr.startswith("_"):
        return "private attributes are not allowed"
    if attr in DENIED_ATTRIBUTES:
        return "this attribute reaches the host (files, processes, interpreter internals) and is not allowed"
    return None


def _path_problem(path: str) -> str | None:
    for denied in DENIED_PATHS:
        if path == denied or path.startswith(denied + "."):
            return f"{denied} is not allowed"
    if path.startswith("proxy_models.") or path == "proxy_models":
        rest = path.split(".")[1:]
        if not rest or rest[0] != "layers":
            return "only proxy_models.layers may be used"
        if len(rest) > 1 and LAYERS_NAMES and rest[1] not in LAYERS_NAMES:
            return f"proxy_models.layers has no helper {rest[1]!r}"
    return None


def _allowed_text() -> str:
    return "programs may import only " + ", ".join(sorted(ALLOWED_MODULES - {"proxy_models.layers"})) + " and proxy_models.layers"
