"""(1) Propose with a language model: prompt -> answers -> programs, whatever the endpoint does.

``LLMProposer.propose`` draws one model of the ensemble for the request (so
that every child of a proposal has one proposer, ``llm:<model>``), sends the
prompt ``children_per_prompt`` times concurrently, and turns each answer into
a program: strip the reasoning, apply the SEARCH/REPLACE blocks or whole
blocks to the best parent (``search.diffs``), run the static stage
(``evaluator.static.check``). When the diff does not apply or the static stage
refuses the program, the model gets one repair round with the error message.
Children equal (in normal form) to ``request.seen`` or to each other are
dropped. Every HTTP attempt becomes a ``ProposerCall``: its outcome is ``ok``
(it gave a program), a transport failure (``timeout``, ``connection``,
``http_429`` ...; see ``search.llm``), or what was wrong with the answer:

- ``length``: cut off at ``max_tokens``; ``empty``; ``content_filter``; ``bad_response``;
- ``no_code``: no SEARCH/REPLACE, no evolve block, no code;
- ``diff_failed``: the diff does not apply, or changes what may not change (repaired once);
- ``invalid``: the static stage refuses the program (repaired once);
- ``unchanged``: the program is the parent's; ``duplicate``: already seen or a sibling's twin;
- ``unavailable``: the endpoint is down (no request made; the fallback proposed);
- ``budget``: the token or cost budget is spent (recorded once).

Robustness. A circuit breaker per model, and one for the endpoint, opens after
``breaker_failures`` consecutive requests that got no answer (connection
errors count for the endpoint; timeouts, HTTP errors and malformed bodies for
the model). While open the model is not drawn; when no model can be drawn the
fallback proposer (the built-in mutator) proposes and ``Proposal.message``
says so. After the cool-down one proposal probes again; a failed probe doubles
the cool-down (up to ``breaker_max_cooldown_s``). A proposal that yields no
child at all is also filled by the fallback (``fallback_when_empty``), so a
campaign never stalls on a bad endpoint or a bad model.

Time. One proposal takes at most two calls' hard deadlines (answer and repair,
``LLMConfig.deadline``), plus queueing when ``children_per_prompt`` exceeds
``concurrency``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from db.rows import ProposerCall
from search import diffs, programs
from search.breaker import Breaker
from search.llm import Attempt, ChatClient, LLMConfig, Message, ModelChoice, OpenAIChat, draw_model
from search.mutate import Child
from search.prompt import DIVIDER, REPLACE, SEARCH, Parent
from search.propose import Proposal, ProposalRequest, Proposer, prompt_for

REPAIRABLE = frozenset({"diff_failed", "invalid"})
ON_BUDGET = ("mutator", "stop")


@dataclasses.dataclass(frozen=True)
class ProposerConfig:
    """The language-model proposer's settings (``search.proposer_table`` reads them from the spec).

    Attributes:
      llm: the endpoint and the ensemble.
      children_per_prompt: answers asked for per prompt; None: the request's ``n_children``.
      concurrency: requests in flight at once (for this proposer, across threads).
      repair: give a failed diff or static check one repair round.
      price_in, price_out: price per million input and output tokens (None: cost not recorded).
      token_budget: total tokens (in + out) after which the model is not asked again.
      cost_budget: total cost after which the model is not asked again.
      on_budget: ``mutator`` (the fallback proposes from then on) or ``stop`` (proposals come back
        empty and ``LLMProposer.exhausted`` is true).
      breaker_failures: consecutive unanswered requests that open a breaker.
      breaker_cooldown_s: how long a breaker stays open before a probe.
      breaker_max_cooldown_s: the longest cool-down (it doubles after each failed probe); None: 15 minutes,
        or ``breaker_cooldown_s`` if that is longer.
      fallback_when_empty: when the model yields no child, the fallback proposes for that request.
    """

    llm: LLMConfig
    children_per_prompt: int | None = None
    concurrency: int = 4
    repair: bool = True
    price_in: float | None = None
    price_out: float | None = None
    token_budget: int | None = None
    cost_budget: float | None = None
    on_budget: str = "mutator"
    breaker_failures: int = 3
    breaker_cooldown_s: float = 60.0
    breaker_max_cooldown_s: float | None = None
    fallback_when_empty: bool = True

    def __post_init__(self):
        if self.children_per_prompt is not None and self.children_per_prompt < 1:
            raise ValueError(f"children_per_prompt must be 1 or more, got {self.children_per_prompt!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, got {self.concurrency!r}")
        for name in ("price_in", "price_out", "token_budget", "cost_budget"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.on_budget not in ON_BUDGET:
            raise ValueError(f"on_budget must be one of {ON_BUDGET}, got {self.on_budget!r}")
        if self.breaker_failures < 1:
            raise ValueError(f"breaker_failures must be 1 or more, got {self.breaker_failures!r}")
        if not 0 < self.breaker_cooldown_s <= self.max_cooldown:
            raise ValueError(
                f"breaker cool-downs must satisfy 0 < breaker_cooldown_s <= breaker_max_cooldown_s, "
                f"got {self.breaker_cooldown_s!r} and {self.breaker_max_cooldown_s!r}"
            )

    @property
    def max_cooldown(self) -> float:
        if self.breaker_max_cooldown_s is not None:
            return self.breaker_max_cooldown_s
        return max(900.0, self.breaker_cooldown_s)

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        """The price of a call, when the spec gives prices."""
        if self.price_in is None and self.price_out is None:
            return None
        return (tokens_in * (self.price_in or 0.0) + tokens_out * (self.price_out or 0.0)) / 1e6


# ----------------------------------------------------------------------------- the proposer


@dataclasses.dataclass
class _Sample:
    """One answer's conversation: its calls and the program it gave, if any."""

    calls: list[ProposerCall]
    child: Child | None = None


