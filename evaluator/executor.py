"""Where evaluations run: the Executor interface and the local pool of warm sandboxed workers.

The search loop hands jobs to an ``Executor`` and gets futures back, so several
candidates can be in flight. ``LocalExecutor`` runs them on this machine: one
slot per worker, each pinned to its own cores; each slot keeps one *spare*
worker that has already imported JAX, so a job starts the moment it is
submitted, and a replacement spare is started (in the background) as soon as
one is taken. Every worker serves exactly one job and is then destroyed. Jobs
start in the order they were submitted (a job waiting at a gate for an earlier
one's smoke stage, as ``evaluator.twins`` does, relies on it).
A distributed executor only has to implement ``submit`` and ``shutdown``.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import queue
import threading
from typing import Protocol

from evaluator.protocol import Job
from evaluator.result import EvalResult
from evaluator.sandbox import Isolation, SandboxConfig, SandboxError, probe_isolation, uid_pool
from evaluator.supervisor import Gate, WorkerProcess

DEFAULT_RUNNER = "proxy_models.run"


class Executor(Protocol):
    """Runs jobs somewhere and returns one ``EvalResult`` per stage attempted.

    ``submit`` never raises for anything the candidate does; the future raises
    only when the executor itself is broken (``SandboxError``) or was shut down
    with ``cancel=True`` before the job finished (``CancelledError``). A ``gate``
    sees each passed stage that has a successor before the next starts; a result
    it returns ends the job there, in that stage's place (``evaluator.twins``).
    """

    isolation: Isolation

    def submit(self, job: Job, gate: Gate | None = None) -> concurrent.futures.Future[list[EvalResult]]: ...

    def shutdown(self, cancel: bool = False) -> None: ...


def _cancelled(job: Job) -> concurrent.futures.CancelledError:
    return concurrent.futures.CancelledError(f"job {job.name!r} was cancelled: the executor was shut down with cancel=True")


def _cache_dir() -> str:
    return os.environ.get("SCALESEARCH_CACHE") or str(pathlib.Path.home() / ".cache" / "scalesearch")


def prepare_corpus(corpus: str | None) -> None:
    """Build the corpus cache outside the sandbox (trusted code), where it can be written."""
    from proxy_models.data import load_corpus

    load_corpus(corpus)


class LocalExecutor:
    """A process pool of sandboxed workers on this machine.

    Args:
      config: limits and isolation for every worker.
      runner: module (dotted name or path to a ``.py`` file) that provides
        ``smoke`` and ``train_run``; the default is ``proxy_models.run``.
      max_workers: jobs in flight at once (default: usable cores // cores_per_worker).
      cores_per_worker: cores each worker is pinned to (``os.sched_setaffinity``).
      corpus: the training corpus folder (None: the standard library), prepared
        once here and mounted read-only into the sandbox.
      spares: keep a warm worker ready per slot (False starts one per job, cold).
    """

    def __init__(
        self,
        config: SandboxConfig = SandboxConfig(),
        runner: str = DEFAULT_RUNNER,
        max_workers: int | None = None,
        cores_per_worker: int = 1,
        corpus: str | None = None,
        spares: bool = True,
    ):
        self.config, self.runner, self.corpus, self.use_spares = config, runner, corpus, spares
        self.isolation = probe_isolation(config)
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        per = max(1, min(cores_per_worker, len(cores)))
        self.max_workers = max_workers or max(1, len(cores) // per)
        self.slots = [tuple(cores[(i * per + j) % len(cores)] for j in range(per)) for i in range(self.max_workers)]
        self.uids = uid_pool(config.uid_base)
        self.cache_dir = _cache_dir()
        if runner == DEFAULT_RUNNER:
            prepare_corpus(corpus)
        self.extra_ro = tuple(p for p in (self.cache_dir, corpus) if p and os.path.exists(p))
        self._free: queue.Queue[int] = queue.Queue()
        self._spares: dict[int, WorkerProcess | None] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._cancelled = False
        self._running: dict[int, WorkerProcess] = {}  # slot -> the worker running its job
        self._threads = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="evaluator")
        for slot in range(self.max_workers):
            self._free.put(slot)
            self._spares[slot] = self._spawn(slot) if spares else None

    def _spawn(self, slot: int) -> WorkerProcess:
        worker = WorkerProcess(
            self.config, self.isolation, self.runner, self.slots[slot], self.uids, self.cache_dir, self.corpus, self.extra_ro
        )
        return worker.start()

    def submit(self, job: Job, gate: Gate | None = None) -> concurrent.futures.Future[list[EvalResult]]:
        if self._closed:
            raise RuntimeError("this executor has been shut down")
        return self._threads.submit(self._run, job, gate)

    def run(self, job: Job) -> list[EvalResult]:
        """``submit(job).result()``."""
        return self.submit(job).result()

    def _run(self, job: Job, gate: Gate | None) -> list[EvalResult]:
        slot = self._free.get()
        try:
            for attempt in range(2):
                worker = self._start(slot, job)
                try:
                    try:
                        worker.wait_ready()
                    except SandboxError as e:
                        if self._cancelled:
                            raise _cancelled(job) from e
                        if attempt:
                            raise
                        continue
                    results = worker.run(job, gate)
                finally:
                    with self._lock:
                        self._running.pop(slot, None)
                if self._cancelled:  # killed mid-job: its results describe the kill, not the candidate
                    raise _cancelled(job)
                return results
            raise AssertionError("unreachable")
        finally:
            self._free.put(slot)

    def _start(self, slot: int, job: Job) -> WorkerProcess:
        """Take this slot's worker and register it as running, unless the executor is cancelling."""
        worker = self._take(slot)
        with self._lock:
            if not self._cancelled:
                self._running[slot] = worker
                return worker
        worker.destroy()
        raise _cancelled(job)

    def _take(self, slot: int) -> WorkerProcess:
        """This slot's warm spare (or a new worker), and start its replacement."""
        with self._lock:
            worker = self._spares.get(slot) or self._spawn(slot)
            self._spares[slot] = self._spawn(slot) if self.use_spares and not self._closed else None
        return worker

    def shutdown(self, cancel: bool = False) -> None:
        """Stop accepting jobs, then destroy the spares.

        Jobs in flight run to the end, unless ``cancel``: then their workers are killed and
        queued jobs never start, and their futures raise ``CancelledError`` (a campaign stopped
        with Ctrl-C redoes them when it resumes, so waiting for them would only delay the stop).
        """
        self._closed = True
        if cancel:
            with self._lock:
                self._cancelled = True
                running = list(self._running.values())
            for worker in running:
                worker.kill("cancelled")
        self._threads.shutdown(wait=True, cancel_futures=cancel)
        with self._lock:
            for slot, worker in self._spares.items():
                if worker is not None:
                    worker.destroy()
                self._spares[slot] = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.shutdown(cancel=exc_type is not None)  # leaving on an error (or Ctrl-C): do not wait for jobs
