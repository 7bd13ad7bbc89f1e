"""The plain data that crosses the sandbox boundary: a Job in, one message per stage out.

The parent writes one JSON line (a ``Job``) to the worker's stdin. The worker
answers on a separate pipe (file descriptor 3), one JSON line per message:
``{"event": "ready"}`` once its imports are done, then ``{"event": "stage",
...}`` for each stage it ran, then ``{"event": "done"}``. After each stage
message the worker waits for a line on stdin before starting the next stage,
so the parent can attribute stdout and stderr to the stage that wrote them, and
can stop the job there instead (a twin's base run, ``evaluator.twins``). Anything the
candidate prints goes to stdout and stderr, which the parent only keeps the
tails of, so a program's output can never be mistaken for a result.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

CONTROL_FD = 3

Curve = Sequence[Sequence[float]]  # [[step, tokens, train_loss], ...] as train_run returns it


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage for the worker to run.

    Attributes:
      stage: the name results carry: ``smoke``, ``base`` or ``scaling``.
      kind: ``smoke`` (``runner.smoke``) or ``train`` (``runner.train_run``).
      timeout_s: wall-clock limit for this stage, counted from the end of the previous one.
      n_params: N for a training stage.
      n_tokens: D for a training stage.
      seed: training seed.
      early_stopping: ``evaluator.early_stopping.EarlyStopping.to_dict()`` plus the
        incumbents' ``curves`` at this (N, D); None trains to the end.
      seq_len: context length for a training stage (0: the runner's default).
    """

    stage: str
    kind: str
    timeout_s: float
    n_params: int = 0
    n_tokens: int = 0
    seed: int = 0
    early_stopping: Mapping[str, Any] | None = None
    seq_len: int = 0

    def __post_init__(self):
        if self.kind not in ("smoke", "train"):
            raise ValueError(f"stage kind must be 'smoke' or 'train', got {self.kind!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s!r}")
        if self.kind == "train" and (self.n_params <= 0 or self.n_tokens <= 0):
            raise ValueError(f"a train stage needs positive n_params and n_tokens, got {self.n_params}, {self.n_tokens}")


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything one sandboxed worker needs; the worker runs the stages in order
    and stops at the first that is not ok.

    Attributes:
      source: the candidate program.
      stages: what to run.
      known_fingerprints: fingerprint -> id of programs already evaluated; a smoke
        stage whose fingerprint is here ends the job as ``duplicate``.
      name: a label for messages and tracebacks.
    """

    source: str
    stages: tuple[StageSpec, ...]
    known_fingerprints: Mapping[str, str] = dataclasses.field(default_factory=dict)
    name: str = "candidate"

    def __post_init__(self):
        if not self.stages:
            raise ValueError("a job needs at least one stage")

    @property
    def total_timeout_s(self) -> float:
        return sum(s.timeout_s for s in self.stages)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)
        d["stages"] = tuple(StageSpec(**s) for s in d["stages"])
        return cls(**d)


def fingerprint_map(known: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Accept fingerprints as a mapping to program ids or as a plain collection."""
    if known is None:
        return {}
    if isinstance(known, Mapping):
        return {str(k): str(v) for k, v in known.items()}
    return {str(k): str(k) for k in known}


def encode(message: Mapping[str, Any]) -> bytes:
    return (json.dumps(message, default=repr) + "\n").encode()
