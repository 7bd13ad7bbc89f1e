"""Program source as the search sees it: evolve blocks, normal forms, editable dicts.

A candidate's evolved parts sit between ``# EVOLVE-BLOCK-START <name>`` and
``# EVOLVE-BLOCK-END``; the rest is fixed scaffolding. Everything here works on
source text and ``ast``, never executes a program, and imports nothing heavy.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re

from evaluator import pyast

BLOCK_START = "# EVOLVE-BLOCK-START"
BLOCK_END = "# EVOLVE-BLOCK-END"
_START = re.compile(r"^\s*# EVOLVE-BLOCK-START[ \t]+(\w+)\s*$")
_END = re.compile(r"^\s*# EVOLVE-BLOCK-END\s*$")


class BlockError(ValueError):
    """The evolve-block markers are missing, unbalanced or repeated."""


def _spans(source: str) -> dict[str, tuple[int, int]]:
    """Block name -> (index of its first line, index of its end marker) in ``source.splitlines()``."""
    spans, open_name, open_at = {}, None, 0
    for i, line in enumerate(source.splitlines()):
        if m := _START.match(line):
            if open_name is not None:
                raise BlockError(f"line {i + 1}: block {m[1]!r} starts inside block {open_name!r}")
            if m[1] in spans:
                raise BlockError(f"line {i + 1}: a second block named {m[1]!r}")
            open_name, open_at = m[1], i + 1
        elif _END.match(line):
            if open_name is None:
                raise BlockError(f"line {i + 1}: {BLOCK_END} without a block start")
            spans[open_name], open_name = (open_at, i), None
    if open_name is not None:
        raise BlockError(f"block {open_name!r} is never closed with {BLOCK_END}")
    return spans


def blocks(source: str) -> dict[str, str]:
    """The evolved blocks, name -> the text between the markers (each line ending in a newline)."""
    lines = source.splitlines()
    return {name: "".join(f"{line}\n" for line in lines[a:b]) for name, (a, b) in _spans(source).items()}


def replace_block(source: str, name: str, text: str) -> str:
    """``source`` with block ``name`` replaced by ``text`` (markers kept).

    Raises:
      BlockError: there is no block ``name``.
    """
    spans = _spans(source)
    if name not in spans:
        raise BlockError(f"no evolve block named {name!r}; the program has {sorted(spans)}")
    a, b = spans[name]
    lines = source.splitlines()
    body = text.rstrip("\n").splitlines() if text.strip() else []
    out = "\n".join(lines[:a] + body + lines[b:])
    return out + "\n" if source.endswith("\n") else out


def scaffold(source: str) -> str:
    """The fixed part: ``source`` with every block's contents removed."""
    for name in blocks(source):
        source = replace_block(source, name, "")
    return source


def normalise(source: str) -> str:
    """A normal form that ignores comments and layout (``ast.unparse``); the text itself if it does not parse."""
    try:
        return ast.unparse(pyast.parse(source))
    except SyntaxError:
        return source


def source_hash(source: str) -> str:
    """Hash of the normal form: equal for programs that differ only in comments and layout."""
    return hashlib.sha256(normalise(source).encode()).hexdigest()[:32]


def evolved_length(source: str) -> int:
    """Size of the evolved code in characters of normal form (the scaffolding is the same for all)."""
    parts = blocks(source)
    return sum(len(normalise(text)) for text in parts.values()) if parts else len(normalise(source))


# ----------------------------------------------------------------------------- editing source by ast positions


def offset(text: str, lineno: int, col: int) -> int:
    """Character index of ``ast``'s (1-based line, UTF-8 byte column) position in ``text``."""
    lines = text.splitlines(keepends=True)
    start = sum(len(line) for line in lines[: lineno - 1])
    return start + len(lines[lineno - 1].encode()[:col].decode(errors="ignore")) if lineno <= len(lines) else start


def span(text: str, node: ast.AST) -> tuple[int, int]:
    """Character span of ``node`` in ``text``."""
    return offset(text, node.lineno, node.col_offset), offset(text, node.end_lineno, node.end_col_offset)


def splice(text: str, edits: list[tuple[tuple[int, int], str]]) -> str:
    """Replace each character span with its new text (spans must not overlap)."""
    for (a, b), new in sorted(edits, key=lambda e: e[0][0], reverse=True):
        text = text[:a] + new + text[b:]
    return text


def function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    """The top-level function ``name`` in ``tree``."""
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    return found[-1] if found else None


@dataclasses.dataclass
class Entry:
    """One item of a dict display: ``key: expr`` (key None for ``**expr``), with its trailing comment."""

    key: str | None
    expr: str
    comment: str = ""


