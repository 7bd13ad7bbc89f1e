"""The campaign entry point: open the database, build the evaluator and proposer, loop, report.

Kept apart from ``loop.py`` so the loop stays pure wiring over injected parts.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time

from rich.console import Console

from db import query, schema
from search.cli import INTERRUPTED  # run_campaign's exit code after a Ctrl-C, as the command's
from search.config import CampaignSpec, SpecError
from search.loop import Loop
from search.opening import open_campaign
from search.progress import Progress, ranking_table, summary_text
from search.propose import MutatorProposer, Proposer, mutator_config


def build_evaluator(spec: CampaignSpec):
    base = (spec.proxies.base_n, spec.proxies.base_d)
    workers = spec.evaluator.n_workers()
    if spec.evaluator.simulate:
        from search.simulate import SimulatedEvaluator

        return SimulatedEvaluator(base, workers=workers, delay_s=spec.evaluator.simulate_delay_s)
    from search.evaluate import SandboxEvaluator

    return SandboxEvaluator(base, workers, spec.evaluator.memory_gb, spec.proxies.corpus or None, spec.evaluator.timeout_scale,
                            spec.proxies.seq_len)


def build_proposer(spec: CampaignSpec) -> Proposer:
    """The ``[proposer]`` table's proposer; the mutator (configured by the same table) is the fallback.

    Raises:
      SpecError: a bad key or value in ``[proposer]``.
    """
    section = dict(spec.proposer)
    try:
        mutator = MutatorProposer(mutator_config(section))
        if not section:
            return mutator
        from search.proposer_table import build_proposer as build_llm

        return build_llm(section, os.environ, mutator)  # checks the keys; the mutator for kind = "mutator"
    except ValueError as e:
        raise SpecError(f"{spec.path}: {e}") from e


def run_campaign(spec: CampaignSpec, *, install_signals: bool = False, console: Console | None = None,
                 evaluator=None, proposer: Proposer | None = None) -> int:
    """Run or resume ``spec``'s campaign; prints progress and the final ranking. Returns an exit code.

    Raises:
      SpecError: the spec's database folder is missing, or its [proposer] table is wrong.
      search.opening.CampaignError: the database holds another campaign, or the seed program failed.
      db.schema.CampaignBusy: another process is running this campaign.
    """
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    proposer = proposer or build_proposer(spec)  # a bad [proposer] table fails before the database exists
    path = spec.resolve(spec.database)
    if not path.parent.is_dir():
        raise SpecError(f"[campaign] database: the folder {path.parent} does not exist; create it, or point database elsewhere")
    with schema.writer_lock(path):
        db = schema.connect(path)
        spec_toml = pathlib.Path(spec.path).read_text() if spec.path else ""
        created = open_campaign(spec, db, spec_toml)
        changes = () if created else query.invocations(db)[-1].changes
        console.print(f"{'created' if created else 'resuming'} campaign {spec.name!r} in {path}"
                      + (f" (changed: {'; '.join(changes)})" if changes else ""), markup=False)
        return _search(spec, db, console, evaluator or build_evaluator(spec), proposer, install_signals)


def _search(spec: CampaignSpec, db, console: Console, evaluator, proposer: Proposer, install_signals: bool) -> int:
    console.print(f"evaluator isolation: {evaluator.isolation}; proposer: {type(proposer).__name__}")
    with Progress(db, spec.budget.candidates, console) as progress:
        loop = Loop(spec, db, evaluator, proposer, on_event=progress)
        previous = _install_sigint(loop) if install_signals else None
        t0 = time.monotonic()
        try:
            reason = loop.run()
        finally:
            evaluator.close(cancel=loop.stopping)
            if hasattr(proposer, "close"):
                proposer.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    console.print(summary_text(db, spec.budget.candidates))
    console.print(ranking_table(db, 10, width=console.width))
    console.print(f"stopped after {time.monotonic() - t0:.0f}s: {reason}")
    return INTERRUPTED if loop.stopping else 0


def _install_sigint(loop: Loop):
    """First Ctrl-C: stop cleanly (commits are whole, in-flight work is redone on resume). Second: abort."""

    def handler(signum, frame):
        if loop.stopping:
            raise KeyboardInterrupt
        print("\nstopping: proxies in flight are abandoned (run again to redo them); Ctrl-C again to abort",
              file=sys.stderr, flush=True)
        loop.stop()

    return signal.signal(signal.SIGINT, handler)
