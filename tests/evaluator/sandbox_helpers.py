"""Helpers for the evaluator tests: the fake runner, fake programs, a one-off sandbox that reports survivors."""

from __future__ import annotations

import pathlib

from evaluator import procfs
from evaluator.protocol import Job, StageSpec
from evaluator.sandbox import GiB, MiB, SandboxConfig, probe_isolation, uid_pool
from evaluator.supervisor import WorkerProcess

FAKE_RUNNER = str(pathlib.Path(__file__).with_name("fake_runner.py"))
# Small limits so that hostile programs are stopped quickly and cheaply.
TEST_CONFIG = SandboxConfig(memory_limit_bytes=1 * GiB, processes=64, max_output_bytes=8 * MiB, startup_cpu_s=60)
UIDS = uid_pool()  # shared with every executor in this process

FAKE_PROGRAM = '''
def init_block(key, cfg):
    return {"w": 1.0}


def apply_block(params, x, cfg):
    return x


def hyperparameters(n_params, n_tokens):
    return {"learning_rate": 3e-3}
'''


def fake_program(attack: str = "", lr: str = "3e-3", block: str = "return x") -> str:
    """A program for the fake runner, with ``attack`` run at import time."""
    source = FAKE_PROGRAM.replace("3e-3", lr).replace("return x", block)
    return (attack.strip() + "\n" if attack else "") + source


def stages(smoke_s: float = 3.0, base_s: float = 3.0, base: bool = True) -> tuple[StageSpec, ...]:
    out = (StageSpec("smoke", "smoke", smoke_s),)
    return out + ((StageSpec("base", "train", base_s, 1000, 100_000),) if base else ())


class Sandboxed:
    """What ``run_isolated`` saw: the results and any process that outlived the job."""

    def __init__(self, results, survivors):
        self.results, self.survivors = results, survivors

    @property
    def first(self):
        return self.results[0]


def run_isolated(source: str, job_stages=None, config: SandboxConfig = TEST_CONFIG, runner: str = FAKE_RUNNER) -> Sandboxed:
    """Run ``source`` in one fresh sandboxed worker, static stage bypassed, and look for survivors."""
    worker = WorkerProcess(config, probe_isolation(config), runner, uids=UIDS).start()
    uid, marker, pid = worker.uid, worker.marker, worker.proc.pid
    results = worker.run(Job(source, job_stages or stages()))
    survivors = set(procfs.pids_with_env(f"SCALESEARCH_SANDBOX={marker}")) | set(procfs.pids_in_session(pid))
    if uid is not None:
        survivors |= set(procfs.pids_of_uid(uid))
    if procfs.alive(pid):
        survivors.add(pid)
    return Sandboxed(results, survivors)


class Sandbox:
    """One isolation level for the hostile tests: ``run`` a program, ``has`` a protection."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.isolation = probe_isolation(config)

    def run(self, source: str, job_stages=None) -> Sandboxed:
        return run_isolated(source, job_stages, self.config)

    def has(self, feature: str) -> bool:
        return self.isolation.has(feature)

    def skip_unless(self, *features: str) -> None:
        import pytest

        if not any(self.has(f) for f in features):
            pytest.skip(f"needs one of {features}; this level is {self.isolation} ({self.isolation.note or 'no note'})")