class ReturnedDict:
    """The dict literal that a function returns, as entries that can be read and edited.

    ``find`` succeeds when the function has exactly one ``return`` and it returns
    a dict display with string keys; ``render`` puts the edited dict back in
    place of the old one, one entry per line, keeping each entry's expression
    text and trailing comment, and the rest of the source untouched.
    """

    def __init__(self, text: str, node: ast.Dict, args: list[str], entries: list[Entry]):
        self.text, self.node, self.args, self.entries = text, node, args, entries

    @classmethod
    def find(cls, text: str, name: str) -> ReturnedDict | None:
        try:
            tree = pyast.parse(text)
        except SyntaxError:
            return None
        fn = function(tree, name)
        if fn is None:
            return None
        returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
        if len(returns) != 1 or not isinstance(returns[0].value, ast.Dict):
            return None
        node = returns[0].value
        if any(k is not None and not (isinstance(k, ast.Constant) and isinstance(k.value, str)) for k in node.keys):
            return None
        lines = text.splitlines()
        entries = []
        for k, v in zip(node.keys, node.values, strict=True):
            a, b = span(text, v)
            line = lines[v.end_lineno - 1]
            after = line[len(line.encode()[: v.end_col_offset].decode(errors="ignore")) :]
            comment = after[after.index("#") :].strip() if "#" in after and after.lstrip(", ").startswith("#") else ""
            entries.append(Entry(None if k is None else k.value, text[a:b], comment))
        return cls(text, node, [a.arg for a in fn.args.args], entries)

    def keys(self) -> list[str]:
        return [e.key for e in self.entries if e.key is not None]

    def get(self, key: str) -> str | None:
        """The expression text of ``key`` (the last, if repeated), or None."""
        found = [e.expr for e in self.entries if e.key == key]
        return found[-1] if found else None

    @property
    def spreads(self) -> list[str]:
        """Expressions unpacked with ``**``: they may hold any key."""
        return [e.expr for e in self.entries if e.key is None]

    def set(self, key: str, expr: str) -> None:
        """Give ``key`` the value ``expr``: in place, or at the end if a spread could override it."""
        at = [i for i, e in enumerate(self.entries) if e.key == key]
        if at and not any(e.key is None for e in self.entries[at[-1] :]):
            self.entries[at[-1]] = Entry(key, expr, self.entries[at[-1]].comment if self.entries[at[-1]].expr == expr else "")
            return
        self.delete(key)
        self.entries.append(Entry(key, expr))

    def delete(self, key: str) -> None:
        self.entries = [e for e in self.entries if e.key != key]

    def render(self) -> str:
        """The source with the edited dict in place of the old one."""
        line = self.text.splitlines()[self.node.lineno - 1]
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        items = []
        for e in self.entries:
            item = f"**{e.expr}" if e.key is None else f"{json.dumps(e.key)}: {e.expr}"
            items.append(f"{indent}{item},{'  ' + e.comment if e.comment else ''}")
        body = "{\n" + "\n".join(items) + "\n" + indent[:-4] + "}" if items else "{}"
        return splice(self.text, [(span(self.text, self.node), body)])


def returned_dict(text: str, name: str, args: str) -> ReturnedDict | None:
    """The dict that function ``name`` returns in ``text``, making one where there is none.

    A function that returns something other than one dict display is renamed
    ``_<name>_base`` and a new ``name`` returns ``{**_<name>_base(...)}``; a
    missing function (only ``model_options`` is optional) is added returning
    ``{}``. Both leave the program's behaviour unchanged until an entry is set.
    None if ``text`` does not parse or ``name`` takes unusual arguments.
    """
    found = ReturnedDict.find(text, name)
    if found is not None:
        return found
    try:
        fn = function(pyast.parse(text), name)
    except SyntaxError:
        return None
    if fn is None:
        wrapped = text.rstrip("\n") + f"\n\n\ndef {name}({args}):\n    return {{}}\n"
    elif fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.args.posonlyargs or fn.decorator_list:
        return None
    else:
        names = ", ".join(a.arg for a in fn.args.args)
        base = f"_{name}_base"
        lines = text.splitlines(keepends=True)
        lines[fn.lineno - 1] = lines[fn.lineno - 1].replace(f"def {name}(", f"def {base}(", 1)
        wrapped = "".join(lines).rstrip("\n") + f"\n\n\ndef {name}({names}):\n    return {{**{base}({names})}}\n"
    return ReturnedDict.find(wrapped, name)
