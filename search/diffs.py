"""A model's answer -> a new program: strip reasoning, find code, apply SEARCH/REPLACE or whole blocks.

Pure functions over text, so every way a model can answer is a unit test.
``apply_answer(base, answer, evolve)`` is the entry point; it raises
``DiffError`` with a message written for the model (it goes back in the
repair round) when the answer cannot be turned into a program. Three forms
are accepted, tried in this order:

1. SEARCH/REPLACE blocks (the markers of ``search.prompt``, 5 to 9 marker
   characters tolerated), applied in order to the base program. A SEARCH part
   is matched exactly, then ignoring trailing whitespace, then ignoring
   indentation (the REPLACE part is re-indented by the same offset), then
   ignoring blank lines; it must match exactly one place.
2. Whole blocks: ``# EVOLVE-BLOCK-START <name>`` ... ``# EVOLVE-BLOCK-END``,
   inside a fence or not, each replacing the block of that name.
3. A fence with top-level functions and no markers: each function replaces
   the function of the same name in the evolve block that defines it.

The scaffolding outside the evolve blocks must come out unchanged (compared
in normal form), and only the campaign's evolved blocks may change.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Sequence

from evaluator import pyast
from search import programs

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_THINK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)
_THINK_OPEN = re.compile(r"<(think|thinking|reasoning)>", re.I)
_THINK_CLOSE = re.compile(r"</(think|thinking|reasoning)>", re.I)


class DiffError(ValueError):
    """The answer cannot be turned into a program; the message is for the model."""


class NoCode(DiffError):
    """The answer holds no SEARCH/REPLACE block, no evolve block and no code."""


class Unchanged(DiffError):
    """The answer applies but leaves every evolve block as it was (in normal form)."""


@dataclasses.dataclass(frozen=True)
class Edit:
    """One SEARCH/REPLACE block."""

    search: str
    replace: str


@dataclasses.dataclass(frozen=True)
class Applied:
    """A program made from an answer.

    Attributes:
      source: the new program.
      form: ``"diff"``, ``"blocks"`` or ``"functions"``.
      note: the answer's first sentence (what the model says it changed).
      changed: the evolve blocks that differ from the base.
    """

    source: str
    form: str
    note: str
    changed: tuple[str, ...]


# ----------------------------------------------------------------------------- reading an answer


def strip_reasoning(text: str) -> str:
    """``text`` without ``<think>...</think>`` sections.

    A closing tag with no opening one (templates that put ``<think>`` in the
    prompt) drops everything before it; an opening tag that is never closed
    (the answer was cut while thinking) drops everything after it.
    """
    text = _THINK.sub("", text)
    if close := list(_THINK_CLOSE.finditer(text)):
        text = text[close[-1].end() :]
    if opened := _THINK_OPEN.search(text):
        text = text[: opened.start()]
    return text.strip()


def fenced_code(text: str) -> list[str]:
    """The bodies of the fenced code blocks in ``text``, in order (an unclosed last fence runs to the end)."""
    out, body, fence = [], None, None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if body is None:
            if m:
                body, fence = [], m[1]
        elif m and line.strip() == fence:
            out.append("\n".join(body) + "\n")
            body = None
        else:
            body.append(line)
    if body:
        out.append("\n".join(body) + "\n")
    return out


def parse_edits(text: str) -> list[Edit]:
    """The SEARCH/REPLACE blocks in ``text``, in order.

    Raises:
      DiffError: a block is opened but not completed.
    """
    edits, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        j = next((k for k in range(i + 1, len(lines)) if _DIVIDER.match(lines[k])), None)
        k = next((k for k in range(j + 1, len(lines)) if _REPLACE.match(lines[k])), None) if j is not None else None
        if j is None or k is None:
            raise DiffError(f"a SEARCH block (answer line {i + 1}) has no {'=======' if j is None else '>>>>>>> REPLACE'} line")
        edits.append(Edit(_unfence(lines[i + 1 : j]), _unfence(lines[j + 1 : k])))
        i = k + 1
    return edits


def _unfence(lines: list[str]) -> str:
    """A SEARCH or REPLACE part, without fence lines a model put around it."""
    while lines and _FENCE.match(lines[0]):
        lines = lines[1:]
    while lines and _FENCE.match(lines[-1]):
        lines = lines[:-1]
    return "".join(f"{line}\n" for line in lines)


def note_of(text: str, limit: int = 200) -> str:
    """The answer's first sentence of prose (what the model says it changes)."""
    prose = []
    for line in text.splitlines():
        if _FENCE.match(line) or _SEARCH.match(line) or programs.BLOCK_START in line:
            break
        if line.strip() and not line.lstrip().startswith("#"):  # Markdown headings are not the note
            prose.append(line.strip())
    sentence = re.split(r"(?<=[.!?])\s", " ".join(prose), maxsplit=1)[0] if prose else ""
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


