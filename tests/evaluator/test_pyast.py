"""Every parse in the package goes through evaluator.pyast's lock (gh-106905)."""

import ast
import pathlib
import threading

import pytest

from evaluator import pyast

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("search", "evaluator", "db", "active_learning", "proxy_models")


def _unlocked_parses(path: pathlib.Path) -> list[int]:
    """Lines of ``path`` that call ``ast.parse`` directly.

    ``compile`` of source text is left alone: it never builds Python AST objects,
    which is where the 3.11 race lives.
    """
    tree = ast.parse(path.read_text())
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "parse" and isinstance(f.value, ast.Name) and f.value.id == "ast":
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_parses_outside_the_lock():
    offenders = {
        str(p.relative_to(ROOT)): lines
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p.name != "pyast.py" and (lines := _unlocked_parses(p))
    }
    assert offenders == {}, f"use evaluator.pyast.parse instead: {offenders}"


def test_the_checker_finds_a_direct_parse(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ast\n\ndef f(s):\n    return ast.parse(s)\n\ntree = ast.parse('1', mode='eval')\n")
    assert _unlocked_parses(bad) == [4, 6]


def test_parse_matches_ast_parse_in_both_modes():
    source = "def f(x):\n    return [y * 2 for y in x if y]\n"
    assert ast.dump(pyast.parse(source)) == ast.dump(ast.parse(source))
    assert ast.dump(pyast.parse("a + b", mode="eval")) == ast.dump(ast.parse("a + b", mode="eval"))
    with pytest.raises(SyntaxError):
        pyast.parse("def broken(:\n")


def test_parses_from_many_threads_at_once_never_raise():
    # Deeply nested expressions make the recursion-depth bookkeeping of gh-106905 busy.
    source = "x = " + "(" * 60 + "1" + ")" * 60 + "\n" + "def g():\n    return [[[[1]]]]\n" * 20
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(150):
                pyast.parse(source)
        except BaseException as e:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_the_lock_is_reentrant():
    with pyast.LOCK:
        assert isinstance(pyast.parse("1"), ast.Module)
