"""Every record type round-trips through its table, for any value it may hold."""

import dataclasses
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db import rows, schema
from db.rows import Campaign, Fit, Invocation, Program, Prompt, ProposerCall, Registration, Run, State, Status, Step

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
floats = st.floats(allow_nan=False, allow_infinity=False)
ints = st.integers(-(2**62), 2**62)
maybe = lambda s: st.none() | s  # noqa: E731
json_value = st.recursive(
    st.none() | st.booleans() | ints | floats | text,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_dict = st.dictionaries(text, json_value, max_size=4)
ids = st.tuples() | st.lists(st.integers(1, 10**6), max_size=4).map(tuple)

RECORDS = {
    Campaign: st.builds(Campaign, name=text, spec_toml=text, spec=json_dict, seed=ints, created=maybe(floats)),
    Program: st.builds(
        Program,
        source=text,
        blocks=st.dictionaries(text, text, max_size=3),
        parent_ids=ids,
        island=maybe(st.integers(0, 64)),
        proposer=text,
        prompt_id=maybe(ints),
        source_hash=text,
        note=text,
        fingerprint=maybe(text),
        status=maybe(st.sampled_from(Status)),
        message=text,
        stage=st.integers(0, 3),
        created=maybe(floats),
        ended=maybe(floats),
    ),
    Run: st.builds(
        Run,
        program_id=ints,
        stage=st.integers(0, 3),
        n_target=maybe(floats),
        d_target=maybe(floats),
        seed=ints,
        reason=text,
        state=st.sampled_from(State),
        status=maybe(st.sampled_from(Status)),
        n_params=maybe(ints),
        n_active_params=maybe(ints),
        n_tokens=maybe(ints),
        flops_analytic=maybe(floats),
        flops_xla=maybe(floats),
        final_loss=maybe(floats),
        loss_curve=st.lists(st.tuples(floats, floats), max_size=5).map(tuple),
        timings=st.dictionaries(text, floats, max_size=3),
        metrics=json_dict,
        jax_version=maybe(text),
        xla_version=maybe(text),
        device=maybe(text),
        isolation=maybe(text),
        message=text,
        planned_at=maybe(floats),
        started_at=maybe(floats),
        finished_at=maybe(floats),
    ),
    Fit: st.builds(
        Fit,
        program_id=maybe(ints),
        kind=st.sampled_from(["candidate", "pooled"]),
        law=text,
        params=st.dictionaries(text, floats, max_size=5),
        intervals=st.dictionaries(text, st.tuples(floats, floats), max_size=5),
        c_star=maybe(floats),
        loss_at_c_star=maybe(floats),
        loss_low=maybe(floats),
        loss_high=maybe(floats),
        n_star=maybe(floats),
        d_star=maybe(floats),
        prob_best=maybe(floats),
        expected_regret=maybe(floats),
        n_runs=ints,
        round=ints,
        created=maybe(floats),
    ),
    Prompt: st.builds(Prompt, text=text, island=maybe(ints), parent_ids=ids, created=maybe(floats)),
    ProposerCall: st.builds(
        ProposerCall,
        model=text,
        prompt_id=maybe(ints),
        tokens_in=ints,
        tokens_out=ints,
        latency_s=maybe(floats),
        outcome=text,
        cost=maybe(floats),
        n_programs=ints,
        message=text,
        created=maybe(floats),
    ),
    Step: st.builds(
        Step, proposer=text, island=maybe(ints), parent_ids=ids, prompt_id=maybe(ints), n_children=ints, message=text,
        created=maybe(floats),
    ),
    Registration: st.builds(
        Registration, program_id=ints, island=maybe(ints), score=floats, stage=ints, length=ints, created=maybe(floats)
    ),
    Invocation: st.builds(Invocation, spec_toml=text, spec=json_dict, changes=st.lists(text, max_size=3).map(tuple),
                          created=maybe(floats)),
}
TABLES = {
    Campaign: "campaign",
    Program: "programs",
    Run: "runs",
    Fit: "fits",
    Prompt: "prompts",
    ProposerCall: "proposer_calls",
    Registration: "registrations",
    Step: "steps",
    Invocation: "invocations",
}


def test_every_table_has_a_record_type():
    assert sorted(TABLES.values()) == sorted(schema.TABLES)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_record_round_trips_through_its_table(db, data):
    # Foreign keys are a contract of the writers (tested there); here, any value must survive.
    db.execute("PRAGMA foreign_keys=OFF")
    for cls, strategy in RECORDS.items():
        record = data.draw(strategy, label=cls.__name__)
        pk = "seq" if cls is Registration else "id"
        row = {k: v for k, v in rows.to_row(record).items() if not (k == pk and v is None)}
        table = db[TABLES[cls]]
        if cls is Campaign:
            table.delete_where()
        key = table.insert(row, pk=pk).last_pk
        back = rows.from_row(cls, table.get(key))
        assert back == dataclasses.replace(record, **{pk: key})


def test_non_finite_numbers_are_stored_as_null():
    run = Run(program_id=1, final_loss=math.nan, flops_xla=math.inf, loss_curve=((1.0, 2.0), (2.0, math.nan)))
    back = rows.from_row(Run, rows.to_row(run))
    assert back.final_loss is None and back.flops_xla is None
    assert back.loss_curve == ((1.0, 2.0), (2.0, None))


def test_status_and_state_vocabulary():
    assert [s.value for s in Status] == [
        "ok", "invalid", "error", "timeout", "out_of_memory", "diverged", "duplicate", "pruned",
    ]  # fmt: skip
    assert [s.value for s in State] == ["planned", "running", "done"]
    assert State.DONE.is_finished() and not State.RUNNING.is_finished()
    assert Status.PRUNED.is_failure and not Status.OK.is_failure