@dataclasses.dataclass
class Ledger:
    """What the proposer has spent and what it got (``LLMProposer.stats``)."""

    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    requests: int = 0  # HTTP attempts
    programs: int = 0
    proposals: int = 0
    fallback_proposals: int = 0


class LLMProposer:
    """Children from a language model, with the fallback proposer when it cannot help.

    Args:
      config: the settings.
      fallback: proposes when the endpoint is down, the budget is spent, or no answer was usable.
      client: the chat client; default ``OpenAIChat(config.llm)``.
      clock: monotonic seconds, for the breakers.
    """

    def __init__(
        self,
        config: ProposerConfig,
        fallback: Proposer,
        client: ChatClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.fallback = fallback
        self.client = client if client is not None else OpenAIChat(config.llm)
        self.clock = clock
        self.ledger = Ledger()
        self.exhausted = False
        self._budget_recorded = False
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(config.concurrency, thread_name_prefix="llm")
        breaker = lambda: Breaker(config.breaker_failures, config.breaker_cooldown_s, config.max_cooldown)  # noqa: E731
        self._endpoint = breaker()
        self._models = {m.name: breaker() for m in config.llm.models}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def __enter__(self) -> LLMProposer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ propose
    def propose(self, request: ProposalRequest, rng: np.random.Generator) -> Proposal:
        """Children for ``request``; never raises for anything the endpoint or the model does."""
        if spent := self._budget_spent():
            return self._over_budget(request, rng, spent)
        model, why = self._draw(rng)
        if model is None:
            return self._unavailable(request, rng, why)
        prompt = prompt_for(request)
        base = best_parent(request.parents)
        messages = [{"role": "system", "content": self.config.llm.system_prompt}, {"role": "user", "content": prompt}]
        n = self.config.children_per_prompt or request.n_children
        seeds = rng.integers(0, 2**63 - 1, size=n)
        futures = [self._pool.submit(self._sample, model, messages, base, request, int(s)) for s in seeds]
        samples = [f.result() for f in futures]
        children, calls = _deduplicate(samples, request.seen)
        self._tally(calls, fallback=False)
        name = f"llm:{model}"
        summary = _summary(model, calls, len(children))
        if children or not self.config.fallback_when_empty:
            return Proposal(children=children, proposer=name, prompt=prompt, calls=calls, message=summary)
        backup = self.fallback.propose(request, rng)
        self._tally([], fallback=True)
        note = f"{summary}; no usable answer, the {backup.proposer} proposed instead"
        return dataclasses.replace(backup, prompt=prompt, calls=calls + list(backup.calls), message=_join(note, backup.message))

    def stats(self) -> dict[str, Any]:
        """Figures for a report: requests, outcomes, tokens, cost, programs, programs per request."""
        with self._lock:
            led = self.ledger
            return {
                "requests": led.requests,
                "outcomes": dict(led.outcomes),
                "tokens_in": led.tokens_in,
                "tokens_out": led.tokens_out,
                "cost": led.cost if self._priced else None,
                "programs": led.programs,
                "programs_per_request": led.programs / led.requests if led.requests else 0.0,
                "proposals": led.proposals,
                "fallback_proposals": led.fallback_proposals,
            }

    @property
    def _priced(self) -> bool:
        return self.config.price_in is not None or self.config.price_out is not None

    # ------------------------------------------------------------------ one answer (runs in the pool)
    def _sample(self, model: str, messages: list[Message], base: Parent, request: ProposalRequest, seed: int) -> _Sample:
        rng = np.random.default_rng(seed)
        calls, final = self._ask(messages, model, rng)
        if not final.ok:
            return _Sample(calls + [self._call(final)])
        child, outcome, message = make_child(base, final.text, request.evolve)
        if outcome not in REPAIRABLE or not self.config.repair or self._budget_spent():
            return _Sample(calls + [self._call(final, outcome, message, child)], child)
        calls.append(self._call(final, outcome, message))
        repair = [
            *messages,
            {"role": "assistant", "content": diffs.strip_reasoning(final.text)},
            {"role": "user", "content": repair_prompt(message, request)},
        ]
        more, final = self._ask(repair, model, rng)
        calls += more
        if not final.ok:
            return _Sample(calls + [self._call(final, note="repair")])
        child, outcome, message = make_child(base, final.text, request.evolve)
        return _Sample(calls + [self._call(final, outcome, message, child, note="repair")], child)

    def _ask(self, messages: list[Message], model: str, rng: np.random.Generator) -> tuple[list[ProposerCall], Attempt]:
        """One call with its retries: the retried attempts as records, and the final attempt."""
        attempts = self.client.complete(messages, model, rng)
        with self._lock:
            now = self.clock()
            for a in attempts:
                self.ledger.tokens_in += a.tokens_in
                self.ledger.tokens_out += a.tokens_out
                self.ledger.cost += self.config.cost(a.tokens_in, a.tokens_out) or 0.0
            final = attempts[-1]
            self._judge(self._models[model], final, now)
        return [self._call(a) for a in attempts[:-1]], final

    def _judge(self, model: Breaker, final: Attempt, now: float) -> None:
        """Feed the breakers: whose fault a call's last attempt was (every probe it was is settled)."""
        endpoint, error = self._endpoint, f"{final.outcome}: {final.message}"
        if final.answered:
            endpoint.success()
            model.success()
        elif final.outcome == "connection":  # nothing listens: the endpoint is down, whatever the model
            endpoint.failure(now, error)
            model.release()
        elif final.outcome in ("timeout", "cancelled"):  # no verdict on the endpoint
            endpoint.release()
            if final.outcome == "timeout":
                model.failure(now, error)
            else:
                model.release()
        else:  # the server answered over HTTP, with an error or a malformed body: this model's fault
            endpoint.success()
            model.failure(now, error)

    def _call(
        self, a: Attempt, outcome: str | None = None, message: str = "", child: Child | None = None, note: str = ""
    ) -> ProposerCall:
        estimated = "usage estimated (the endpoint reported none)" if a.usage_estimated and message else ""
        text = _join(note, message or a.message, estimated)
        return ProposerCall(
            model=a.model,
            tokens_in=a.tokens_in,
            tokens_out=a.tokens_out,
            latency_s=a.latency_s,
            outcome=outcome or a.outcome,
            cost=self.config.cost(a.tokens_in, a.tokens_out),
            n_programs=int(child is not None),
            message=text,
        )

    # ------------------------------------------------------------------ models, outages, budgets
    def _draw(self, rng: np.random.Generator) -> tuple[str | None, str]:
        with self._lock:
            now = self.clock()
            if not self._endpoint.allows(now):
                return None, self._down("the endpoint", self._endpoint, now)
            up = [m for m in self.config.llm.models if self._models[m.name].allows(now)]
            if not up:
                why = "; ".join(self._down(name, b, now) for name, b in self._models.items())
                return None, why
            choice: ModelChoice = draw_model(up, rng)
            self._endpoint.claim(now)
            self._models[choice.name].claim(now)
            return choice.name, ""

    @staticmethod
    def _down(name: str, breaker: Breaker, now: float) -> str:
        wait = max(0.0, (breaker.open_until or now) - now)
        return f"{name} is down ({breaker.last_error}); next try in {wait:.0f} s"

    def _unavailable(self, request: ProposalRequest, rng: np.random.Generator, why: str) -> Proposal:
        backup = self.fallback.propose(request, rng)
        names = ",".join(self.config.llm.model_names)
        call = ProposerCall(model=names, outcome="unavailable", message=why)
        self._tally([call], fallback=True)
        message = _join(f"LLM unavailable: {why}; the {backup.proposer} proposes", backup.message)
        return dataclasses.replace(backup, calls=[call, *backup.calls], message=message)

    def _budget_spent(self) -> str | None:
        with self._lock:
            tokens = self.ledger.tokens_in + self.ledger.tokens_out
            if self.config.token_budget is not None and tokens >= self.config.token_budget:
                return f"token budget spent ({tokens} of {self.config.token_budget} tokens)"
            if self.config.cost_budget is not None and self.ledger.cost >= self.config.cost_budget:
                return f"cost budget spent ({self.ledger.cost:.4g} of {self.config.cost_budget:g})"
        return None

    def _over_budget(self, request: ProposalRequest, rng: np.random.Generator, spent: str) -> Proposal:
        with self._lock:
            first, self._budget_recorded = not self._budget_recorded, True
        names = ",".join(self.config.llm.model_names)
        calls = [ProposerCall(model=names, outcome="budget", message=spent)] if first else []
        if self.config.on_budget == "stop":
            self.exhausted = True
            self._tally(calls, fallback=False)
            return Proposal(children=[], proposer="llm", calls=calls, message=f"LLM {spent}; proposing stopped")
        backup = self.fallback.propose(request, rng)
        self._tally(calls, fallback=True)
        message = _join(f"LLM {spent}; the {backup.proposer} proposes", backup.message)
        return dataclasses.replace(backup, calls=calls + list(backup.calls), message=message)

    def _tally(self, calls: Sequence[ProposerCall], fallback: bool) -> None:
        with self._lock:
            led = self.ledger
            led.outcomes.update(c.outcome for c in calls)
            led.requests += sum(c.outcome not in ("unavailable", "budget") for c in calls)
            led.programs += sum(c.n_programs for c in calls)
            led.proposals += not fallback
            led.fallback_proposals += fallback


# ----------------------------------------------------------------------------- answers -> programs (pure)


def best_parent(parents: Sequence[Parent]) -> Parent:
    """The program the prompt asks to improve: the last one ``search.prompt.build_prompt`` shows.

    build_prompt sorts by descending score with unscored parents first (a stable sort), and names
    the last one "the best program"; diffs apply to it.
    """
    if not parents:
        raise ValueError("a proposal needs at least one parent program")
    return sorted(parents, key=lambda p: -math.inf if p.score is None else -p.score)[-1]


def make_child(base: Parent, answer: str, evolve: Sequence[str]) -> tuple[Child | None, str, str]:
    """The program an answer makes of ``base``, or None with the outcome and the message for the model."""
    try:
        applied = diffs.apply_answer(base.source, answer, evolve)
    except diffs.NoCode as e:
        return None, "no_code", str(e)
    except diffs.Unchanged as e:
        return None, "unchanged", str(e)
    except diffs.DiffError as e:
        return None, "diff_failed", str(e)
    except (ValueError, RecursionError, MemoryError) as e:  # a pathological answer: a failure, never a crash
        return None, "bad_answer", f"{type(e).__name__}: {e}"
    from evaluator.static import check  # the evaluator package is imported lazily, as cli commands do

    report = check(applied.source)
    if not report.ok:
        return None, "invalid", f"the program fails the static check: {report.message}"
    note = applied.note or f"changed the {', '.join(applied.changed)} block"
    return Child(report.source, (base.program_id,), note, programs.source_hash(report.source)), "ok", ""


def repair_prompt(error: str, request: ProposalRequest) -> str:
    """The repair round's message: what went wrong and what form the answer must take."""
    return (
        f"Your change could not be used: {error}\n\n"
        "Fix it. Answer again with SEARCH/REPLACE blocks whose SEARCH part is copied exactly from the best\n"
        f"program ({SEARCH} / {DIVIDER} / {REPLACE}), or with the whole evolve block(s)\n"
        f"({', '.join(request.evolve)}) from `# EVOLVE-BLOCK-START <name>` to `# EVOLVE-BLOCK-END` in a\n"
        "```python fence. Change only the code inside the evolve blocks.\n"
    )


def _deduplicate(samples: Sequence[_Sample], seen: Any) -> tuple[list[Child], list[ProposerCall]]:
    """Children not in ``seen`` and not twins of an earlier sibling; their calls marked ``duplicate``."""
    hashes = set(seen)
    children, calls = [], []
    for sample in samples:
        child = sample.child
        if child is not None and child.source_hash in hashes:
            last = sample.calls[-1]
            message = _join(last.message, "the same program as one already proposed")
            sample.calls[-1] = dataclasses.replace(last, outcome="duplicate", n_programs=0, message=message)
            child = None
        if child is not None:
            hashes.add(child.source_hash)
            children.append(child)
        calls += sample.calls
    return children, calls


def _summary(model: str, calls: Sequence[ProposerCall], n_children: int) -> str:
    failures = collections.Counter(c.outcome for c in calls if c.outcome != "ok")
    detail = ", ".join(f"{k} {v}" for k, v in sorted(failures.items()))
    return f"llm:{model}: {n_children} program(s) from {len(calls)} request(s)" + (f" ({detail})" if detail else "")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
