"""(1) Propose: the proposer interface, and the built-in mutator behind it.

A proposer turns a request (an island's parents, recent failures, how many
children) into a ``Proposal``: distinct child programs, the prompt it used, and
one record per language-model call. The runner calls ``propose`` from a worker
thread so proposals overlap with evaluations; implementations must be
thread-safe and must return within their own timeouts, never raise for a bad
answer (a bad answer is a recorded failed call), and never block the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from db.rows import Failure, ProposerCall
from search.config import build_table
from search.mutate import DEFAULT_EDIT_WEIGHTS, Child, Mutator, MutatorConfig
from search.prompt import Parent, build_prompt


@dataclasses.dataclass(frozen=True)
class ProposalRequest:
    """What the runner asks for.

    Attributes:
      island: the island the parents come from.
      parents: worst first, best last (as ``Population.sample`` orders them).
      failures: recent failures, shown to a language model so it does not repeat them.
      n_children: how many distinct children are wanted (fewer may come back).
      seen: normalised source hashes already evaluated or queued; children must avoid them.
      evolve: the blocks the campaign evolves (``model``, ``strategy``).
      target_flops: C*, for the prompt.
    """

    island: int
    parents: Sequence[Parent]
    failures: Sequence[Failure] = ()
    n_children: int = 1
    seen: Collection[str] = frozenset()
    evolve: tuple[str, ...] = ("model", "strategy")
    target_flops: float | None = None


@dataclasses.dataclass(frozen=True)
class Proposal:
    """What a proposer returns.

    Attributes:
      children: distinct programs, none in ``request.seen``.
      proposer: who made them (``mutator``, or ``llm:<model>``), recorded per program.
      prompt: the prompt text sent to a language model, if any (recorded once).
      calls: one ``ProposerCall`` per language-model request (prompt_id is filled by the runner).
      message: a note for the progress line (for instance an endpoint that is down).
    """

    children: list[Child]
    proposer: str
    prompt: str | None = None
    calls: list[ProposerCall] = dataclasses.field(default_factory=list)
    message: str = ""


class Proposer(Protocol):
    def propose(self, request: ProposalRequest, rng: np.random.Generator) -> Proposal: ...


@dataclasses.dataclass
class MutatorProposer:
    """The built-in mutator as a proposer: offline, deterministic given ``rng``."""

    config: MutatorConfig = MutatorConfig()

    def propose(self, request: ProposalRequest, rng: np.random.Generator) -> Proposal:
        mutator = Mutator(dataclasses.replace(self.config, evolve=tuple(request.evolve)))
        children = mutator.propose(list(request.parents), rng, request.seen, n=request.n_children)
        return Proposal(children=children, proposer="mutator")


def mutator_config(section: Mapping[str, Any]) -> MutatorConfig:
    """The mutator's config from a ``[proposer]`` table: its own keys, or a ``mutator`` sub-table.

    ``edit_weights`` is a table ``{learning_rate = 4, moe_experts = 0}`` laid over
    ``DEFAULT_EDIT_WEIGHTS``; the blocks it may change come from the campaign's ``evolve``.

    Raises:
      ValueError: a value of the wrong type, an unknown edit, a bad weight.
    """
    fields = {f.name for f in dataclasses.fields(MutatorConfig)} - {"evolve"}
    given = {k: v for k, v in section.items() if k in fields}
    sub = section.get("mutator", {})
    if not isinstance(sub, Mapping):
        raise ValueError(f"[proposer] mutator must be a table of the mutator's settings, got {sub!r}")
    given.update(sub)
    if "evolve" in given:
        raise ValueError("[proposer.mutator] evolve is the campaign's: set it in [campaign]")
    if "edit_weights" in given:
        if not isinstance(given["edit_weights"], Mapping):
            raise ValueError(f"[proposer] edit_weights must be a table of edit = weight, got {given['edit_weights']!r}")
        given["edit_weights"] = tuple({**dict(DEFAULT_EDIT_WEIGHTS), **given["edit_weights"]}.items())
    config = build_table(MutatorConfig, given, "proposer.mutator")
    Mutator(config)  # validates the edit weights now, not at the first proposal
    return config


def prompt_for(request: ProposalRequest) -> str:
    """The prompt a language-model proposer sends for ``request``."""
    return build_prompt(request.parents, request.failures, evolve=request.evolve, target_flops=request.target_flops)
