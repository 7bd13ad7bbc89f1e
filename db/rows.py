"""Typed records of a campaign database: frozen dataclasses and their row dicts.

Every table has one record type here. ``to_row`` turns a record into the dict
that sqlite-utils writes, ``from_row`` turns a row back into the record, and the
two are inverse for every value a record may hold, with one exception that is
part of the contract: non-finite numbers (a diverged run's NaN loss) are stored
as NULL, because SQLite reads NaN back as NULL anyway and JSON has no NaN.

Times are seconds since the epoch (floats, from the clock the writer is given).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from typing import Any


class Status(enum.StrEnum):
    """How an evaluation ended (DESIGN.md, "The evaluation cascade")."""

    OK = "ok"
    INVALID = "invalid"  # refused by the static stage or broke the contract
    ERROR = "error"  # raised at run time
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    DIVERGED = "diverged"  # non-finite or exploding loss
    DUPLICATE = "duplicate"  # same fingerprint as a program already evaluated
    PRUNED = "pruned"  # stopped early: clearly behind the incumbents

    @property
    def is_failure(self) -> bool:
        return self is not Status.OK


class State(enum.StrEnum):
    """Where a run is in its life: created when planned, completed when it returns."""

    PLANNED = "planned"
    RUNNING = "running"
    DONE = "done"

    def is_finished(self) -> bool:
        return self is State.DONE


class Stage(enum.IntEnum):
    """The cascade's stages; a program's ``stage`` is the last one it entered."""

    STATIC = 0
    SMOKE = 1
    BASE = 2
    SCALING = 3


# ----------------------------------------------------------------------------- codecs


def _finite(x: Any) -> Any:
    """Non-finite floats become None, recursively through lists and dicts."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _dumps(x: Any) -> str:
    return json.dumps(_finite(x), sort_keys=True, allow_nan=False)


def _tuples(x: Any) -> Any:
    """JSON arrays back to tuples, recursively (records hold tuples, not lists)."""
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return x


def _json(**kwargs) -> dataclasses.Field:
    """A field stored as JSON text."""
    return dataclasses.field(metadata={"json": True}, **kwargs)


