"""Islands, clusters, temperature and resets of the programs database, on hand-made scores."""

import dataclasses
import math

import numpy as np
import pytest

from search.population import Population, PopulationConfig, base_shift, score, scores


def _population(**kwargs) -> Population:
    return Population(PopulationConfig(**{"reset_period": 0, **kwargs}))


def _frequency(population, program_id, n=4000, n_parents=1, seed=0):
    rng = np.random.default_rng(seed)
    return np.mean([population.sample(rng, n_parents).program_ids[-1] == program_id for _ in range(n)])


def test_a_seed_registered_without_an_island_is_on_every_island():
    population = _population()
    population.register(1, None, 2.5, stage=2, length=100)
    assert all(list(island.members) == [1] for island in population.islands)
    assert population.n_evaluations == 1
    assert population.sample(np.random.default_rng(0)).program_ids == (1,)


def test_clusters_group_by_rounded_score_and_stage():
    population = _population(n_islands=1)
    population.register(1, 0, 2.001, stage=2, length=10)
    population.register(2, 0, 2.004, stage=2, length=10)  # same signature as 1
    population.register(3, 0, 2.004, stage=3, length=10)  # same score, further stage
    population.register(4, 0, 1.9, stage=2, length=10)
    assert population.clusters(0) == {(1.9, 2): [4], (2.0, 3): [3], (2.0, 2): [1, 2]}


def test_lower_loss_is_better():
    population = _population(n_islands=1)
    for pid, loss in ((1, 2.2), (2, 1.8), (3, 2.0)):
        population.register(pid, 0, loss, stage=2, length=10)
    assert population.best() == 2 and population.best(0) == 2
    sample = population.sample(np.random.default_rng(0), n_parents=3)
    assert sample.program_ids == (1, 3, 2)  # worst first, best last
    assert sample.scores == (2.2, 2.0, 1.8)


def test_clusters_are_sampled_by_softmax_of_minus_score_over_temperature():
    population = _population(n_islands=1, temperature=0.05, temperature_period=10**6)
    population.register(1, 0, 2.0, stage=2, length=10)
    population.register(2, 0, 2.1, stage=2, length=10)
    expected = 1 / (1 + math.exp(-0.1 / 0.05 * (1 - 2 / 10**6)))  # about 0.88
    assert _frequency(population, 1) == pytest.approx(expected, abs=0.025)


def test_temperature_decays_over_the_period_in_evaluations_then_restarts():
    population = _population(n_islands=1, temperature=0.1, temperature_period=4)
    temperatures = []
    for pid in range(1, 7):
        population.register(pid, 0, 2.0 + pid / 10, stage=2, length=10)
        temperatures.append(population.temperature(0))
    assert temperatures == pytest.approx([0.075, 0.05, 0.025, 0.1, 0.075, 0.05])
    population.register(3, 0, 1.0, stage=3, length=10)  # a re-scoring is not an evaluation
    assert population.temperature(0) == pytest.approx(0.05) and population.n_evaluations == 6


def test_a_colder_island_is_greedier():
    def frequency_of_best(n_programs):
        population = _population(n_islands=1, temperature=0.1, temperature_period=8)
        population.register(1, 0, 2.0, stage=2, length=10)
        population.register(2, 0, 2.1, stage=2, length=10)
        for pid in range(3, n_programs + 1):  # further, much worse programs only cool the island
            population.register(pid, 0, 9.0 + pid, stage=2, length=10)
        return _frequency(population, 1, n=2000)

    assert frequency_of_best(7) > frequency_of_best(2) + 0.2


def test_shorter_programs_are_preferred_within_a_cluster():
    population = _population(n_islands=1)
    population.register(1, 0, 2.0, stage=2, length=1000)
    population.register(2, 0, 2.0, stage=2, length=100)
    expected = 1 / (1 + math.exp(-900 / (1000 + 1e-6)))  # about 0.71
    assert _frequency(population, 2) == pytest.approx(expected, abs=0.025)


def test_rescoring_moves_a_program_between_clusters_on_every_island_that_holds_it():
    population = _population(n_islands=3)
    population.register(1, None, 2.5, stage=2, length=10)
    population.register(2, 0, 2.4, stage=2, length=10)
    assert population.changed({1: 2.5, 2: 2.3}) == [2] and population.changed({}, {1: 3}) == [1]
    population.register(1, None, 1.7, stage=3, length=10)
    population.register(2, 1, 2.3, stage=2, length=10)  # the island of a re-scoring is ignored
    assert population.clusters(1) == {(1.7, 3): [1]} and population.clusters(0) == {(1.7, 3): [1], (2.3, 2): [2]}
    assert population.best(0) == 1 and population.n_evaluations == 2


def test_reset_replaces_the_weaker_half_with_the_best_of_the_others():
    population = _population(n_islands=4, reset_period=8)
    best_per_island = {0: 2.3, 1: 1.9, 2: 2.6, 3: 2.0}  # ranking: 1, 3, 0, 2
    pid = 0
    for island, best in best_per_island.items():
        for offset in (0.0, 0.2):
            pid += 1
            population.register(pid, island, best + offset, stage=2, length=10)
    # The eighth evaluation triggered the reset: the weakest island (2) gets the
    # strongest island's best (3, from island 1), the next weakest (0) the next (7, from island 3).
    assert [(r.island, r.founder) for r in population.resets] == [(2, 3), (0, 7)]
    assert list(population.islands[2].members) == [3] and list(population.islands[0].members) == [7]
    assert population.islands[2].n_evaluations == 1  # the temperature restarts too
    assert list(population.islands[1].members) == [3, 4] and list(population.islands[3].members) == [7, 8]


