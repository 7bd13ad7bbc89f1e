"""Opening a campaign: create it whole, or check that the spec still describes the one on disk.

A campaign runs for days and is resumed by running the same spec again, so the
spec is read twice: once to create the database, and on every resume. What it
says must then agree with what the database was created with, or the resumed
campaign would silently mix, say, fits at two target computes, proxies of two
shapes, or simulated losses with trained ones. Budgets, workers and the proposer
may change between invocations (to extend a campaign, or move it to another
machine or model); nothing else may.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping

import sqlite_utils

from db import query, record
from db.rows import Campaign, Invocation, Program, Run, Stage, Step
from search.config import CampaignSpec
from search.programs import blocks, source_hash


class CampaignError(ValueError):
    """The campaign cannot go on as specified; the message says what to do."""


class CampaignMismatch(CampaignError):
    """The database holds a different campaign than the spec describes."""


# Spec keys that may differ on resume (dotted paths; a prefix covers its table).
# seed_program and compare are paths: their contents are checked instead.
RESUMABLE = ("path", "database", "seed_program", "compare", "budget", "proposer",
             "evaluator.workers", "evaluator.memory_gb", "evaluator.timeout_scale", "evaluator.simulate_delay_s")


def open_campaign(spec: CampaignSpec, db: sqlite_utils.Database, spec_toml: str, clock=time.time) -> bool:
    """Create the campaign (seed step with the seed and comparison programs) or check it matches; record the run.

    Every invocation is recorded with its spec (db.rows.Invocation), so a resume that
    extends a budget or changes the proposer leaves a trace, and ``status`` reads the
    limits the campaign now runs under.

    Creation is one transaction, so a spec that fails half-way (a comparison
    program that cannot be read) leaves the file without a campaign, and the next
    run creates it afresh instead of resuming a campaign that has no seed.

    Returns True when it was created.

    Raises:
      CampaignMismatch: the database holds a campaign this spec does not describe.
      FileNotFoundError: creating, and the seed or a comparison program is missing.
    """
    existing, current = query.campaign(db), spec_json(spec)  # the spec as the database holds it
    if existing is not None:
        differences = list(spec_differences(existing.spec, current))
        differences += _program_differences(spec, db)
        if differences:
            raise CampaignMismatch(
                f"{spec.resolve(spec.database)} holds campaign {existing.name!r}, which this spec does not describe: "
                + "; ".join(differences)
                + ". Restore those settings to resume it, or set [campaign] database to a new file to start a new campaign"
            )
        changes = tuple(resumed_changes(query.current_spec(db), current))
        record.record_invocation(db, Invocation(spec_toml=spec_toml, spec=current, changes=changes), clock=clock)
        return False
    seed_source = _read(spec, spec.seed_program, "seed_program")
    programs = [Program(source=seed_source, blocks=blocks(seed_source), proposer="seed", island=None,
                        source_hash=source_hash(seed_source), note="seed program")]
    for path in spec.compare:
        text = _read(spec, path, "compare")
        programs.append(Program(source=text, blocks=blocks(text), proposer="compare", source_hash=source_hash(text),
                                note=f"comparison: {path}"))
    with db.atomic():  # the record functions' transactions become savepoints of this one
        record.create_campaign(db, Campaign(name=spec.name, spec_toml=spec_toml, spec=current, seed=spec.seed), clock=clock)
        record.record_invocation(db, Invocation(spec_toml=spec_toml, spec=current), clock=clock)
        record.record_step(db, Step(proposer="seed"), programs, clock=clock)
        record.plan_runs_with_fits(db, [], initial_design(spec, query.programs(db)), clock=clock)
    return True


def initial_design(spec: CampaignSpec, programs: list[Program]) -> list[Run]:
    """Two corners of the proxy box beside the base run, for the seed and every comparison program.

    The first pooled fit then has a slope in N and in D to start from, and the
    yardsticks the ranking is read against are measured as well as the seed (one
    base run cannot show a recipe's data efficiency, which is where recipes differ most).
    """
    p = spec.proxies
    corners = [(p.n_max, p.d_min), (p.n_min, p.d_max)]
    return [Run(program_id=prog.id, stage=int(Stage.SCALING), n_target=n, d_target=d, reason="initial design")
            for prog in programs for n, d in corners]


def spec_json(spec: CampaignSpec) -> dict:
    """The spec as the database stores it (JSON: tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(spec), default=str))


def resumed_changes(previous: Mapping, current: Mapping) -> Iterator[str]:
    """'key: X -> Y' for each setting a resume may change (RESUMABLE) that differs from the previous invocation's."""
    old, new = _flatten(previous), _flatten(current)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key) and _resumable(key):
            yield f"{key}: {old.get(key)!r} -> {new.get(key)!r}"


def spec_differences(stored: Mapping, current: Mapping) -> Iterator[str]:
    """'key: X in the database, Y in the spec' for each setting outside RESUMABLE that changed.

    A key the stored spec lacks was added to scalesearch after the campaign was
    created; it is not a difference (the campaign ran with its default).
    """
    old, new = _flatten(stored), _flatten(current)
    for key in sorted(old.keys() & new.keys()):
        if old[key] != new[key] and not _resumable(key):
            yield f"{key} {old[key]!r} in the database, {new[key]!r} in the spec"


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESUMABLE)


def _flatten(spec: Mapping) -> dict[str, object]:
    """{'budget.candidates': 40, ...}, with tuples as lists (as the database's JSON holds them)."""
    return _flatten_into(json.loads(json.dumps(spec, default=str)))


def _flatten_into(d: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten_into(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _program_differences(spec: CampaignSpec, db: sqlite_utils.Database) -> list[str]:
    """The seed and comparison programs' contents against the database's (a missing file is not checked:
    the database holds the programs, so a campaign resumes without them)."""
    stored = collections.defaultdict(list)
    for p in query.programs(db):
        if p.proposer in ("seed", "compare"):
            stored[p.proposer].append(p.source_hash or source_hash(p.source))
    out = []
    seed = spec.resolve(spec.seed_program)
    if seed.is_file() and stored["seed"] and source_hash(seed.read_text()) != stored["seed"][0]:
        out.append(f"seed_program {spec.seed_program} differs from the seed program the campaign started from")
    paths = [spec.resolve(c) for c in spec.compare]
    if all(p.is_file() for p in paths):
        if sorted(source_hash(p.read_text()) for p in paths) != sorted(stored["compare"]):
            out.append(f"compare lists {len(paths)} program(s) that are not the {len(stored['compare'])} "
                       "the campaign compares against")
    return out


def _read(spec: CampaignSpec, path: str, key: str) -> str:
    try:
        return spec.resolve(path).read_text()
    except OSError as e:
        raise FileNotFoundError(f"[campaign] {key}: cannot read {spec.resolve(path)}: {e.strerror}") from e