def to_row(record: Any) -> dict[str, Any]:
    """The row dict for ``record``: JSON fields encoded, enums as their values."""
    row = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.metadata.get("json"):
            value = _dumps(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        row[field.name] = value
    return row


def from_row(cls: type, row: Mapping[str, Any]):
    """The record of type ``cls`` stored in ``row`` (extra columns are ignored)."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in row:
            continue
        value = row[field.name]
        if field.metadata.get("json") and value is not None:
            value = _tuples(json.loads(value))
        elif value is not None and field.name in _ENUM_FIELDS:
            value = _ENUM_FIELDS[field.name](value)
        kwargs[field.name] = value
    return cls(**kwargs)


_ENUM_FIELDS = {"status": Status, "state": State}

# ----------------------------------------------------------------------------- records

Interval = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Campaign:
    """The campaign this file holds: one row.

    Attributes:
      name: a label for people.
      spec_toml: the spec exactly as the user wrote it.
      spec: the parsed spec (what the run used).
      seed: the campaign seed every random generator is derived from.
      created: when the campaign was created.
      id: always 1.
    """

    name: str
    spec_toml: str
    spec: dict = _json(default_factory=dict)
    seed: int = 0
    created: float | None = None
    id: int = 1


@dataclasses.dataclass(frozen=True)
class Program:
    """A candidate program and where it came from.

    Attributes:
      source: the whole program file.
      blocks: its evolved blocks, name -> text.
      parent_ids: the programs it was derived from (empty for a seed).
      island: the island whose prompt produced it (None: a seed, on every island).
      proposer: ``"seed"``, ``"mutator"`` or the language model's name.
      prompt_id: the prompt it answered, if any.
      source_hash: hash of the normalised source (comments and layout removed).
      note: what the proposer says it changed (the mutator's edit list).
      fingerprint: the smoke stage's fingerprint of the traced computation.
      status: the cascade's outcome; None while the evaluation is pending.
      message: why it failed, for the next prompt (empty when ok).
      stage: the last cascade stage it entered (``Stage``).
      created: when it was recorded.
      ended: when its outcome was recorded.
      id: assigned by the database, in commit order.
    """

    source: str
    blocks: dict = _json(default_factory=dict)
    parent_ids: tuple[int, ...] = _json(default=())
    island: int | None = None
    proposer: str = "seed"
    prompt_id: int | None = None
    source_hash: str = ""
    note: str = ""
    fingerprint: str | None = None
    status: Status | None = None
    message: str = ""
    stage: int = 0
    created: float | None = None
    ended: float | None = None
    id: int | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    """One evaluation of a program at one (N, D): planned, then running, then done.

    Attributes:
      program_id: the program evaluated.
      stage: the cascade stage this run belongs to (``Stage``).
      n_target: the N that was asked for (non-embedding parameters).
      d_target: the D that was asked for (training tokens).
      seed: the run's seed.
      reason: why it was planned (``"base"``, the acquisition value, ...).
      state: planned, running or done.
      status: the outcome once done.
      n_params: N measured from the initialised params.
      n_active_params: parameters active per token (differs from N for a mixture of experts).
      n_tokens: D actually trained (whole steps).
      flops_analytic: C from 6ND plus the attention term.
      flops_xla: C from the compiled step's cost analysis, where XLA gives it.
      final_loss: validation loss in nats per byte.
      loss_curve: (tokens seen, loss) pairs.
      timings: seconds per phase (compile, train, eval, ...).
      metrics: anything else the evaluator measured.
      jax_version, xla_version, device, isolation: where and how it ran.
      message: the failure message (or a note).
      planned_at, started_at, finished_at: when it changed state.
      id: assigned by the database.
    """

    program_id: int
    stage: int = int(Stage.BASE)
    n_target: float | None = None
    d_target: float | None = None
    seed: int = 0
    reason: str = ""
    state: State = State.PLANNED
    status: Status | None = None
    n_params: int | None = None
    n_active_params: int | None = None
    n_tokens: int | None = None
    flops_analytic: float | None = None
    flops_xla: float | None = None
    final_loss: float | None = None
    loss_curve: tuple[tuple[float, float], ...] = _json(default=())
    timings: dict = _json(default_factory=dict)
    metrics: dict = _json(default_factory=dict)
    jax_version: str | None = None
    xla_version: str | None = None
    device: str | None = None
    isolation: str | None = None
    message: str = ""
    planned_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    id: int | None = None

    @property
    def flops(self) -> float | None:
        """C as measured where XLA gave it, else the analytic count."""
        return self.flops_xla if self.flops_xla is not None else self.flops_analytic


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What an evaluation returns: the fields ``record.finish_run`` fills in."""

    status: Status
    n_params: int | None = None
    n_active_params: int | None = None
    n_tokens: int | None = None
    flops_analytic: float | None = None
    flops_xla: float | None = None
    final_loss: float | None = None
    loss_curve: tuple[tuple[float, float], ...] = ()
    timings: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    jax_version: str | None = None
    xla_version: str | None = None
    device: str | None = None
    isolation: str | None = None
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Fit:
    """A scaling-law fit, for one candidate or pooled over the campaign.

    Attributes:
      program_id: the candidate; None for the pooled fit.
      kind: ``"candidate"`` or ``"pooled"``.
      law: the law's name (``"chinchilla"``: E + A/N^alpha + B/D^beta).
      params: point estimates by name.
      intervals: name -> (low, high), the uncertainty of each parameter.
      c_star: the target compute the prediction is for.
      loss_at_c_star: predicted loss at C* (compute-optimal N and D for this law).
      loss_low, loss_high: its interval.
      n_star, d_star: the allocation behind the prediction.
      prob_best: probability that this candidate is the best at C*.
      expected_regret: how much higher its loss at C* is expected to be than the best candidate's, as a
        fraction (0.003: 0.3%); what picking it now is expected to cost. None in files from before it.
      n_runs: runs the fit used.
      round: fits recorded together share a round (``record.record_fits`` assigns it).
      created: when it was recorded.
      id: assigned by the database.
    """

    program_id: int | None
    kind: str = "candidate"
    law: str = "chinchilla"
    params: dict = _json(default_factory=dict)
    intervals: dict = _json(default_factory=dict)
    c_star: float | None = None
    loss_at_c_star: float | None = None
    loss_low: float | None = None
    loss_high: float | None = None
    n_star: float | None = None
    d_star: float | None = None
    prob_best: float | None = None
    expected_regret: float | None = None
    n_runs: int = 0
    round: int | None = None
    created: float | None = None
    id: int | None = None


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A prompt shown to a proposer.

    Attributes:
      text: the prompt.
      island: the island it was built from.
      parent_ids: the programs it shows, in the order shown.
      created, id: as elsewhere.
    """

    text: str
    island: int | None = None
    parent_ids: tuple[int, ...] = _json(default=())
    created: float | None = None
    id: int | None = None


@dataclasses.dataclass(frozen=True)
class ProposerCall:
    """One call to a proposer (a language model, or the built-in mutator).

    Attributes:
      model: the model's name.
      prompt_id: the prompt sent.
      tokens_in, tokens_out: usage as the endpoint reported it.
      latency_s: wall time of the call.
      outcome: ``"ok"`` or what went wrong (``"timeout"``, ``"length"``, ``"http_429"``, ...).
      cost: in the spec's currency, when it gives prices.
      n_programs: programs accepted from the answer.
      message: error text or a note.
      created, id: as elsewhere.
    """

    model: str
    prompt_id: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float | None = None
    outcome: str = "ok"
    cost: float | None = None
    n_programs: int = 0
    message: str = ""
    created: float | None = None
    id: int | None = None


@dataclasses.dataclass(frozen=True)
class Registration:
    """One entry of the programs database's log (``search.population``).

    Replaying the registrations in ``seq`` order rebuilds the islands exactly.

    Attributes:
      program_id: the program registered (or re-scored).
      island: its island; None for every island (a seed).
      score: lower is better (predicted loss at C*, or the base loss on that scale).
      stage: the cascade stage it reached.
      length: its size, for the preference for short programs.
      created: when it was recorded.
      seq: position in the log, assigned by the database.
    """

    program_id: int
    island: int | None
    score: float
    stage: int
    length: int
    created: float | None = None
    seq: int | None = None


@dataclasses.dataclass(frozen=True)
class Failure:
    """A failed program or run, as the next prompt shows it (read-only view)."""

    program_id: int
    stage: int
    status: Status
    message: str
    run_id: int | None = None
    at: float | None = None


@dataclasses.dataclass(frozen=True)
class Step:
    """One search step: the island and parents sampled, who proposed, how many children.

    Attributes:
      island: the island sampled (None for the seed step).
      parent_ids: the parents shown to the proposer.
      proposer: ``mutator``, ``llm:<model>`` or ``seed``.
      prompt_id: the prompt sent, if a language model was asked.
      n_children: programs recorded from this step.
      message: a note (an endpoint outage, say).
      created, id: as elsewhere.
    """

    proposer: str
    island: int | None = None
    parent_ids: tuple[int, ...] = _json(default=())
    prompt_id: int | None = None
    n_children: int = 0
    message: str = ""
    created: float | None = None
    id: int | None = None


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One ``scalesearch run`` of the campaign: the spec it ran with, and what it changed.

    The campaign row keeps the spec the campaign was created with; a resume may change
    the settings opening.RESUMABLE names (budgets, workers, the proposer), so each
    invocation records its own, and ``status`` reads the newest.

    Attributes:
      spec_toml: the spec exactly as the user wrote it for this invocation.
      spec: the parsed spec.
      changes: "key: old -> new" for each setting that differs from the previous invocation's.
      created, id: as elsewhere (created: when the invocation started).
    """

    spec_toml: str
    spec: dict = _json(default_factory=dict)
    changes: tuple[str, ...] = _json(default=())
    created: float | None = None
    id: int | None = None