def test_replay_of_the_registration_log_rebuilds_the_same_state():
    @dataclasses.dataclass
    class Reg:
        program_id: int
        island: int | None
        score: float
        stage: int
        length: int

    config = PopulationConfig(n_islands=4, reset_period=7, temperature_period=5)
    rng = np.random.default_rng(1)
    live, log = Population(config), [Reg(1, None, 2.5, 2, 300)]
    live.register(1, None, 2.5, 2, 300)
    for pid in range(2, 60):
        parents = live.sample(rng)
        reg = Reg(pid, parents.island, float(rng.normal(2.3, 0.1)), int(rng.integers(2, 4)), int(rng.integers(100, 900)))
        if pid % 9 == 0:  # now and then a fit re-scores an older program
            reg = dataclasses.replace(reg, program_id=int(rng.integers(1, pid)), island=parents.island)
        live.register(reg.program_id, reg.island, reg.score, reg.stage, reg.length)
        log.append(reg)
    replayed = Population.replay(log, config)
    assert live.resets and replayed.resets == live.resets
    assert replayed.entries == live.entries and replayed.islands == live.islands
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [live.sample(a, 3) for _ in range(20)] == [replayed.sample(b, 3) for _ in range(20)]


def test_bad_registrations_and_empty_sampling_raise():
    population = _population(n_islands=2)
    with pytest.raises(ValueError, match="population is empty"):
        population.sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        population.register(1, 0, math.nan, 2, 10)
    with pytest.raises(ValueError, match="no island 5"):
        population.register(1, 5, 2.0, 2, 10)
    with pytest.raises(ValueError, match="n_islands"):
        PopulationConfig(n_islands=0)


def test_base_losses_are_moved_onto_the_prediction_scale():
    # Candidates 1 and 2 have both numbers: predictions sit 0.6 and 0.8 below their base losses.
    predicted = {1: 1.9, 2: 1.8}
    base = {1: 2.5, 2: 2.6, 3: 2.4}
    assert base_shift([(1.9, 2.5), (1.8, 2.6)]) == pytest.approx(-0.7)
    assert scores(predicted, base) == pytest.approx({1: 1.9, 2: 1.8, 3: 1.7})
    assert score(None, 2.4, -0.7) == pytest.approx(1.7) and score(None, None, 0.0) is None
    assert base_shift([]) == 0.0  # before any fit, base losses are the scale


def test_the_islands_rebuilt_from_the_database_equal_the_live_ones():
    # A miniature campaign with a fake evaluator: the registrations committed with each
    # result are all that resume needs to rebuild the same islands.
    from db import query, record, schema
    from db.rows import Program, Registration, Run, RunResult, Stage, Status
    from proxy_models.program import seed_source
    from search import mutate, programs, prompt

    db = schema.connect(":memory:")
    config = PopulationConfig(n_islands=3, reset_period=6, temperature_period=4)
    live, mutator, rng = Population(config), mutate.Mutator(), np.random.default_rng(0)

    evaluated = []

    def evaluate(program, island):
        evaluated.append(program.id)
        loss = 2.0 + int(program.source_hash[:6], 16) / 16**6  # a fake, deterministic base-run loss
        run = record.plan_run(db, Run(program_id=program.id, stage=int(Stage.BASE), n_target=1e5, d_target=5e5))
        reg = Registration(program.id, island, loss, int(Stage.BASE), programs.evolved_length(program.source))
        record.finish_run(db, run.id, RunResult(status=Status.OK, final_loss=loss), registrations=[reg])
        record.record_program_outcome(db, program.id, status=Status.OK, stage=int(Stage.BASE))
        live.register(reg.program_id, reg.island, reg.score, reg.stage, reg.length)

    source = seed_source("weakened")
    evaluate(record.record_program(db, Program(source=source, source_hash=programs.source_hash(source))), None)
    for _ in range(15):
        sample = live.sample(rng)
        parents = [prompt.Parent(p, query.program(db, p).source, score=s) for p, s in zip(sample.program_ids, sample.scores)]
        assert prompt.build_prompt(parents).count("### Program") == len(parents)
        for child in mutator.propose(parents, rng, query.seen_hashes(db), n=2):
            row = Program(
                source=child.source,
                blocks=programs.blocks(child.source),
                parent_ids=child.parent_ids,
                island=sample.island,
                proposer="mutator",
                source_hash=child.source_hash,
                note=child.note,
            )
            evaluate(record.record_program(db, row), sample.island)
    # A fit round: five candidates get predictions, which moves every other score by the shift.
    from db.rows import Fit
    from search.population import scores as scores_of

    base = query.base_losses(db)
    predicted = {p: base[p] - 0.5 - 0.01 * p for p in sorted(base)[:5]}
    new = scores_of(predicted, base)
    stages = {p: int(Stage.SCALING) for p in predicted}
    regs = [
        Registration(p, None, new[p], stages.get(p, live.entries[p].stage), live.entries[p].length)
        for p in live.changed(new, stages)
    ]
    record.record_fits(db, [Fit(program_id=p, loss_at_c_star=v) for p, v in predicted.items()], registrations=regs)
    for r in regs:
        live.register(r.program_id, r.island, r.score, r.stage, r.length)
    assert len(evaluated) > 20  # the mutator may find no new child for a pair of parents now and then
    assert len(regs) == live.n_evaluations == len(evaluated)
    replayed = Population.replay(query.registrations(db), config)
    assert live.resets and replayed.islands == live.islands and replayed.entries == live.entries
    assert len(query.seen_hashes(db)) == len(evaluated)
