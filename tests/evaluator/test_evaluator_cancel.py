"""Shutting the executor down with cancel=True: a stopped campaign does not wait for jobs it has abandoned."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from evaluator import procfs
from evaluator.executor import LocalExecutor
from evaluator.protocol import Job
from sandbox_helpers import FAKE_RUNNER, TEST_CONFIG, fake_program, stages

# Sleeps past its stage's timeout: a shutdown that waited for it would return after SLEEP_TIMEOUT_S
# with the job's result a timeout, where a cancelled job has no result.
SLEEPER = fake_program("import time\ntime.sleep(600)")
SLEEP_TIMEOUT_S = 60.0


def _running_worker(executor: LocalExecutor, timeout_s: float = 120.0):
    """The worker that has taken the job, once it has imported its runner and the job goes to it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = list(executor._running.values())
        if workers and workers[0].ready.is_set():
            return workers[0]
        time.sleep(0.01)
    raise AssertionError("the job never started")


def test_cancel_kills_the_job_in_flight_and_never_starts_the_queued_one():
    executor = LocalExecutor(TEST_CONFIG, runner=FAKE_RUNNER, max_workers=1, spares=False)
    long_stages = stages(smoke_s=SLEEP_TIMEOUT_S, base=False)
    in_flight = executor.submit(Job(SLEEPER, long_stages, name="sleeper"))
    queued = executor.submit(Job(fake_program(), long_stages, name="queued"))
    worker = _running_worker(executor)

    executor.shutdown(cancel=True)
    with pytest.raises(concurrent.futures.CancelledError, match="sleeper"):
        in_flight.result(timeout=0)
    assert queued.cancelled()
    assert not procfs.alive(worker.proc.pid)
    assert not worker.leftovers()
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(Job(fake_program(), long_stages))


def test_without_cancel_the_job_in_flight_finishes():
    executor = LocalExecutor(TEST_CONFIG, runner=FAKE_RUNNER, max_workers=1, spares=False)
    job = executor.submit(Job(fake_program(), stages(base=False), name="quick"))
    executor.shutdown(cancel=False)
    (smoke,) = job.result(timeout=0)
    assert smoke.ok


def test_leaving_the_with_block_on_an_error_cancels():
    with pytest.raises(KeyboardInterrupt):
        with LocalExecutor(TEST_CONFIG, runner=FAKE_RUNNER, max_workers=1, spares=False) as executor:
            in_flight = executor.submit(Job(SLEEPER, stages(smoke_s=SLEEP_TIMEOUT_S, base=False), name="sleeper"))
            _running_worker(executor)
            raise KeyboardInterrupt  # as Ctrl-C would, inside the block
    with pytest.raises(concurrent.futures.CancelledError):
        in_flight.result(timeout=0)
