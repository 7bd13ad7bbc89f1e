"""The campaign spec: frozen dataclasses parsed from TOML once, at the entry point.

``scalesearch init DIR`` writes ``SPEC_TEMPLATE`` (every key commented);
``load_spec(path)`` reads it back. Unknown keys are errors, so a typo never
silently falls back to a default during a week-long campaign.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any

from search.population import PopulationConfig


class SpecError(ValueError):
    """The campaign spec is wrong; the message names the key and what to do."""


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """When the campaign stops (whichever comes first; 0 means no limit).

    Attributes:
      candidates: programs evaluated (the seed and comparisons included).
      proxy_flops: training FLOPs of all proxy runs.
      wall_hours: wall-clock hours of this invocation of ``scalesearch run``.
      llm_tokens: language-model tokens in and out.
    """

    candidates: int = 40
    proxy_flops: float = 0.0
    wall_hours: float = 0.0
    llm_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """Where proxies are trained in (N, D).

    Attributes:
      base_n, base_d: the base run every candidate gets (the cheapest proxy).
      n_min, n_max, d_min, d_max: the box of affordable proxies for scaling runs.
      grid: points per axis of the pool of feasible (N, D) (log-spaced in the box).
      seq_len: context length of every proxy.
      scaling_fraction: the share of proxy FLOPs active learning may spend on scaling runs.
      runs_per_round: scaling runs planned per fit round at most.
      seeds_per_point: runs active learning may plan per candidate and pool point; above 1 it may
        rerun a proxy with a new seed where averaging seed noise is worth the FLOPs (the benchmark's
        active learning uses 4). 1 (the default) trusts the law's form less: one run per point.
      corpus: folder of text files ("" means the Python standard library).
    """

    base_n: float = 1e5
    base_d: float = 5e5
    n_min: float = 5e4
    n_max: float = 4e5
    d_min: float = 2.5e5
    d_max: float = 2e6
    grid: int = 3
    seq_len: int = 128
    scaling_fraction: float = 0.5
    runs_per_round: int = 2
    seeds_per_point: int = 1
    corpus: str = ""

    def pool(self) -> list[tuple[float, float]]:
        """The feasible (N, D) points: a log-spaced grid over the box."""
        def axis(lo, hi):
            if self.grid == 1:
                return [lo]
            return [float(lo * (hi / lo) ** (i / (self.grid - 1))) for i in range(self.grid)]

        return [(n, d) for n in axis(self.n_min, self.n_max) for d in axis(self.d_min, self.d_max)]


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """The sandbox.

    Attributes:
      workers: evaluations in flight at once (0: one per core).
      memory_gb: address-space limit per evaluation.
      timeout_scale: multiplies the cascade's wall-clock limits (slow machines).
      simulate: use the simulated evaluator (synthetic losses from a known law; for dry runs and tests).
      simulate_delay_s: seconds each simulated stage takes (to test work in flight).
    """

    workers: int = 0
    memory_gb: float = 8.0
    timeout_scale: float = 1.0
    simulate: bool = False
    simulate_delay_s: float = 0.0

    def n_workers(self) -> int:
        return self.workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class CampaignSpec:
    """A whole campaign.

    Attributes:
      name: a label.
      seed: the campaign seed; every decision's generator derives from it.
      seed_program: path of the program the search starts from.
      compare: programs evaluated and fitted beside the search but never used as parents
        (a reference recipe to measure progress against).
      database: path of the campaign's SQLite file.
      evolve: the evolve blocks the proposer may change.
      target_flops: C*, the compute the winner will be trained at.
      inference_tokens: tokens the winner will serve (0: compute-optimal, else inference-aware).
      children_per_step: children proposed per step.
      fit_law: scaling law ("chinchilla" or "data-constrained").
      fit_varying: law parameters that depart per candidate in the pooled fit (the rest are shared).
      fit_departures: where those departures are independent a priori ("centred", "natural" or
        "learned"; see active_learning.hierarchical.PoolingConfig). It matters only when an
        exponent varies.
      budget, proxies, evaluator, population: see their classes.
      proposer: the raw ``[proposer]`` table (``search.llm`` reads it); empty means the mutator.
      path: the spec file (relative paths are resolved against its folder).
    """

    name: str = "campaign"
    seed: int = 0
    seed_program: str = "seed.py"
    compare: tuple[str, ...] = ()
    database: str = "campaign.sqlite"
    evolve: tuple[str, ...] = ("model", "strategy")
    target_flops: float = 1e18
    inference_tokens: float = 0.0
    children_per_step: int = 2
    fit_law: str = "chinchilla"
    fit_varying: tuple[str, ...] = ("e", "a", "b")
    fit_departures: str = "learned"
    budget: BudgetConfig = BudgetConfig()
    proxies: ProxyConfig = ProxyConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    population: PopulationConfig = PopulationConfig()
    proposer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    path: str = ""

    def resolve(self, relative: str) -> pathlib.Path:
        p = pathlib.Path(relative).expanduser()
        return p if p.is_absolute() or not self.path else pathlib.Path(self.path).parent / p


def build_table(cls, table: Mapping[str, Any], where: str):
    """A ``cls`` from a TOML table: unknown keys and values of the wrong type are a SpecError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise SpecError(f"unknown key(s) {unknown} in [{where}]; known: {sorted(fields)}")
    values = {}
    for key, value in table.items():
        default = getattr(cls(), key) if key in fields else None
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif default is not None and not isinstance(default, (dict, type(None))) and type(value) is not type(default):
            raise SpecError(f"[{where}] {key} must be {_KINDS.get(type(default), type(default).__name__)}, got {value!r}")
        values[key] = value
    try:
        return cls(**values)
    except ValueError as e:
        raise SpecError(f"[{where}]: {e}") from e


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", tuple: "a list"}