# ----------------------------------------------------------------------------- applying SEARCH/REPLACE


def apply_edit(source: str, edit: Edit) -> str:
    """``source`` with ``edit`` applied, matching its SEARCH part tolerantly (see the module docstring).

    Raises:
      DiffError: the SEARCH part is empty, matches nowhere, or matches more than one place.
    """
    if not edit.search.strip():
        raise DiffError("a SEARCH part is empty; copy the lines to replace from the best program")
    starts = _line_starts(source, edit.search)
    if len(starts) == 1:
        return source[: starts[0]] + edit.replace + source[starts[0] + len(edit.search) :]
    if len(starts) > 1:
        raise _ambiguous(len(starts), edit.search)
    lines = source.splitlines(keepends=True)
    for key in (str.rstrip, str.strip):
        result = _apply_lines(lines, edit, key, skip_blank=False)
        if result is not None:
            return result
    result = _apply_lines(lines, edit, str.strip, skip_blank=True)
    if result is not None:
        return result
    raise DiffError(f"this SEARCH part does not match the best program; copy its lines exactly:\n{_quote(edit.search)}")


def _ambiguous(n: int, search: str) -> DiffError:
    return DiffError(f"the SEARCH part matches {n} places; include more lines so it matches one:\n{_quote(search)}")


def _line_starts(source: str, search: str) -> list[int]:
    """Where ``search`` occurs in ``source`` starting at the beginning of a line."""
    out, at = [], source.find(search)
    while at >= 0:
        if at == 0 or source[at - 1] == "\n":
            out.append(at)
        at = source.find(search, at + 1)
    return out


def _apply_lines(lines: list[str], edit: Edit, key, skip_blank: bool) -> str | None:
    wanted = [key(l) for l in edit.search.splitlines() if not (skip_blank and not l.strip())]
    index = [i for i, l in enumerate(lines) if not (skip_blank and not l.strip())]
    keyed = [key(lines[i]) for i in index]
    hits = [s for s in range(len(keyed) - len(wanted) + 1) if keyed[s : s + len(wanted)] == wanted]
    if len(hits) != 1:
        if len(hits) > 1:
            raise _ambiguous(len(hits), edit.search)
        return None
    first, last = index[hits[0]], index[hits[0] + len(wanted) - 1]
    replace = _reindent(edit.search, edit.replace, lines[first : last + 1])
    return "".join(lines[:first]) + replace + "".join(lines[last + 1 :])


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _reindent(search: str, replace: str, matched: list[str]) -> str:
    """``replace`` with its indentation mapped the way the SEARCH lines' indentation maps onto ``matched``.

    Each indentation width of the SEARCH part maps to the width of the source line it matched (so
    a model that wrote 2-space indents for a 4-space file is followed); widths the SEARCH part
    does not have are placed relative to the nearest smaller known width, scaled by the ratio of
    the first two known widths.
    """
    pairs = [(len(_indent(a)), _indent(b)) for a, b in zip(_nonblank(search.splitlines()), _nonblank(matched))]
    mapping: dict[int, str] = {}
    for width, target in pairs:
        mapping.setdefault(width, target)
    if all(len(t) == w for w, t in mapping.items()):
        return replace
    known = sorted(mapping)
    ratio = 1.0
    if len(known) >= 2 and known[1] > known[0]:
        ratio = (len(mapping[known[1]]) - len(mapping[known[0]])) / (known[1] - known[0])
    out = []
    for line in replace.splitlines():
        if not line.strip():
            out.append("")
            continue
        width = len(_indent(line))
        below = [k for k in known if k <= width]
        if below:
            k0 = below[-1]
            pad = mapping[k0] + " " * round((width - k0) * ratio)
        else:
            pad = " " * max(0, len(mapping[known[0]]) - round((known[0] - width) * ratio))
        out.append(pad + line.lstrip())
    return "".join(f"{line}\n" for line in out)


def _nonblank(lines: list[str]) -> list[str]:
    return [line for line in lines if line.strip()]


def _quote(text: str, limit: int = 600) -> str:
    text = text.rstrip("\n")
    return text if len(text) <= limit else text[:limit] + "\n..."


# ----------------------------------------------------------------------------- whole blocks and functions


