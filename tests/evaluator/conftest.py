"""Fixtures for the evaluator tests: sandboxes with the fake runner, a guard on the parent."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for sandbox_helpers (tests/ is not a package)

from evaluator.executor import LocalExecutor  # noqa: E402
from evaluator.sandbox import probe_isolation  # noqa: E402
from sandbox_helpers import FAKE_RUNNER, TEST_CONFIG  # noqa: E402


@pytest.fixture(scope="session")
def isolation():
    return probe_isolation(TEST_CONFIG)


@pytest.fixture(scope="session")
def fake_pool():
    with LocalExecutor(TEST_CONFIG, runner=FAKE_RUNNER, max_workers=2) as executor:
        yield executor


@pytest.fixture
def parent_guard(tmp_path):
    """The test process must come out of every attack as it went in."""
    canary = tmp_path / "canary.txt"
    canary.write_text("intact")
    before = {
        "cwd": os.getcwd(),
        "env": _env(),
        "fds": len(os.listdir("/proc/self/fd")),
        "sigterm": signal.getsignal(signal.SIGTERM),
    }
    yield
    assert os.getcwd() == before["cwd"]
    assert _env() == before["env"]
    assert canary.read_text() == "intact"
    assert signal.getsignal(signal.SIGTERM) == before["sigterm"]
    assert len(os.listdir("/proc/self/fd")) <= before["fds"], "file descriptors leaked"
    assert subprocess.run(["true"]).returncode == 0, "the parent can no longer start processes"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