SECTIONS = {"budget": BudgetConfig, "proxies": ProxyConfig, "evaluator": EvaluatorConfig, "population": PopulationConfig}


def parse_spec(data: Mapping[str, Any], path: str = "") -> CampaignSpec:
    """A ``CampaignSpec`` from the parsed TOML (top-level ``[campaign]`` plus sections)."""
    known = {"campaign", "proposer", *SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown section(s) {unknown}; known: {sorted(known)}")
    campaign = dict(data.get("campaign", {}))
    for key in ("budget", "proxies", "evaluator", "population", "proposer", "path"):
        if key in campaign:
            raise SpecError(f"[campaign] {key} must be its own [{key}] section")
    nested = {name: build_table(cls, data.get(name, {}), name) for name, cls in SECTIONS.items()}
    spec = build_table(CampaignSpec, campaign, "campaign")
    spec = dataclasses.replace(spec, **nested, proposer=dict(data.get("proposer", {})), path=str(path))
    check_spec(spec)
    return spec


def check_spec(spec: CampaignSpec) -> None:
    """Raise SpecError for a value no campaign can run with (``parse_spec`` calls it; so must code that edits a spec)."""
    if not (math.isfinite(spec.target_flops) and spec.target_flops > 0):
        raise SpecError(f"[campaign] target_flops must be a positive number of FLOPs, got {spec.target_flops}")
    if not set(spec.evolve) <= {"model", "strategy"} or not spec.evolve:
        raise SpecError(f"[campaign] evolve must list 'model' and/or 'strategy', got {list(spec.evolve)}")
    p = spec.proxies
    if not (0 < p.n_min <= p.n_max and 0 < p.d_min <= p.d_max and p.base_n > 0 and p.base_d > 0):
        raise SpecError(f"[proxies] needs 0 < n_min <= n_max, 0 < d_min <= d_max and a positive base, got n {p.n_min:g} "
                        f"to {p.n_max:g}, d {p.d_min:g} to {p.d_max:g}, base ({p.base_n:g}, {p.base_d:g})")
    if spec.children_per_step < 1:
        raise SpecError("[campaign] children_per_step must be at least 1")
    _check_ranges(spec)
    from search.judge import pooling  # scipy: imported when a spec is checked, not before

    try:
        pooling(spec)  # the fit's own settings, so the check cannot drift from what the campaign fits
    except ValueError as e:
        raise SpecError(f"[campaign] fit_law, fit_varying or fit_departures: {e}") from e


def _check_ranges(spec: CampaignSpec) -> None:
    """Numbers a campaign would otherwise take silently (a negative budget stops it at once) or fail on late."""
    b, p, e = spec.budget, spec.proxies, spec.evaluator
    at_least = [("campaign", "inference_tokens", spec.inference_tokens, 0),
                ("budget", "candidates", b.candidates, 0), ("budget", "proxy_flops", b.proxy_flops, 0),
                ("budget", "wall_hours", b.wall_hours, 0), ("budget", "llm_tokens", b.llm_tokens, 0),
                ("proxies", "grid", p.grid, 1), ("proxies", "seq_len", p.seq_len, 1),
                ("proxies", "runs_per_round", p.runs_per_round, 0), ("proxies", "seeds_per_point", p.seeds_per_point, 1),
                ("evaluator", "workers", e.workers, 0), ("evaluator", "simulate_delay_s", e.simulate_delay_s, 0)]
    for table, key, value, low in at_least:
        if not (math.isfinite(value) and value >= low):
            what = "0 or more (0: no limit)" if table == "budget" else f"at least {low}"
            raise SpecError(f"[{table}] {key} must be {what}, got {value}")
    for table, key, value in [("evaluator", "memory_gb", e.memory_gb), ("evaluator", "timeout_scale", e.timeout_scale)]:
        if not (math.isfinite(value) and value > 0):
            raise SpecError(f"[{table}] {key} must be positive, got {value}")
    if not 0 <= p.scaling_fraction <= 1:
        raise SpecError(f"[proxies] scaling_fraction is a share of the proxy FLOPs, from 0 to 1; got {p.scaling_fraction}")


def load_spec(path: str | os.PathLike) -> CampaignSpec:
    """Read and check a campaign spec file.

    Raises:
      SpecError: the file is missing, not TOML, or has a wrong key or value.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read campaign spec {path}: {e.strerror}; create one with `scalesearch init DIR`") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}") from e
    return parse_spec(data, str(path.resolve()))


SPEC_TEMPLATE = '''\
# scalesearch campaign spec. Relative paths are relative to this file.
# Run it with `scalesearch run {spec_name}`; kill it at any time and run the
# same command again to resume: nothing committed is redone.

[campaign]
name = "{name}"
seed = 0                       # every decision derives its random generator from this
seed_program = "seed.py"       # the program the search starts from
compare = []                   # programs fitted beside the search, never parents (e.g. a reference recipe)
database = "campaign.sqlite"   # one SQLite file per campaign; inspect it with `scalesearch status`
evolve = ["model", "strategy"] # which EVOLVE-BLOCKs the proposer may change
target_flops = 1e18            # C*: the compute the winner will really be trained at
inference_tokens = 0           # > 0: allocate N and D inference-aware (Sardana et al. 2024)
children_per_step = 2          # programs proposed per step
fit_law = "chinchilla"         # or "data-constrained"
fit_varying = ["e", "a", "b"]  # per-candidate departures in the pooled fit; exponents shared
fit_departures = "learned"     # with "alpha"/"beta" in fit_varying: fit each one's link to its level

[budget]                       # the campaign stops at the first one reached; 0 = no limit
candidates = 40                # programs evaluated
proxy_flops = 0                # training FLOPs of all proxy runs
wall_hours = 0                 # hours of this invocation
llm_tokens = 0                 # language-model tokens in and out

[proxies]
base_n = 1e5                   # every candidate's base run: N non-embedding parameters...
base_d = 5e5                   # ...and D training tokens (bytes)
n_min = 5e4                    # the box of affordable proxies active learning chooses from
n_max = 4e5
d_min = 2.5e5
d_max = 2e6
grid = 3                       # pool: grid x grid log-spaced (N, D) points in the box
seq_len = 128
scaling_fraction = 0.5         # share of proxy FLOPs that may go to scaling runs
runs_per_round = 2             # scaling runs planned after each fit, at most
seeds_per_point = 1            # > 1: active learning may rerun a proxy with a new seed
corpus = ""                    # folder of text files; "" = the Python standard library

[evaluator]
workers = 0                    # evaluations in flight; 0 = one per core
memory_gb = 8.0                # address-space limit per evaluation
timeout_scale = 1.0            # stretch the cascade's time limits on a slow machine
simulate = false               # true: synthetic losses, no training (dry runs)

[population]                   # the programs database (FunSearch islands)
n_islands = 4
temperature = 0.05             # cluster sampling temperature, in nats per byte
temperature_period = 50        # evaluations over which it decays, then restarts
reset_period = 40              # evaluations between resets of the weaker half of islands

[proposer]
# edit_weights = {{learning_rate = 4, moe_experts = 0}}  # the built-in mutator: how often each edit
                               # is tried (1 unless named; see search/mutate.py DEFAULT_EDIT_WEIGHTS)
kind = "mutator"               # "llm" for an OpenAI-compatible endpoint:
# base_url = "http://127.0.0.1:8000/v1"
# api_key_env = "OPENAI_API_KEY"
# models = [{{name = "qwen2.5-coder-32b", weight = 1.0}}]
# temperature = 0.8
# children_per_prompt = 2
'''
