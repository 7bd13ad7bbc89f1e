"""Stage 0: the static check refuses what programs have no use for, and says what and where."""

from __future__ import annotations

import pytest

from evaluator.result import Status
from evaluator.static import DENIED_PATHS, check, repair, static_stage
from proxy_models.program import seed_source

HEADER = "import jax\nimport jax.numpy as jnp\nimport optax\nfrom proxy_models import layers as L\n"
CONTRACT = '''

def init_block(key, cfg):
    return {}


def apply_block(params, x, cfg):
    return x


def hyperparameters(n_params, n_tokens):
    return {}
'''


def program(body: str) -> str:
    """``body`` on line 5, after the four allowed imports, then the contract."""
    return HEADER + body + CONTRACT


@pytest.mark.parametrize("name", ["reference", "weakened"])
def test_the_seed_programs_pass(name):
    report = check(seed_source(name))
    assert report.ok, report.message


@pytest.mark.parametrize(
    "body, expected",
    [
        ("import os", "line 5: import of 'os' is not allowed"),
        ("import numpy as np", "line 5: import of 'numpy' is not allowed"),
        ("from os import path", "line 5: import from 'os' is not allowed"),
        ("from proxy_models import program", "line 5: import from 'proxy_models' is not allowed"),
        ("from jax.experimental import io_callback", "line 5: import from 'jax.experimental'"),
        ("from jax import experimental", "jax.experimental is not allowed"),
        ("from jax.numpy import load", "line 5: 'from jax.numpy import load'"),
        ("from . import x", "line 5: relative imports"),
        ("from jax.numpy import *", "line 5: 'from jax.numpy import *'"),
        ("f = open('/etc/passwd')", "line 5: use of 'open'"),
        ("exec('1')", "line 5: use of 'exec'"),
        ("eval('1')", "line 5: use of 'eval'"),
        ("c = compile('1', 'f', 'eval')", "line 5: use of 'compile'"),
        ("os = __import__('os')", "line 5: use of '__import__'"),
        ("g = globals()", "line 5: use of 'globals'"),
        ("g = locals()", "line 5: use of 'locals'"),
        ("v = vars(jax)", "line 5: use of 'vars'"),
        ("setattr(jax, 'x', 1)", "line 5: use of 'setattr'"),
        ("delattr(jax, 'x')", "line 5: use of 'delattr'"),
        ("breakpoint()", "line 5: use of 'breakpoint'"),
        ("s = input()", "line 5: use of 'input'"),
        ("m = memoryview(b'x')", "line 5: use of 'memoryview'"),
        ("b = __builtins__", "line 5: use of '__builtins__'"),
        ("name = 'x'\ny = getattr(jax, name)", "line 6: getattr needs a constant"),
        ("y = getattr(jax, '__loader__')", "line 5: string constants may not contain dunder"),
        ("y = getattr(jax, '_src')", "line 5: getattr(..., '_src'): private attributes"),
        ("f = map(getattr, [jax], ['numpy'])", "line 5: getattr may only be called directly"),
        ("k = ().__class__.__base__.__subclasses__()", "line 5: attribute '.__class__'"),
        ("g = init_block.__globals__", "line 5: attribute '.__globals__'"),
        ("s = jax._src", "line 5: attribute '._src'"),
        ("s = ''.join(['__cl', 'ass__'])", ""),  # harmless on its own: no dunder constant, no getattr
        ("x = '{0.__class__}'.format(1)", "line 5: string constants may not contain dunder"),
        ("def f():\n    yield 1\nfr = f().gi_frame", "line 7: attribute '.gi_frame'"),
        ("t = jax.version.subprocess", "line 5: attribute '.version'"),
        ("jax.config.update('jax_enable_x64', True)", "line 5: attribute '.config'"),
        ("y = jax.pure_callback", "line 5: attribute '.pure_callback'"),
        ("jax.debug.callback(print)", "line 5: attribute '.callback'"),
        ("jax.debug.breakpoint()", "line 5: attribute '.breakpoint'"),
        ("y = jax.experimental.io_callback", "line 5: attribute '.experimental'"),
        ("a = jnp.load('weights.npy')", "line 5: attribute '.load'"),
        ("jnp.save('x.npy', jnp.ones(3))", "line 5: attribute '.save'"),
        ("jax.profiler.start_trace('/tmp/t')", "line 5: attribute '.profiler'"),
        ("jax.device_get(jnp.ones(3)).tofile('x')", "line 5: attribute '.tofile'"),
        ("a = jax.device_get(jnp.ones(3)).ctypes", "line 5: attribute '.ctypes'"),
        ("j = L.jax", "line 5: attribute '.jax' (proxy_models.layers.jax): proxy_models.layers has no helper 'jax'"),
        ("m = L.math", "proxy_models.layers has no helper 'math'"),
        ("d = jax.distributed", "line 5: attribute '.distributed'"),
        ("c = jax.devices()[0].client", "line 5: attribute '.client'"),
        ("t = jax.numpy.ndarray.mro()", "line 5: attribute '.mro'"),
        ("import functools\nd = functools.singledispatch", "line 6: attribute '.singledispatch'"),
    ],
)
def test_refusals_say_what_and_where(body, expected):
    report = check(program(body))
    if not expected:
        assert report.ok, report.message
        return
    assert not report.ok
    assert expected in report.message, report.message


