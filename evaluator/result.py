"""What one evaluation stage returns: a Status and a frozen EvalResult.

A candidate that crashes, hangs or prints nonsense is a *result*, never an
exception in the caller (optuna's ``_run_trial`` turns every failure into a
FAIL trial the same way). This module also turns a dead process (exit code,
signal, stderr tail, peak memory) into a status and a one-line message that the
proposer can act on.
"""

from __future__ import annotations

import dataclasses
import enum
import signal
from collections.abc import Mapping
from typing import Any

TAIL_BYTES = 20 * 1024

# Stderr fragments that mean an allocation failed (XLA, C++, CPython, glibc).
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "std::bad_alloc", "MemoryError", "Cannot allocate memory")


class Status(enum.Enum):
    """Outcome of one stage. Only ``OK`` lets a candidate go on to the next stage."""

    OK = "ok"
    INVALID = "invalid"  # refused before running, or broke the program contract
    ERROR = "error"  # raised, crashed, exited, or misbehaved in the sandbox
    TIMEOUT = "timeout"  # wall-clock or CPU-time limit
    OUT_OF_MEMORY = "out_of_memory"
    DIVERGED = "diverged"  # non-finite or exploding loss
    DUPLICATE = "duplicate"  # same fingerprint as a program already evaluated
    PRUNED = "pruned"  # stopped early: learning curve clearly behind the incumbents

    def is_ok(self) -> bool:
        return self is Status.OK

    def is_failure(self) -> bool:
        """Failures of the candidate itself (not cascade decisions like duplicate or pruned)."""
        return self in (Status.INVALID, Status.ERROR, Status.TIMEOUT, Status.OUT_OF_MEMORY, Status.DIVERGED)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """One stage of one candidate.

    Attributes:
      stage: ``static``, ``smoke``, ``base`` or ``scaling``.
      status: the outcome.
      message: one line for the proposer's next prompt ("" when ok).
      metrics: what the stage measured (smoke: N, FLOPs per token, fingerprint;
        runs: ``proxy_models.run.train_run``'s dict, curve included). Treat as read-only.
      stdout: the last 20 KB the candidate printed during this stage.
      stderr: the last 20 KB of its stderr during this stage.
      exception: ``"TypeName: message"`` when the stage raised, else None.
      traceback: the formatted traceback when the stage raised, else None.
      wall_s: seconds from the stage's start to its result, as the parent saw it.
      isolation: the sandbox level that ran it (see ``evaluator.sandbox.Isolation``).
      exit: how the process ended when that decided the status ("signal SIGSEGV",
        "exit code 3", "killed after 60 s"), else None.
    """

    stage: str
    status: Status
    message: str = ""
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    exception: str | None = None
    traceback: str | None = None
    wall_s: float = 0.0
    isolation: str = ""
    exit: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (status as its string value)."""
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        d["metrics"] = dict(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        kwargs["status"] = Status(d["status"])
        return cls(**kwargs)


def tail(text: str, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of ``text`` (UTF-8), cut at a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[-limit:].decode("utf-8", "ignore")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclasses.dataclass(frozen=True)
class ProcessEnd:
    """How a sandboxed process ended, as the parent observed it.

    Attributes:
      returncode: exit code (>= 0) or minus the signal number, as ``subprocess`` reports.
      killed_by_parent: the evaluator itself killed it (wall-clock timeout, output cap).
      reason: why the parent killed it ("timeout", "output"), if it did.
      peak_rss_bytes: peak resident memory of the process tree (from ``wait4``).
      memory_limit_bytes: the address-space limit it ran under (None: unlimited).
      stderr: the stderr tail, searched for allocation-failure markers.
    """

    returncode: int
    killed_by_parent: bool = False
    reason: str | None = None
    peak_rss_bytes: int = 0
    memory_limit_bytes: int | None = None
    stderr: str = ""


def classify_exit(end: ProcessEnd, stage: str, timeout_s: float | None = None) -> tuple[Status, str, str]:
    """(status, message, exit description) for a process that died without reporting ``stage``.

    Rules: the parent's own kill on a wall-clock limit is a timeout; SIGXCPU is
    the CPU-time limit, also a timeout; SIGSEGV and SIGBUS under an address-space
    limit are out of memory (allocation failures in native code surface as
    segfaults there); SIGABRT and SIGKILL are out of memory when stderr shows an
    allocation failure or the peak resident memory reached half the limit, else
    errors; any other exit is an error.
    """
    rc = end.returncode
    if end.killed_by_parent and end.reason == "timeout":
        limit = f" of {timeout_s:g} s" if timeout_s else ""
        return Status.TIMEOUT, f"stage {stage} exceeded its wall-clock limit{limit} and was killed", f"killed at the wall-clock limit{limit}"
    if end.killed_by_parent:
        return Status.ERROR, f"stage {stage} was killed by the evaluator: {end.reason}", f"killed ({end.reason})"
    if rc >= 0:
        return Status.ERROR, f"the program ended the process (exit code {rc}) before stage {stage} reported", f"exit code {rc}"
    sig = -rc
    name = signal_name(sig)
    described = f"signal {name}"
    oom_marker = any(m in end.stderr for m in OOM_MARKERS)
    limit = end.memory_limit_bytes
    peak = f"peak resident {end.peak_rss_bytes / 2**30:.2f} GiB"
    near_limit = limit is not None and end.peak_rss_bytes >= limit // 2
    if sig == signal.SIGXCPU:
        return Status.TIMEOUT, f"stage {stage} exceeded its CPU-time limit (SIGXCPU)", described
    if sig in (signal.SIGSEGV, signal.SIGBUS) and (limit is not None or oom_marker):
        where = f"under the {limit / 2**30:.3g} GiB address-space limit" if limit else "after an allocation failure"
        return Status.OUT_OF_MEMORY, f"stage {stage} crashed with {name} {where} ({peak}): treated as out of memory", described
    if sig in (signal.SIGABRT, signal.SIGKILL) and (oom_marker or near_limit):
        return Status.OUT_OF_MEMORY, f"stage {stage} was killed by {name} after running out of memory ({peak})", described
    return Status.ERROR, f"stage {stage} was killed by {name} (not by the evaluator)", described
