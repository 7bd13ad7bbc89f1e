"""The hostile corpus: one test per attack, run in the sandbox with the static stage bypassed.

Each test asserts the status, that the parent is unharmed (``parent_guard``),
and that no process outlived the job. Every attack runs at the best isolation
this machine offers and again with bubblewrap turned off (resource limits
only), skipping, with the reason, what that level does not claim to stop.
``test_static_stage_refuses`` checks the first line of defence separately.
"""

from __future__ import annotations

import dataclasses
import pathlib
import socket
import uuid

import pytest

from evaluator.result import Status
from evaluator.sandbox import PROJECT_ROOT
from evaluator.static import check
from sandbox_helpers import TEST_CONFIG, Sandbox, fake_program, stages

pytestmark = pytest.mark.usefixtures("parent_guard")


@pytest.fixture(scope="module", params=["auto", "never"], ids=["best", "rlimits-only"])
def sandbox(request):
    return Sandbox(dataclasses.replace(TEST_CONFIG, bubblewrap=request.param))


def outside_path() -> pathlib.Path:
    """A file the sandbox must not be able to create: inside the project tree."""
    return PROJECT_ROOT / f".pwned-{uuid.uuid4().hex}"


def test_infinite_loop_times_out(sandbox):
    run = sandbox.run(fake_program("while True:\n    pass"), stages(smoke_s=1.5))
    assert run.first.status is Status.TIMEOUT
    assert "wall-clock" in run.first.message
    assert not run.survivors


def test_sleep_forever_times_out(sandbox):
    run = sandbox.run(fake_program("import time\ntime.sleep(10**6)"), stages(smoke_s=1.5))
    assert run.first.status is Status.TIMEOUT
    assert not run.survivors


def test_ignoring_sigterm_does_not_help(sandbox):
    attack = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    run = sandbox.run(fake_program(attack), stages(smoke_s=1.5))
    assert run.first.status is Status.TIMEOUT
    assert not run.survivors


def test_memory_bomb_is_out_of_memory(sandbox):
    run = sandbox.run(fake_program("hoard = []\nwhile True:\n    hoard.append(bytearray(10**8))"), stages(smoke_s=60))
    assert run.first.status is Status.OUT_OF_MEMORY
    assert not run.survivors


def test_one_huge_allocation_is_out_of_memory(sandbox):
    run = sandbox.run(fake_program("x = bytearray(10**12)"))
    assert run.first.status is Status.OUT_OF_MEMORY
    assert "MemoryError" in run.first.exception
    assert not run.survivors


def test_fork_bomb_is_contained(sandbox):
    # As root RLIMIT_NPROC only binds a dropped uid; the PID namespace alone bounds nothing.
    sandbox.skip_unless("nproc")
    attack = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    run = sandbox.run(fake_program(attack), stages(smoke_s=2.0))
    assert run.first.status is Status.TIMEOUT
    assert not run.survivors


def test_a_gigabyte_of_stdout_is_cut_off(sandbox):
    run = sandbox.run(fake_program('for _ in range(1024):\n    print("x" * 2**20)'))
    assert run.first.status is Status.ERROR
    assert "printed more than" in run.first.message
    assert len(run.first.stdout.encode()) <= 20 * 1024
    assert not run.survivors


def test_writing_outside_the_workdir_fails(sandbox):
    sandbox.skip_unless("read-only-fs", "uid-drop")
    target = outside_path()
    attack = f'open("scratch.txt", "w").write("the workdir is writable")\nprint(open("scratch.txt").read())\nopen({str(target)!r}, "w").write("pwned")'
    run = sandbox.run(fake_program(attack))
    assert run.first.status is Status.ERROR
    assert "the workdir is writable" in run.first.stdout
    assert not target.exists()
    assert not run.survivors


def test_reading_files_under_home_fails(sandbox):
    sandbox.skip_unless("hidden-home", "uid-drop")
    secret = f"secret-{uuid.uuid4().hex}"
    path = pathlib.Path.home() / f".scalesearch-test-{uuid.uuid4().hex}"
    path.write_text(secret)
    path.chmod(0o600)
    try:
        run = sandbox.run(fake_program(f"print(open({str(path)!r}).read())"))
    finally:
        path.unlink()
    assert run.first.status is Status.ERROR
    assert secret not in run.first.stdout + run.first.stderr + run.first.message + (run.first.traceback or "")
    assert not run.survivors


def test_environment_secrets_are_not_inherited(parent_guard, monkeypatch, sandbox):
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("SCALESEARCH_TEST_TOKEN", secret)
    monkeypatch.setenv("LANG", "C.UTF-8")
    attack = "import os\nprint(sorted(os.environ.items()))\n"
    if sandbox.has("pid-namespace") or sandbox.has("uid-drop"):
        attack += "for pid in (1, os.getppid()):\n    try:\n        print(open(f'/proc/{pid}/environ').read())\n    except OSError as e:\n        print(e)\n"
    run = sandbox.run(fake_program(attack))
    assert run.first.status is Status.OK
    assert "LANG" in run.first.stdout  # allow-listed variables do pass
    assert secret not in run.first.stdout
    assert not run.survivors


