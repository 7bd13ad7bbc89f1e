"""The search loop: propose -> sandbox -> train -> fit -> choose -> record, and resume.

The loop is a state machine over the campaign database, so that killing it at
any moment loses nothing committed and a restart carries on where it stopped:

1. programs recorded but not yet evaluated (a step's children, or work that was
   in flight when the process died) go through the cascade; each candidate's
   outcome and base run are committed in one transaction, in program order;
2. scaling runs planned but not finished are run and committed, in run order;
3. when finished runs changed since the last fit, every candidate is refitted
   jointly, re-scored, and active learning plans the next scaling runs (one
   transaction);
4. otherwise a new step: sample an island and parents, ask the proposer for
   children, and commit the step with its children (one transaction).

Every decision draws from a generator seeded by (campaign seed, what is being
decided, its index), and results are committed in a fixed order whatever order
they finish in, so a campaign replays exactly from its seed, killed or not.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sqlite_utils

from db import query, record
from db.rows import Program, Prompt, Registration, Run, Stage, Status, Step
from search import judge
from search.config import CampaignSpec
from search.evaluate import Evaluator, final_stage, run_result
from search.opening import CampaignError
from search.population import Population
from search.programs import blocks, evolved_length, source_hash
from search.prompt import Parent
from search.propose import Proposer, ProposalRequest

INCUMBENTS = 3
MAX_EMPTY_STEPS = 20
Event = Callable[[str, dict[str, Any]], None]


class NoParents(CampaignError):
    """No program has passed its base run, so there is nothing to propose from: the seed failed."""


def rng_for(seed: int, *purpose: int | str) -> np.random.Generator:
    """The generator of one decision: a pure function of the campaign seed and the decision."""
    words = [seed] + [p if isinstance(p, int) else int.from_bytes(p.encode()[:8].ljust(8, b"\0"), "little") for p in purpose]
    return np.random.default_rng(words)


@dataclasses.dataclass
class Loop:
    """One campaign's loop. ``run()`` until a budget is spent or ``stop()`` is called.

    Args:
      spec: the campaign spec.
      db: its database (created by ``search.opening.open_campaign``).
      evaluator: the sandbox (or a simulated one).
      proposer: the language model or the mutator.
      on_event: progress callback ``(kind, info)``.
      clock: wall clock for records; monotonic: for the wall-time budget.
    """

    spec: CampaignSpec
    db: sqlite_utils.Database
    evaluator: Evaluator
    proposer: Proposer
    on_event: Event = lambda kind, info: None
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic

    def __post_init__(self):
        self.population = Population.replay(query.registrations(self.db), self.spec.population)
        self._stop = threading.Event()
        self._started = self.monotonic()
        self._fitted_runs = query.latest_pooled_runs(self.db)
        self._empty_steps = 0
        self.message = ""

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Stop soon: in-flight work is abandoned (and redone on resume); commits are whole."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def exhausted(self) -> str | None:
        """Why no new work may start, or None."""
        b, spent = self.spec.budget, query.spent(self.db)
        if b.candidates and spent.candidates >= b.candidates:
            return f"candidate budget reached ({spent.candidates} >= {b.candidates})"
        if b.proxy_flops and spent.flops >= b.proxy_flops:
            return f"proxy FLOP budget reached ({spent.flops:.3g} >= {b.proxy_flops:.3g})"
        if b.llm_tokens and spent.tokens_in + spent.tokens_out >= b.llm_tokens:
            return f"language-model token budget reached ({spent.tokens_in + spent.tokens_out} >= {b.llm_tokens})"
        if getattr(self.proposer, "exhausted", False):
            return "the proposer's token or cost budget is spent"
        return None

    def out_of_time(self) -> bool:
        hours = self.spec.budget.wall_hours
        return bool(hours) and self.monotonic() - self._started >= hours * 3600

    # ------------------------------------------------------------------ the state machine

    def run(self) -> str:
        """Work until done; returns why it stopped."""
        while True:
            if self.stopping:
                return "stopped on request; work in flight will be redone on resume"
            if self.out_of_time():
                if judge.ok_run_count(self.db) != self._fitted_runs:
                    self.refit(plan=False)  # the runs this invocation finished are ranked before it stops
                return "wall-time budget reached"
            if pending := query.pending_programs(self.db):
                self.evaluate_programs(pending)
            elif not self.population.entries:
                raise NoParents(self._no_parents())
            elif runs := query.pending_runs(self.db):
                self.execute_runs(runs)
            elif judge.ok_run_count(self.db) != self._fitted_runs:
                self.refit(plan=self.exhausted() is None)
            elif reason := self.exhausted():
                return reason
            elif self._empty_steps >= MAX_EMPTY_STEPS:
                return f"the proposer found nothing new in {MAX_EMPTY_STEPS} steps"
            else:
                self.propose_step()

    def _no_parents(self) -> str:
        seed = next((p for p in query.programs(self.db) if p.proposer == "seed"), None)
        why = f"it ended {seed.status}: {seed.message}" if seed and seed.status else "it has no result"
        return (f"the seed program (program {seed.id if seed else '?'}) did not pass its base run, so the search has no "
                f"parent; {why}. Check it with `scalesearch eval SEED.py`, then start again with a new database "
                f"(delete {self.spec.resolve(self.spec.database)}, or set [campaign] database to a new file)")

    def _wait(self, futures: Sequence[concurrent.futures.Future]):
        """Results in submission order; returns None if a stop was requested while waiting."""
        out = []
        for f in futures:
            while not f.done():
                if self.stopping:
                    return None
                concurrent.futures.wait([f], timeout=0.2)
            out.append(f.result())
        return out

    # ------------------------------------------------------------------ (2, 3) sandbox and train

    def evaluate_programs(self, pending: Sequence[Program]) -> None:
        known = query.fingerprints(self.db)
        curves = query.incumbent_curves(self.db, self._incumbents())
        futures = [
            self.evaluator.submit_candidate(p.source, known_fingerprints=known, incumbent_curves=curves, name=f"program {p.id}")
            for p in pending
        ]
        for program, future in zip(pending, futures):
            outcome = self._wait([future])
            if outcome is None:
                return
            self.record_outcome(program, outcome[0])

    def record_outcome(self, program: Program, outcome) -> None:
        results = outcome.results
        last = results[-1]
        status = Status(last.status.value)
        runs = []
        for r in results:
            if r.stage == "base":
                point = self.spec.proxies
                runs.append((Run(program_id=program.id, stage=int(Stage.BASE), n_target=point.base_n,
                                 d_target=point.base_d, seed=0, reason="base run"), run_result(r)))
        fingerprint = next((r.metrics.get("fingerprint") for r in results if r.stage == "smoke" and r.metrics), None)
        registrations = self._registration(program, status, runs)
        record.record_cascade(self.db, program.id, status=status, stage=final_stage(results),
                              message=last.message or (last.exception or ""), fingerprint=fingerprint,
                              runs=runs, registrations=registrations, clock=self.clock)
        for reg in registrations:
            self.population.register(reg.program_id, reg.island, reg.score, reg.stage, reg.length)
        self.on_event("candidate", {"program": program.id, "status": status.value, "message": last.message,
                                    "loss": runs[0][1].final_loss if runs else None})

    def _registration(self, program: Program, status: Status, runs) -> list[Registration]:
        """A candidate that finished its base run joins its island with its base loss, put on the C* scale."""
        if status is not Status.OK or program.proposer == "compare" or not runs or runs[-1][1].final_loss is None:
            return []
        base = {**query.base_losses(self.db), program.id: runs[-1][1].final_loss}
        predicted = {p: f.loss_at_c_star for p, f in query.latest_fits(self.db).items() if p is not None and f.loss_at_c_star}
        score = judge.scores_from(predicted, base)[program.id]
        return [Registration(program.id, program.island, score, int(Stage.BASE), evolved_length(program.source))]

    def execute_runs(self, runs: Sequence[Run]) -> None:
        futures = []
        for run in runs:
            record.start_run(self.db, run.id, clock=self.clock)
            program = query.program(self.db, run.program_id)
            futures.append(self.evaluator.submit_run(program.source, run.n_target, run.d_target, run.seed, f"run {run.id}"))
        for run, future in zip(runs, futures):
            result = self._wait([future])
            if result is None:
                return
            done = record.finish_run(self.db, run.id, run_result(result[0]), clock=self.clock)
            self.on_event("run", {"run": run.id, "program": run.program_id, "status": done.status.value,
                                  "n": done.n_params, "d": done.n_tokens, "loss": done.final_loss})

    # ------------------------------------------------------------------ (4, 5) fit and choose

    def refit(self, plan: bool = True) -> None:
        n_runs = judge.ok_run_count(self.db)
        judgement = judge.fit_round(self.db, self.spec, rng_for(self.spec.seed, "fit", n_runs))
        registrations = []
        if judgement.pooled is not None:
            scores = judge.scores_from(judgement.predicted, query.base_losses(self.db))
            stages = {p.id: p.stage for p in query.programs(self.db)}
            for pid in self.population.changed(scores, stages):
                entry = self.population.entries[pid]
                registrations.append(Registration(pid, None, scores.get(pid, entry.score), stages[pid], entry.length))
        runs = []
        if plan and judgement.pooled is not None:
            eligible = [p.id for p in query.programs(self.db, status=Status.OK)]
            runs = judge.plan_scaling_runs(self.db, self.spec, judgement, rng_for(self.spec.seed, "choose", n_runs), eligible)
        record.plan_runs_with_fits(self.db, judgement.fits, runs, registrations=registrations, clock=self.clock)
        for reg in registrations:
            self.population.register(reg.program_id, reg.island, reg.score, reg.stage, reg.length)
        self._fitted_runs = n_runs
        self.on_event("fit", {"runs": n_runs, "planned": len(runs), "fitted": judgement.pooled is not None,
                              "warning": judge.unsettled_warning(judgement.pooled)})

    def _incumbents(self) -> list[int]:
        entries = sorted(self.population.entries.items(), key=lambda kv: (kv[1].score, kv[0]))
        return [pid for pid, _ in entries[:INCUMBENTS]]

    # ------------------------------------------------------------------ (1) propose

    def propose_step(self) -> None:
        index = query.step_count(self.db)
        rng = rng_for(self.spec.seed, "step", index)
        sample = self.population.sample(rng, n_parents=2)
        fits = query.latest_fits(self.db)
        parents = [self._parent(pid, score, fits.get(pid)) for pid, score in zip(sample.program_ids, sample.scores)]
        request = ProposalRequest(
            island=sample.island, parents=parents, failures=query.failures(self.db, limit=5, island=sample.island),
            n_children=self._children_wanted(), seen=query.seen_hashes(self.db), evolve=self.spec.evolve,
            target_flops=self.spec.target_flops,
        )
        proposal = self.proposer.propose(request, rng)
        programs = [
            Program(source=c.source, blocks=blocks(c.source), parent_ids=tuple(c.parent_ids), island=sample.island,
                    proposer=proposal.proposer, source_hash=c.source_hash or source_hash(c.source), note=c.note)
            for c in proposal.children
        ]
        prompt = Prompt(text=proposal.prompt, island=sample.island, parent_ids=sample.program_ids) if proposal.prompt else None
        step = Step(proposer=proposal.proposer, island=sample.island, parent_ids=sample.program_ids, message=proposal.message)
        record.record_step(self.db, step, programs, prompt=prompt, calls=proposal.calls, clock=self.clock)
        self._empty_steps = 0 if programs else self._empty_steps + 1
        self.message = proposal.message
        self.on_event("step", {"step": index, "island": sample.island, "children": len(programs),
                               "proposer": proposal.proposer, "message": proposal.message})

    def _children_wanted(self) -> int:
        """Children for this step, never more than the candidate budget has left."""
        n, budget = self.spec.children_per_step, self.spec.budget.candidates
        if budget:
            pending = len(query.pending_programs(self.db))
            n = max(1, min(n, budget - query.spent(self.db).candidates - pending))
        return n

    def _parent(self, pid: int, score: float, fit) -> Parent:
        program = query.program(self.db, pid)
        return Parent(pid, program.source, score, program.stage, fit, program.note)
