"""A small campaign recorded through the db API with a fake evaluator, for the inspection and export tests.

Losses come from a known law per program (plus 1% noise), so no proxy is
trained; fits come from the judge's real pooled fit. Built once per test
session into a temporary file (``campaign_path()``), then only read.

Programs (id: what):
  1 seed (reference recipe)   2 comparison (weakened)   3 child of 1 (lr 2e-3)
  4 child of 1 (silu)         5 child of 3, by an LLM (the best)
  6 invalid (imports os)      7 error at smoke          8 diverged base run
  9 duplicate of 3            10 pruned
Program 3 also has a scaling run that timed out.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import itertools
import json
import math
import pathlib
import shutil
import tempfile

import numpy as np

from db import record, schema
from db.rows import Campaign, Program, ProposerCall, Run, RunResult, Stage, Status
from proxy_models.program import seed_source
from search.config import CampaignSpec
from search.programs import blocks, source_hash

TARGET_FLOPS = 1e15
BASE = (1e5, 5e5)
LAW = {"E": 0.7, "A": 15.0, "alpha": 0.3, "B": 268.0, "beta": 0.4}
# program id -> (A multiplier, B multiplier): 5 is best at C*, 2 (weakened) worst.
QUALITY = {1: (1.0, 1.0), 2: (1.1, 1.15), 3: (1.0, 0.95), 4: (0.97, 1.0), 5: (0.92, 0.93)}
BEST = 5
OK_PROGRAMS = (1, 2, 3, 4, 5)
FAILED = {6: Status.INVALID, 7: Status.ERROR, 8: Status.DIVERGED, 9: Status.DUPLICATE, 10: Status.PRUNED}


def true_loss(program_id: int, n: float, d: float) -> float:
    a, b = QUALITY[program_id]
    return LAW["E"] + a * LAW["A"] / n ** LAW["alpha"] + b * LAW["B"] / d ** LAW["beta"]


def _variant(old: str, new: str) -> str:
    source = seed_source("reference")
    assert old in source
    return source.replace(old, new)


SOURCES = {
    1: seed_source("reference"),
    2: seed_source("weakened"),
    3: _variant('"learning_rate": 3e-3', '"learning_rate": 2e-3'),
    4: _variant('"gelu")', '"silu")'),
    5: _variant('"learning_rate": 3e-3', '"learning_rate": 2e-3').replace('"z_loss": 1e-4', '"z_loss": 2e-4'),
    6: "import os\n" + _variant('"gelu")', '"relu")'),
    7: _variant('"gelu")', '"gelu2")'),
    8: _variant('"learning_rate": 3e-3', '"learning_rate": 3.0'),
    9: _variant('"learning_rate": 3e-3', '"learning_rate": 0.002'),
    10: _variant('"gelu")', '"tanh")'),
}
PARENTS = {1: (), 2: (), 3: (1,), 4: (1,), 5: (3,), 6: (4,), 7: (3,), 8: (5,), 9: (1,), 10: (5,)}
PROPOSER = {1: "seed", 2: "compare", 5: "qwen2.5-coder", 8: "qwen2.5-coder"}
MESSAGES = {6: "refused: import of 'os' is not allowed", 7: "ValueError: unknown activation 'gelu2'",
            8: "train loss 12.3 at step 40 (limit 8.32 or non-finite)", 9: "duplicate of 3",
            10: "stopped at 98304 tokens: train loss 3.1 behind the incumbents"}


def spec() -> CampaignSpec:
    return CampaignSpec(name="inspect-test", target_flops=TARGET_FLOPS)


class _Campaign:
    def __init__(self, db):
        self.db, self.ticks = db, itertools.count(1_700_000_000.0, 60.0)
        self.rng = np.random.default_rng(0)

    def clock(self) -> float:
        return next(self.ticks)

    def program(self, pid: int) -> None:
        source = SOURCES[pid]
        island = None if pid <= 2 else pid % 2
        stored = record.record_program(self.db, Program(
            source=source, blocks=blocks(source), parent_ids=PARENTS[pid], island=island,
            proposer=PROPOSER.get(pid, "mutator"), source_hash=source_hash(source), note=f"variant {pid}"),
            clock=self.clock)
        assert stored.id == pid

    def run(self, pid: int, n: float, d: float, stage: Stage, status: Status = Status.OK, seed: int = 0) -> None:
        loss = true_loss(pid, n, d) * math.exp(0.01 * self.rng.standard_normal()) if pid in QUALITY else 3.0
        ok = status is Status.OK
        planned = record.plan_run(self.db, Run(program_id=pid, stage=int(stage), n_target=n, d_target=d, seed=seed,
                                               reason="base" if stage == Stage.BASE else "active learning"),
                                  clock=self.clock)
        record.start_run(self.db, planned.id, clock=self.clock)
        curve = tuple((d * k / 8, loss + (math.log(256) - loss) * (1 - k / 8) ** 2) for k in range(1, 9))
        result = RunResult(
            status=status, n_params=int(n), n_active_params=int(n), n_tokens=int(d), flops_analytic=6.0 * n * d,
            flops_xla=6.6 * n * d, final_loss=loss if ok else None, loss_curve=curve if ok else curve[:3],
            timings={"train_s": n * d / 2.5e10}, jax_version="fake", device="cpu",
            metrics={"flops_per_token_analytic": 6.0 * n, "seq_len": 128, "d_model": 64, "n_layers": 2},
            message="" if ok else MESSAGES.get(pid, "timed out after 600 s"))
        record.finish_run(self.db, planned.id, result, clock=self.clock)

    def outcome(self, pid: int) -> None:
        status = FAILED.get(pid, Status.OK)
        stage = {Status.INVALID: 0, Status.ERROR: 1, Status.DUPLICATE: 1}.get(status, 2)
        record.record_program_outcome(self.db, pid, status=status, stage=stage, message=MESSAGES.get(pid, ""),
                                      fingerprint=f"fp{pid}", clock=self.clock)

    def fit(self) -> None:
        from search.judge import fit_round

        judgement = fit_round(self.db, spec(), self.rng)
        record.record_fits(self.db, judgement.fits, clock=self.clock)


def build(path: pathlib.Path) -> pathlib.Path:
    """Record the campaign into ``path`` and close it (so the file is complete without its WAL)."""
    db = schema.connect(path)
    c = _Campaign(db)
    s = spec()
    record.create_campaign(db, Campaign(name=s.name, spec_toml="[campaign]\nname = \"inspect-test\"\n",
                                        spec=json.loads(json.dumps(dataclasses.asdict(s), default=str))),
                           clock=c.clock)
    for pid in (1, 2):
        c.program(pid)
        c.run(pid, *BASE, Stage.BASE)
        c.outcome(pid)
    c.run(1, 4e5, 2e6, Stage.SCALING)
    c.fit()
    for pid in (3, 4, 5, 6, 7, 8, 9, 10):
        c.program(pid)
        record.record_proposer_call(db, ProposerCall(model=PROPOSER.get(pid, "mutator"), tokens_in=1200,
                                                     tokens_out=300, latency_s=2.5, n_programs=1), clock=c.clock)
        if pid in QUALITY:
            c.run(pid, *BASE, Stage.BASE)
        elif pid in (8, 10):
            c.run(pid, *BASE, Stage.BASE, FAILED[pid])
        c.outcome(pid)
        if pid in (4, 5):
            c.fit()
    for pid, n, d in ((5, 4e5, 2e6), (5, 2e5, 1e6), (3, 2e5, 1e6), (2, 4e5, 2e6), (1, 5e4, 2.5e5), (4, 2e5, 1e6)):
        c.run(pid, n, d, Stage.SCALING)
    c.run(3, 4e5, 2e6, Stage.SCALING, Status.TIMEOUT)
    c.fit()
    c.run(5, 1e5, 2e6, Stage.SCALING)
    c.fit()
    db.close()
    return path


@functools.cache
def campaign_path() -> pathlib.Path:
    """The recorded campaign's file, built on first use and removed at exit."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="scalesearch-inspect-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return build(folder / "campaign.sqlite")
