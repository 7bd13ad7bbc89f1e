"""The cascade with the real runner (``proxy_models.run``, JAX) at tiny N and D.

Several candidates run at once: the pool's two workers take the broken ones
while ``scalesearch eval`` trains the reference in its own sandbox.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from evaluator.cascade import Cascade, CascadeConfig, ExperimentPoint
from evaluator.executor import LocalExecutor
from evaluator.protocol import Job, StageSpec
from evaluator.result import Status
from evaluator.sandbox import GiB, SandboxConfig
from proxy_models.program import seed_source
from search.cli import main as cli_main

pytestmark = pytest.mark.slow

N, D = 20_000, 50_000
CONFIG = SandboxConfig(memory_limit_bytes=6 * GiB)


def with_apply_return(source: str, expr: str) -> str:
    head, tail = source.split("def apply_block", 1)
    new_tail, n = re.subn(r"\n(\s+)return x\n", rf"\n\1return {expr}\n", tail, count=1)
    assert n == 1
    return head + "def apply_block" + new_tail


def renamed(source: str) -> str:
    """The same program with other local names, comments and spacing."""
    out = re.sub(r"\bk_attn\b", "key_for_attention", source)
    out = re.sub(r"\bk_mlp\b", "key_for_mlp", out)
    out = out.replace("def apply_block(params, x, cfg):", "def apply_block(params, x, cfg):  # unchanged maths\n")
    assert out != source
    return out


RECOMPILES = '''
import jax
import jax.numpy as jnp


def init_block(key, cfg):
    return {}


def apply_block(params, x, cfg):
    return x


def hyperparameters(n_params, n_tokens):
    # Called eagerly by the harness: compile a function of a new shape at every step, forever.
    step = 0
    while True:
        step += 1
        jax.jit(lambda v: v * 2.0)(jnp.ones((step,)))
'''


@pytest.fixture(scope="module")
def pool():
    with LocalExecutor(CONFIG, max_workers=2) as executor:
        yield executor


@pytest.fixture(scope="module")
def broken(pool):
    """NaN, shape-changing and recompiling programs, submitted together (they run while the CLI trains)."""
    reference = seed_source("reference")
    slow = Cascade(pool, CascadeConfig(base=ExperimentPoint(N, D), smoke_timeout_s=600))
    quick = Cascade(pool, CascadeConfig(base=ExperimentPoint(N, D), smoke_timeout_s=15))
    return {
        "nan": slow.submit(with_apply_return(reference, "x * jnp.nan")),
        "shape": slow.submit(with_apply_return(reference, "x[..., :-1]")),
        "recompiles": quick.submit(RECOMPILES),
    }


@pytest.fixture(scope="module")
def reference_eval(broken, tmp_path_factory):
    """``scalesearch eval reference.py --json``: (exit code, parsed JSON)."""
    path = tmp_path_factory.mktemp("programs") / "reference.py"
    path.write_text(seed_source("reference"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = cli_main(["eval", str(path), "--n", str(N), "--d", str(D), "--json", "--memory-gib", "6"])
    return rc, json.loads(printed.getvalue().strip().splitlines()[-1])


def test_scalesearch_eval_passes_the_reference(reference_eval):
    rc, out = reference_eval
    assert rc == 0, [(r["stage"], r["status"], r["message"], r["stderr"][-2000:]) for r in out["results"]]
    assert out["status"] == "ok"
    assert [r["stage"] for r in out["results"]] == ["static", "smoke", "base"]
    base = out["results"][-1]["metrics"]
    assert base["val_loss"] > 0 and base["n_params"] > 0 and len(base["curve"]) >= 20
    assert out["isolation"]["level"] in ("bubblewrap", "rlimits")


def test_nan_loss_is_diverged(broken):
    outcome = broken["nan"].result()
    assert outcome.status is Status.DIVERGED, outcome.message
    assert "finite" in outcome.message


def test_a_block_that_changes_the_shape_is_invalid(broken):
    outcome = broken["shape"].result()
    assert outcome.status is Status.INVALID, outcome.message
    assert "shape" in outcome.message


def test_a_program_that_recompiles_every_step_times_out(broken):
    outcome = broken["recompiles"].result()
    assert outcome.status is Status.TIMEOUT, outcome.message


def test_a_renamed_copy_of_the_reference_is_caught_as_duplicate(pool, reference_eval):
    rc, out = reference_eval
    if rc != 0:
        pytest.skip("the reference did not pass, so there is no fingerprint to match")
    fingerprint = out["results"][1]["metrics"]["fingerprint"]
    job = Job(renamed(seed_source("reference")), (StageSpec("smoke", "smoke", 600),), {fingerprint: "reference"})
    (smoke,) = pool.run(job)
    assert smoke.status is Status.DUPLICATE, smoke.message
    assert smoke.metrics["duplicate_of"] == "reference"
