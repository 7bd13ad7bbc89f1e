"""Python's scoping rules on the ast: the names a scope binds, and renaming module-level names.

``rename_globals`` renames every use of a module-level name, but not a local,
an argument or a comprehension variable of the same name, nor a use inside a
scope that shadows it (Python Language Reference, sec. 4.2, "Naming and
binding": class bodies do not enclose their methods' scopes; a comprehension
has its own scope, except for its first iterable). ``search.standalone``
uses it when a candidate's top-level helper collides with a proxy definition.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping

from evaluator import pyast
from search.programs import offset, splice

Binding = tuple[str, str | None]  # (module, attribute) an import binds a name to; attribute None for ``import m``


def import_bindings(node: ast.Import | ast.ImportFrom) -> dict[str, Binding]:
    """What each name bound by an import statement refers to."""
    out = {}
    for alias in node.names:
        if isinstance(node, ast.Import):
            if alias.asname:
                out[alias.asname] = (alias.name, None)
            else:
                out[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
        else:
            out[alias.asname or alias.name] = (node.module or "", alias.name)
    return out


def _arg_names(args: ast.arguments) -> set[str]:
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    return {a.arg for a in every}


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp,
           ast.DictComp, ast.GeneratorExp)


def _local_names(body: Iterable[ast.AST]) -> set[str]:
    """Names bound directly in a scope's body (not in nested scopes), less those declared global."""
    bound, declared, stack = set(), set(), list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            stack += node.decorator_list
            continue
        if isinstance(node, _SCOPES):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= set(import_bindings(node))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            declared |= set(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        stack += list(ast.iter_child_nodes(node))
    return bound - declared


class _Renamer:
    """Finds every reference to a module-level name in ``mapping``, skipping scopes that shadow it."""

    def __init__(self, text: str, mapping: Mapping[str, str]):
        self.text, self.mapping, self.edits = text, mapping, []

    def edit(self, lineno: int, col: int, old: str) -> None:
        start = offset(self.text, lineno, col)
        self.edits.append(((start, start + len(old)), self.mapping[old]))

    def definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        line = self.text.splitlines()[node.lineno - 1]
        keyword = "class" if isinstance(node, ast.ClassDef) else "def"
        m = re.compile(rf"\b{keyword}\s+({re.escape(node.name)})\b").search(line.encode()[node.col_offset:].decode())
        col = node.col_offset + len(line.encode()[node.col_offset:].decode()[: m.start(1)].encode())
        self.edit(node.lineno, col, node.name)

    def function(self, node, outer: set[str], top: bool, header: set[str] | None = None) -> None:
        """A function or lambda: decorators, defaults and annotations are evaluated in ``header``'s scope."""
        header = outer if header is None else header
        if top and not isinstance(node, ast.Lambda) and node.name in self.mapping:
            self.definition(node)
        args = node.args
        for n in [*getattr(node, "decorator_list", []), *args.defaults, *[d for d in args.kw_defaults if d]]:
            self.visit(n, header)
        if not isinstance(node, ast.Lambda):
            for a in args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]:
                if a.annotation:
                    self.visit(a.annotation, header)
            if node.returns:
                self.visit(node.returns, header)
        body = [node.body] if isinstance(node, ast.Lambda) else node.body
        inner = outer | _arg_names(args) | _local_names(body)
        for stmt in body:
            self.visit(stmt, inner)

    def visit(self, node: ast.AST, shadowed: set[str], top: bool = False) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            self.function(node, shadowed, top)
        elif isinstance(node, ast.ClassDef):
            if top and node.name in self.mapping:
                self.definition(node)
            for n in [*node.decorator_list, *node.bases, *node.keywords]:
                self.visit(n, shadowed)
            own = _local_names(node.body)
            for stmt in node.body:  # class names are visible in the class body, not in its methods
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.function(stmt, shadowed, False, header=shadowed | own)
                else:
                    self.visit(stmt, shadowed | own)
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            targets = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
            self.visit(node.generators[0].iter, shadowed)
            for child in ast.iter_child_nodes(node):
                if child is not node.generators[0]:
                    self.visit(child, shadowed | targets)
            self.visit(node.generators[0].target, shadowed | targets)
            for cond in node.generators[0].ifs:
                self.visit(cond, shadowed | targets)
        elif isinstance(node, ast.Name):
            if node.id in self.mapping and node.id not in shadowed:
                self.edit(node.lineno, node.col_offset, node.id)
        else:
            for child in ast.iter_child_nodes(node):
                self.visit(child, shadowed)


def rename_globals(text: str, mapping: Mapping[str, str]) -> str:
    """``text`` with every use of the module-level names in ``mapping`` renamed, scopes respected."""
    if not mapping:
        return text
    renamer = _Renamer(text, mapping)
    for node in pyast.parse(text).body:
        renamer.visit(node, set(), top=True)
    return splice(text, sorted(set(renamer.edits)))
