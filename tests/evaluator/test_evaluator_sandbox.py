"""The sandbox's plumbing: environment, isolation probe, warm workers, one job per worker."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import uuid

import pytest

from evaluator.executor import LocalExecutor
from evaluator.protocol import Job
from evaluator.result import Status
from evaluator.sandbox import SandboxConfig, SandboxError, UidPool, _bwrap_args, needed_paths, sandbox_env
from sandbox_helpers import TEST_CONFIG, fake_program, run_isolated, stages


def test_environment_keeps_the_allow_list_and_drops_secrets(monkeypatch):
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/dev/null")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("MY_APP_SETTING", "not allow-listed")
    env = sandbox_env(SandboxConfig(env_allow=("LANG", "XLA_FLAGS", "HF_TOKEN")), "/tmp/w", "m", None)
    assert env["LANG"] == "C.UTF-8" and env["XLA_FLAGS"].startswith("--xla")
    assert "HF_TOKEN" not in env, "secret-looking names are dropped even when allow-listed"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "MY_APP_SETTING" not in env
    assert env["HOME"] == env["TMPDIR"] == "/tmp/w"


def test_bubblewrap_arguments_isolate_network_pids_and_files():
    args = _bwrap_args(SandboxConfig(), drop=True)
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--ro-bind"):
        assert flag in args
    tmpfs = [args[i + 1] for i, a in enumerate(args) if a == "--tmpfs"]
    assert "/tmp" in tmpfs and "/root" in tmpfs
    assert "--cap-add" in args  # only CAP_SETUID/SETGID, for the worker's own uid drop


def test_directories_a_script_ran_from_are_not_mounted_back(monkeypatch):
    """sys.path[0] is the script's directory: /tmp or ~ must stay hidden even then."""
    home = str(pathlib.Path.home())
    monkeypatch.setattr(sys, "path", [*sys.path, "/tmp", home, "/", "/root"])
    paths = needed_paths(SandboxConfig())
    assert not {"/tmp", home, "/", "/root", "/home"} & set(paths)


def test_the_hosts_tmp_is_invisible_inside(isolation):
    if not isolation.has("private-tmp"):
        pytest.skip(f"no private /tmp at this level ({isolation})")
    with tempfile.NamedTemporaryFile(prefix=f"host-{uuid.uuid4().hex}") as f:
        run = run_isolated(fake_program("import os\nprint(os.listdir('/tmp'), os.listdir(os.path.expanduser('~')))"))
        assert run.first.ok and os.path.basename(f.name) not in run.first.stdout


@pytest.mark.parametrize("kwargs", [dict(bubblewrap="maybe"), dict(memory_limit_bytes=1000), dict(processes=0)])
def test_bad_sandbox_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SandboxConfig(**kwargs)


def test_uid_pool_hands_out_distinct_uids():
    pool = UidPool(base=300_000, size=4)
    a, b = pool.acquire(), pool.acquire()
    assert a != b and {a, b} <= set(range(300_000, 300_004))
    pool.release(a)
    assert a in pool.free


def test_every_result_records_the_isolation_level(fake_pool):
    results = fake_pool.run(Job(fake_program(), stages()))
    assert [r.status for r in results] == [Status.OK, Status.OK]
    assert {r.isolation for r in results} == {str(fake_pool.isolation)}
    assert fake_pool.isolation.level in ("bubblewrap", "rlimits")


def test_every_candidate_gets_a_fresh_worker_and_workdir(fake_pool):
    leave = fake_program('open("left-behind.txt", "w").write("x")')
    look = fake_program('import os\nprint(sorted(os.listdir(".")), os.getcwd())')
    assert fake_pool.run(Job(leave, stages(base=False)))[0].ok
    seen = fake_pool.run(Job(look, stages(base=False)))[0]
    assert seen.ok and "left-behind.txt" not in seen.stdout


def test_workers_are_pinned_to_their_own_cores(fake_pool):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least two cores")
    probe = fake_program("import os\nprint(sorted(os.sched_getaffinity(0)))")
    futures = [fake_pool.submit(Job(probe, stages(base=False))) for _ in range(4)]
    seen = {f.result()[0].stdout.strip() for f in futures}
    assert all(len(json.loads(s)) == 1 for s in seen)


def test_output_is_attributed_to_the_stage_that_printed_it():
    source = fake_program(block='print("in smoke")\n    return x').replace(
        "def hyperparameters(n_params, n_tokens):\n", 'def hyperparameters(n_params, n_tokens):\n    print("in strategy")\n'
    )
    run = run_isolated(source)
    smoke, base = run.results
    assert "in smoke" in smoke.stdout and "in smoke" not in base.stdout
    assert "in strategy" in base.stdout


def test_a_garbled_result_channel_is_an_error_not_a_crash():
    attack = "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'not json\\n')\n    except OSError:\n        pass"
    run = run_isolated(fake_program(attack))
    assert run.first.status is Status.ERROR
    assert "garbled" in run.first.message
    assert not run.survivors


def test_a_broken_runner_is_a_sandbox_error_not_a_candidate_result(tmp_path):
    runner = tmp_path / "broken_runner.py"
    runner.write_text("raise ImportError('the runner itself is broken')\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(runner, 0o644)
    with LocalExecutor(TEST_CONFIG, runner=str(runner), max_workers=1, spares=False) as executor:
        executor.extra_ro = (str(tmp_path),)
        with pytest.raises(SandboxError, match="did not become ready"):
            executor.run(Job(fake_program(), stages()))