@pytest.mark.parametrize("path", DENIED_PATHS)
def test_every_documented_denied_path_is_refused(path):
    root, _, rest = path.partition(".")
    assert not check(program(f"import {root}\nx = {path}")).ok


@pytest.mark.parametrize(
    "body",
    [
        "from jax import numpy as np2, lax, random",
        "import jax.lax as lax\nimport math, functools",
        "import proxy_models.layers as layers\ny = layers.rms_norm",
        "from proxy_models.layers import attention, mlp",
        "shape = getattr(jnp.ones(3), 'shape')",
        "x = jax.nn.gelu(jnp.ones(3)) + jax.lax.rsqrt(2.0)",
        "class Helper:\n    def __init__(self, scale):\n        self.scale = scale",
        "if __name__ == '__main__':\n    print('hi')",
        "jax.debug.print('x {x}', x=1.0)",
        "from __future__ import annotations",
    ],
)
def test_ordinary_programs_pass(body):
    report = check(program(body))
    assert report.ok, report.message


def test_missing_contract_functions_are_named():
    report = check(HEADER + "def init_block(key, cfg):\n    return {}\n")
    assert "does not define apply_block()" in report.message
    assert "does not define hyperparameters()" in report.message


def test_wrong_arity_is_refused_with_its_line():
    report = check(program("").replace("def apply_block(params, x, cfg):", "def apply_block(params):"))
    assert "apply_block must accept 3 positional argument(s)" in report.message
    assert "line 11:" in report.message


def test_syntax_errors_report_the_line():
    report = check(program("x = (1,"))
    assert not report.ok
    assert report.problems[0].line >= 5
    assert "syntax error" in report.message


def test_markdown_fences_are_removed_before_judging():
    fenced = "Here is the improved program:\n```python\n" + program("") + "```\nIt should be faster."
    report = check(fenced)
    assert report.ok, report.message
    assert "kept the fenced code block" in report.repairs
    assert "```" not in report.source


def test_trailing_junk_is_trimmed():
    source, notes = repair(program("") + "\nThis change makes the model\n")
    assert "dropped 1 trailing line(s)" in notes[0]
    assert check(source).ok


def test_bidirectional_control_characters_are_refused():
    report = check(program("s = 'abc\u202e'"))
    assert "line 5: bidirectional" in report.message


def test_null_bytes_and_huge_sources_are_refused_not_raised():
    assert not check(program("x = '\0'")).ok
    assert "larger than" in check("x = 1\n" * 100_000).message


def test_static_stage_result_carries_the_message_for_the_proposer():
    result, _ = static_stage(program("import os"))
    assert result.status is Status.INVALID
    assert result.message.startswith("refused: line 5: import of 'os'")