def test_connecting_to_a_local_listener_fails(sandbox):
    sandbox.skip_unless("no-network")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        attack = f'import socket\ns = socket.create_connection(("127.0.0.1", {port}), timeout=2)\ns.sendall(b"pwned")'
        run = sandbox.run(fake_program(attack))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert run.first.status is Status.ERROR
    assert "ConnectionRefusedError" in run.first.exception or "OSError" in run.first.exception
    assert not run.survivors


ESCAPES = {
    "dunder_import": '__import__("os").system({cmd!r})',
    "importlib": 'import importlib\nimportlib.import_module("subprocess").run(["sh", "-c", {cmd!r}])',
    "subclasses": (
        "for c in ().__class__.__base__.__subclasses__():\n"
        "    if c.__name__ == 'catch_warnings':\n"
        "        c()._module.__builtins__['__import__']('os').system({cmd!r})\n"
        "        break"
    ),
}


@pytest.mark.parametrize("trick", sorted(ESCAPES))
def test_shell_commands_through_import_tricks_stay_inside(trick, sandbox, tmp_path):
    """The command runs, but inside: its daemon dies with the job, and (with filesystem
    isolation) it cannot write outside."""
    isolated = sandbox.has("read-only-fs") or sandbox.has("uid-drop")
    target = outside_path() if isolated else tmp_path / "pwned"  # without isolation the write succeeds
    cmd = f"(setsid sleep 1000 &) ; echo pwned > {target}; echo ran"
    try:
        run = sandbox.run(fake_program(ESCAPES[trick].format(cmd=cmd)))
        assert run.first.status is Status.OK
        assert not run.survivors
        sandbox.skip_unless("read-only-fs", "uid-drop")
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_sys_exit_is_an_error(sandbox):
    run = sandbox.run(fake_program("import sys\nsys.exit(3)"))
    assert run.first.status is Status.ERROR
    assert "sys.exit(3)" in run.first.message
    assert not run.survivors


def test_os_exit_is_an_error(sandbox):
    run = sandbox.run(fake_program("import os\nos._exit(0)"))
    assert run.first.status is Status.ERROR
    assert run.first.exit == "exit code 0"
    assert not run.survivors


def test_killing_itself_is_an_error(sandbox):
    run = sandbox.run(fake_program("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))
    assert run.first.status is Status.ERROR
    assert "SIGKILL" in run.first.message
    assert not run.survivors


def test_exception_at_import_time_is_an_error_with_traceback(sandbox):
    run = sandbox.run(fake_program('raise RuntimeError("broken at import")'))
    assert run.first.status is Status.ERROR
    assert run.first.exception == "RuntimeError: broken at import"
    assert "line 1 of the program" in run.first.message
    assert "RuntimeError" in run.first.traceback
    assert not run.survivors


def test_nan_loss_is_diverged(sandbox):
    run = sandbox.run(fake_program(block='return [[[float("nan")] * 4] * 3]'))
    assert run.first.status is Status.DIVERGED
    assert not run.survivors


def test_nan_during_training_is_diverged(sandbox):
    run = sandbox.run(fake_program(lr="5.0"))
    assert [r.status for r in run.results] == [Status.OK, Status.DIVERGED]
    assert not run.survivors


def test_block_that_changes_the_shape_is_invalid(sandbox):
    run = sandbox.run(fake_program(block="return [x[0][:-1]]"))
    assert run.first.status is Status.INVALID
    assert "shape" in run.first.message
    assert not run.survivors


# The static stage catches every attack above that needs a forbidden name, and says where.
STATIC_CASES = {
    "sleep": ("import time\ntime.sleep(10**6)", "line 1: import of 'time'"),
    "sigterm": ("import signal", "line 1: import of 'signal'"),
    "fork": ("import os\nos.fork()", "line 1: import of 'os'"),
    "write": ('open("/etc/x", "w")', "line 1: use of 'open'"),
    "socket": ("import socket", "line 1: import of 'socket'"),
    "dunder_import": ('__import__("os").system("id")', "line 1: use of '__import__'"),
    "importlib": ("import importlib", "line 1: import of 'importlib'"),
    "subclasses": ("x = ().__class__.__base__.__subclasses__()", "line 1: attribute '.__class__'"),
    "sys_exit": ("import sys\nsys.exit(3)", "line 1: import of 'sys'"),
    "environ": ("import os\nprint(os.environ)", "line 1: import of 'os'"),
}


@pytest.mark.parametrize("name", sorted(STATIC_CASES))
def test_static_stage_refuses(name):
    attack, expected = STATIC_CASES[name]
    report = check(fake_program(attack))
    assert not report.ok
    assert expected in report.message


@pytest.mark.parametrize(
    "attack", ["while True:\n    pass", "x = bytearray(10**12)", 'raise RuntimeError("x")', "raise SystemExit(3)"]
)
def test_static_stage_lets_plain_python_through_for_the_sandbox(attack):
    """These need no forbidden name, so only the sandbox can stop them."""
    assert check(fake_program(attack)).ok
