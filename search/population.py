"""The programs database: islands of programs, clustered by signature (FunSearch).

After ``programs_database.py`` in google-deepmind/funsearch (Romera-Paredes et
al. 2023, "Mathematical discoveries from program search with large language
models"), with three differences that the search campaign needs:

- Lower scores are better (a score is a loss), so cluster logits are
  ``-score / temperature``.
- Scores change: a candidate's predicted loss at C* sharpens as active learning
  adds runs. Registering a program again re-scores it wherever it lives (its
  island argument is then ignored: a reset may have moved it); only a
  program's first registration counts as an evaluation. ``changed`` lists the
  programs whose score a new set of scores would change.
- Nothing depends on wall-clock time or hidden randomness. The temperature
  decays over a period counted in evaluations on the island, islands are reset
  every ``reset_period`` evaluations, and a reset makes no random choice. So the
  state is a pure function of the sequence of registrations: ``replay`` of the
  log that ``db`` keeps (``query.registrations``) rebuilds it exactly, and every
  sampling choice takes the caller's ``np.random.Generator``.

What is registered: programs that finished their base run with status ok. The
failures go to the prompts as messages (``db.query.failures``), not here.

Score (``score``): a candidate's predicted loss at C* when a fit exists, else its
base-run loss moved onto that scale by ``base_shift``: the mean, over the
candidates that have both, of (predicted loss at C*) - (base-run loss). A shift
is the right correction where a candidate's predicted gain from scale is close
to the campaign's typical gain, which is what we can assume before its own fit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

ProgramId = int
Signature = tuple[float, int]  # (score rounded, stage reached)


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    """How the islands evolve.

    Attributes:
      n_islands: independent sub-populations.
      temperature: cluster-sampling temperature at the start of each period, in
        units of the score (nats per byte): clusters this much worse are e times
        less likely to be chosen.
      temperature_period: evaluations on an island over which the temperature
        falls linearly from ``temperature`` towards zero, then starts again.
      reset_period: evaluations (all islands) between resets of the weaker half
        of the islands; 0 never resets.
      signature_decimals: scores are rounded to this many decimals for clustering.
      length_temperature: within a cluster, the temperature of the preference for
        shorter programs (on lengths normalised to [0, 1]).
    """

    n_islands: int = 4
    temperature: float = 0.05
    temperature_period: int = 50
    reset_period: int = 40
    signature_decimals: int = 2
    length_temperature: float = 1.0

    def __post_init__(self):
        if self.n_islands < 1:
            raise ValueError(f"n_islands must be at least 1, got {self.n_islands}")
        if not self.temperature > 0 or not self.length_temperature > 0:
            raise ValueError(f"temperatures must be positive, got {self.temperature}, {self.length_temperature}")
        if self.temperature_period < 1 or self.reset_period < 0:
            raise ValueError(f"periods must be positive, got {self.temperature_period}, {self.reset_period}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the database knows of one program."""

    score: float
    stage: int
    length: int


@dataclasses.dataclass(frozen=True)
class Sample:
    """Parents for one prompt: worst first, best last (the order a prompt shows them)."""

    island: int
    program_ids: tuple[ProgramId, ...]
    scores: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Reset:
    """A reset that happened: ``island`` was emptied and seeded with ``founder``."""

    at_evaluation: int
    island: int
    founder: ProgramId


class RegistrationLike(Protocol):
    program_id: int
    island: int | None
    score: float
    stage: int
    length: int


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"logits must be finite, got {logits}")
    z = logits / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def signature(entry: Entry, decimals: int) -> Signature:
    return (round(entry.score, decimals), entry.stage)


@dataclasses.dataclass
class Island:
    """A sub-population: its members in registration order, and how many it evaluated."""

    members: dict[ProgramId, None] = dataclasses.field(default_factory=dict)
    n_evaluations: int = 0