def block_texts(text: str) -> dict[str, str]:
    """Whole evolve blocks found in ``text`` (fenced or not), name -> body.

    Raises:
      DiffError: the markers are unbalanced or a block appears twice.
    """
    found: dict[str, str] = {}
    fenced = [code for code in fenced_code(text) if programs.BLOCK_START in code]
    for code in fenced or ([text] if programs.BLOCK_START in text else []):
        try:
            parts = programs.blocks(code)
        except programs.BlockError as e:
            raise DiffError(f"the evolve-block markers in your answer are broken: {e}") from None
        for name, body in parts.items():
            if name in found and found[name] != body:
                raise DiffError(f"your answer gives the block {name!r} twice; give each block once")
            found[name] = body
    return found


def replace_functions(block: str, code: str) -> str | None:
    """``block`` with each top-level function of ``code`` put in place of the one of that name.

    Returns None when ``code`` does not parse or defines a function the block does not have.
    """
    try:
        new_tree, old_tree = pyast.parse(code), pyast.parse(block)
    except SyntaxError:
        return None
    new = [n for n in new_tree.body if isinstance(n, ast.FunctionDef)]
    if not new:
        return None
    edits = []
    for fn in new:
        old = programs.function(old_tree, fn.name)
        if old is None:
            return None
        start = min([old.lineno] + [d.lineno for d in old.decorator_list])
        first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
        new_text = "".join(code.splitlines(keepends=True)[first - 1 : fn.end_lineno])
        a = programs.offset(block, start, 0)
        b = programs.offset(block, old.end_lineno + 1, 0) if old.end_lineno < len(block.splitlines()) else len(block)
        edits.append(((a, b), new_text if new_text.endswith("\n") else new_text + "\n"))
    return programs.splice(block, edits)


# ----------------------------------------------------------------------------- the entry point


def apply_answer(base: str, answer: str, evolve: Sequence[str]) -> Applied:
    """The program that ``answer`` makes of ``base``.

    Args:
      base: the program the answer changes (the best program of the prompt).
      answer: the model's reply, reasoning included.
      evolve: the blocks the campaign evolves; changes elsewhere are refused.

    Raises:
      NoCode: nothing in the answer looks like code.
      DiffError: the answer has code that cannot be applied (the message says why).
    """
    text = strip_reasoning(answer)
    if not text:
        raise NoCode("the answer is empty (after removing the reasoning)")
    note = note_of(text)
    if edits := parse_edits(text):
        source = base
        for edit in edits:
            source = apply_edit(source, edit)
        return _checked(base, source, evolve, "diff", note)
    if found := block_texts(text):
        source = base
        existing = programs.blocks(base)
        for name, body in found.items():
            if name not in existing:
                raise DiffError(f"the program has no evolve block {name!r}; its blocks are {sorted(existing)}")
            if name not in evolve and programs.normalise(body) != programs.normalise(existing[name]):
                raise DiffError(f"the block {name!r} does not evolve in this campaign; change only {', '.join(evolve)}")
            source = programs.replace_block(source, name, body)
        return _checked(base, source, evolve, "blocks", note)
    for code in fenced_code(text):
        source = _functions_into_blocks(base, code, evolve)
        if source is not None:
            return _checked(base, source, evolve, "functions", note)
    if fenced_code(text):
        raise DiffError(
            "the code in your answer is neither SEARCH/REPLACE blocks nor whole evolve blocks "
            "(from `# EVOLVE-BLOCK-START <name>` to `# EVOLVE-BLOCK-END`)"
        )
    raise NoCode("the answer has no code: no SEARCH/REPLACE block, no evolve block, no fenced code")


def _functions_into_blocks(base: str, code: str, evolve: Sequence[str]) -> str | None:
    """Put the functions of ``code`` into the one evolved block that defines them all."""
    existing = programs.blocks(base)
    for name in evolve:
        if name in existing:
            new = replace_functions(existing[name], code)
            if new is not None:
                return programs.replace_block(base, name, new)
    return None


def _checked(base: str, source: str, evolve: Sequence[str], form: str, note: str) -> Applied:
    try:
        old, new = programs.blocks(base), programs.blocks(source)
    except programs.BlockError as e:
        raise DiffError(f"the change breaks the evolve-block markers: {e}") from None
    if set(new) != set(old):
        raise DiffError(f"the change adds or removes evolve blocks ({sorted(old)} -> {sorted(new)}); keep the markers")
    if programs.normalise(programs.scaffold(source)) != programs.normalise(programs.scaffold(base)):
        raise DiffError("the change touches code outside the evolve blocks; change only the code between the markers")
    changed = tuple(n for n in old if programs.normalise(new[n]) != programs.normalise(old[n]))
    if not changed:
        raise Unchanged("the change leaves the program as it was (up to comments and layout)")
    if outside := [n for n in changed if n not in evolve]:
        raise DiffError(f"the change edits {outside}, which do not evolve in this campaign; change only {', '.join(evolve)}")
    return Applied(source, form, note, changed)