class Population:
    """Islands of programs; ``register`` adds or re-scores, ``sample`` picks parents."""

    def __init__(self, config: PopulationConfig = PopulationConfig()):
        self.config = config
        self.islands = [Island() for _ in range(config.n_islands)]
        self.entries: dict[ProgramId, Entry] = {}
        self.resets: list[Reset] = []

    @property
    def n_evaluations(self) -> int:
        """Programs registered so far (re-scorings do not count)."""
        return len(self.entries)

    @classmethod
    def replay(cls, records: Iterable[RegistrationLike], config: PopulationConfig = PopulationConfig()) -> Population:
        """The population after registering ``records`` in order (the db's log)."""
        population = cls(config)
        for r in records:
            population.register(r.program_id, r.island, r.score, r.stage, r.length)
        return population

    def register(self, program_id: ProgramId, island: int | None, score: float, stage: int, length: int) -> None:
        """Add a program to ``island`` (None: to every island, as for a seed), or re-score a registered one.

        Raises:
          ValueError: the score is not finite or the island does not exist.
        """
        if not math.isfinite(score):
            raise ValueError(f"program {program_id}: score must be finite, got {score}")
        if island is not None and not 0 <= island < len(self.islands):
            raise ValueError(f"program {program_id}: no island {island} (there are {len(self.islands)})")
        new = program_id not in self.entries
        self.entries[program_id] = Entry(float(score), int(stage), int(length))
        if not new:
            return
        for i in range(len(self.islands)) if island is None else [island]:
            self.islands[i].members[program_id] = None
            self.islands[i].n_evaluations += 1
        period = self.config.reset_period
        if period and self.n_evaluations % period == 0:
            self.reset_islands()

    def changed(
        self, scores: Mapping[ProgramId, float], stages: Mapping[ProgramId, int] | None = None
    ) -> list[ProgramId]:
        """Registered programs whose score (or stage) differs in ``scores`` (``stages``): the ones to re-register."""
        out, stages = [], stages or {}
        for p, entry in self.entries.items():
            new_score, new_stage = scores.get(p, entry.score), stages.get(p, entry.stage)
            if abs(new_score - entry.score) > 1e-12 or new_stage != entry.stage:
                out.append(p)
        return sorted(out)

    def best(self, island: int | None = None) -> ProgramId:
        """The lowest-scoring program (of one island, or of all); ties go to the oldest."""
        ids = self.entries if island is None else self.islands[island].members
        if not ids:
            raise ValueError("no programs registered" + ("" if island is None else f" on island {island}"))
        return min(ids, key=lambda p: (self.entries[p].score, p))

    def temperature(self, island: int) -> float:
        """FunSearch's schedule: linear decay over the period, restarting after it."""
        period = self.config.temperature_period
        return self.config.temperature * (1 - (self.islands[island].n_evaluations % period) / period)

    def clusters(self, island: int) -> dict[Signature, list[ProgramId]]:
        """The island's members grouped by signature, signatures sorted best first."""
        out: dict[Signature, list[ProgramId]] = {}
        for p in self.islands[island].members:
            out.setdefault(signature(self.entries[p], self.config.signature_decimals), []).append(p)
        return dict(sorted(out.items(), key=lambda kv: (kv[0][0], -kv[0][1])))

    def sample(self, rng: np.random.Generator, n_parents: int = 2) -> Sample:
        """Choose an island uniformly, then ``n_parents`` distinct clusters and one program of each.

        Clusters are drawn without replacement by softmax of ``-score / temperature``;
        within a cluster, shorter programs are preferred.

        Raises:
          ValueError: nothing is registered yet (register the seed first).
        """
        occupied = [i for i, island in enumerate(self.islands) if island.members]
        if not occupied:
            raise ValueError("the population is empty; register the seed program first")
        island = occupied[int(rng.integers(len(occupied)))]
        clusters = list(self.clusters(island).items())
        temperature = self.temperature(island)
        chosen = []
        for _ in range(min(n_parents, len(clusters))):
            logits = np.array([-sig[0] for sig, _ in clusters])
            k = int(rng.choice(len(clusters), p=_softmax(logits, temperature)))
            chosen.append(self._sample_program(clusters.pop(k)[1], rng))
        chosen.sort(key=lambda p: (-self.entries[p].score, -p))  # worst first, best last
        return Sample(island, tuple(chosen), tuple(self.entries[p].score for p in chosen))

    def _sample_program(self, members: Sequence[ProgramId], rng: np.random.Generator) -> ProgramId:
        lengths = np.array([self.entries[p].length for p in members], dtype=float)
        normalised = (lengths - lengths.min()) / (lengths.max() + 1e-6)
        return members[int(rng.choice(len(members), p=_softmax(-normalised, self.config.length_temperature)))]

    def reset_islands(self) -> list[Reset]:
        """Empty the weaker half of the islands and seed each with a best program of the others.

        Islands are ranked by their best score (ties: the lower index is stronger).
        The weakest island gets the strongest island's best program, the next
        weakest the next strongest's, and so on round the kept islands, so the
        reset needs no random choice and replays exactly.
        """
        ranked = sorted(
            (i for i, island in enumerate(self.islands) if island.members),
            key=lambda i: (self.entries[self.best(i)].score, i),
        )
        empty = [i for i, island in enumerate(self.islands) if not island.members]
        n_reset = len(self.islands) // 2
        keep = ranked[: len(self.islands) - n_reset] if len(ranked) > n_reset else ranked[:1]
        weak = (empty + ranked[::-1])[:n_reset]
        done = []
        for j, island in enumerate(i for i in weak if i not in keep):
            founder = self.best(keep[j % len(keep)])
            self.islands[island] = Island(members={founder: None}, n_evaluations=1)
            done.append(Reset(self.n_evaluations, island, founder))
        self.resets.extend(done)
        return done


def base_shift(pairs: Iterable[tuple[float, float]]) -> float:
    """Mean of (predicted loss at C*) - (base-run loss) over candidates that have both; 0 if none."""
    diffs = [predicted - base for predicted, base in pairs if math.isfinite(predicted) and math.isfinite(base)]
    return float(np.mean(diffs)) if diffs else 0.0


def score(predicted: float | None, base_loss: float | None, shift: float) -> float | None:
    """A candidate's score: its prediction at C*, else its base loss plus ``shift``; None if neither."""
    if predicted is not None and math.isfinite(predicted):
        return float(predicted)
    if base_loss is not None and math.isfinite(base_loss):
        return float(base_loss) + shift
    return None


def scores(predicted: Mapping[ProgramId, float], base_losses: Mapping[ProgramId, float]) -> dict[ProgramId, float]:
    """Every candidate's score, with the shift estimated from those that have both numbers."""
    shift = base_shift((predicted[p], base_losses[p]) for p in predicted if p in base_losses)
    out = {p: score(predicted.get(p), base_losses.get(p), shift) for p in {*predicted, *base_losses}}
    return {p: s for p, s in sorted(out.items()) if s is not None}
