"""The language-model proposer against a scripted server: programs from answers, and every failure recorded."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for chat_server (tests/ is not a package)

from chat_server import ChatServer, Reply, strategy_responder  # noqa: E402

from proxy_models.program import seed_source  # noqa: E402
from search import programs  # noqa: E402
from search.llm_propose import LLMProposer  # noqa: E402
from search.proposer_table import build_proposer, proposer_config  # noqa: E402
from search.prompt import Parent  # noqa: E402
from search.propose import MutatorProposer, Proposal, ProposalRequest  # noqa: E402

REFERENCE = seed_source("reference")
WEAKENED = seed_source("weakened")
FAST = {"timeout_s": 0.3, "connect_timeout_s": 0.3, "max_retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.02}


def _diff(search: str, replace: str) -> str:
    return f"Change it.\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


LR_DIFF = _diff('        "learning_rate": 3e-3,', '        "learning_rate": 2e-3,')
ZLOSS_DIFF = _diff('        "z_loss": 1e-4,', '        "z_loss": 1e-3,')
BAD_DIFF = _diff('        "learning_rate": 1e-2,', '        "learning_rate": 2e-3,')
WHOLE = (
    "Scale the learning rate with size.\n```python\n# EVOLVE-BLOCK-START strategy\n"
    "def hyperparameters(n_params, n_tokens):\n    return {\"learning_rate\": 0.02 * n_params ** -0.25}\n"
    "# EVOLVE-BLOCK-END\n```\n"
)


def _request(n: int = 1, **kw) -> ProposalRequest:
    parents = [Parent(1, REFERENCE, score=2.0), Parent(2, WEAKENED, score=2.3)]
    seen = {programs.source_hash(REFERENCE), programs.source_hash(WEAKENED)}
    return ProposalRequest(island=0, parents=parents, n_children=n, seen=seen, **kw)


class Clock:
    """A clock the test moves by hand (for breaker cool-downs)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


def _proposer(server: ChatServer, clock=None, **section) -> LLMProposer:
    spec = {"kind": "llm", "base_url": server.base_url, "model": "m", **FAST, **section}
    config = proposer_config(spec, {})
    kwargs = {"clock": clock} if clock is not None else {}
    return LLMProposer(config, MutatorProposer(), **kwargs)


def _propose(server, *replies, request=None, seed=0, **section) -> tuple[Proposal, LLMProposer]:
    server.add(*replies)
    with _proposer(server, **section) as proposer:
        return proposer.propose(request or _request(), np.random.default_rng(seed)), proposer


def test_a_good_diff_becomes_a_child_of_the_best_parent_with_the_models_note(server):
    proposal, _ = _propose(server, Reply(content=LR_DIFF))
    [child] = proposal.children
    assert '"learning_rate": 2e-3,' in child.source and child.parent_ids == (1,)
    assert child.note == "Change it." and child.source_hash == programs.source_hash(child.source)
    assert proposal.proposer == "llm:m" and "improve" in proposal.prompt
    [call] = proposal.calls
    assert (call.model, call.outcome, call.n_programs) == ("m", "ok", 1) and call.tokens_in > 0


def test_a_whole_block_becomes_a_child(server):
    proposal, _ = _propose(server, Reply(content=WHOLE))
    [child] = proposal.children
    assert "0.02 * n_params ** -0.25" in programs.blocks(child.source)["strategy"]


def test_reasoning_is_stripped_before_the_answer_is_read(server):
    proposal, _ = _propose(server, Reply(content=f"<think>Let me think... {BAD_DIFF}</think>\n{LR_DIFF}"))
    assert len(proposal.children) == 1 and [c.outcome for c in proposal.calls] == ["ok"]


def test_a_diff_that_does_not_apply_gets_one_repair_round_with_the_error(server):
    proposal, _ = _propose(server, Reply(content=BAD_DIFF), Reply(content=LR_DIFF))
    assert [c.outcome for c in proposal.calls] == ["diff_failed", "ok"]
    assert len(proposal.children) == 1
    repair = server.requests[1]["messages"]
    assert [m["role"] for m in repair] == ["system", "user", "assistant", "user"]
    assert "does not match the best program" in repair[-1]["content"] and '"learning_rate": 1e-2,' in repair[-1]["content"]
    assert proposal.calls[1].message.startswith("repair")


def test_a_program_the_static_stage_refuses_gets_a_repair_round(server):
    bad = _diff('    return {\n        "learning_rate": 3e-3,', '    import os\n    return {\n        "learning_rate": 3e-3,')
    proposal, _ = _propose(server, Reply(content=bad), Reply(content=ZLOSS_DIFF))
    assert [c.outcome for c in proposal.calls] == ["invalid", "ok"]
    assert "static check" in proposal.calls[0].message and "'os'" in server.requests[1]["messages"][-1]["content"]


def test_a_failed_repair_is_recorded_and_the_fallback_fills_the_step(server):
    proposal, _ = _propose(server, Reply(content=BAD_DIFF), Reply(content=BAD_DIFF))
    assert [c.outcome for c in proposal.calls] == ["diff_failed", "diff_failed"]
    assert proposal.proposer == "mutator" and proposal.children and "no usable answer" in proposal.message


def test_without_fallback_an_unusable_step_returns_no_children(server):
    proposal, _ = _propose(server, Reply(content="I cannot help with that."), fallback_when_empty=False)
    assert proposal.children == [] and proposal.proposer == "llm:m"
    assert [c.outcome for c in proposal.calls] == ["no_code"]


@pytest.mark.parametrize(
    "reply, outcome",
    [
        (Reply(content="Sure! Here is an idea: use a bigger model."), "no_code"),
        (Reply(content="\x00\x01garbage ```\n)))((\n"), "no_code"),
        (Reply(content="Here:\n```python\n)))((\n```\n"), "diff_failed"),
        (Reply(content=LR_DIFF[: len(LR_DIFF) // 2], finish_reason="length"), "length"),
        (Reply(content=""), "empty"),
        (Reply(raw=b"not json"), "bad_response"),
    ],
)
def test_unusable_answers_are_recorded_failures_never_programs(server, reply, outcome):
    proposal, _ = _propose(server, reply, Reply(content="also not code"), repair=True, fallback_when_empty=False)
    assert proposal.children == [] and proposal.calls[0].outcome == outcome
    assert proposal.calls[0].n_programs == 0


def test_a_length_cut_is_not_repaired_or_applied_even_when_the_diff_would_apply(server):
    proposal, _ = _propose(server, Reply(content=LR_DIFF, finish_reason="length"), fallback_when_empty=False)
    assert proposal.children == [] and [c.outcome for c in proposal.calls] == ["length"]
    assert len(server.requests) == 1


def test_429_then_success_records_both_attempts(server):
    proposal, _ = _propose(server, Reply(status=429, headers={"Retry-After": "0.02"}), Reply(content=LR_DIFF))
    assert [c.outcome for c in proposal.calls] == ["http_429", "ok"] and len(proposal.children) == 1
    assert "Retry-After" in proposal.calls[0].message


def test_usage_missing_is_estimated_and_noted(server):
    proposal, proposer = _propose(server, Reply(content=LR_DIFF, usage=None))
    [call] = proposal.calls
    assert call.outcome == "ok" and call.tokens_out > 0 and "usage estimated" in call.message
    assert proposer.stats()["tokens_out"] == call.tokens_out


def test_children_are_deduplicated_against_seen_and_each_other(server):
    same_lr = _diff('        "learning_rate": 3e-3,', '        "learning_rate": 0.002,')  # 2e-3 in normal form
    replies = [Reply(content=LR_DIFF), Reply(content=same_lr), Reply(content=ZLOSS_DIFF), Reply(content=ZLOSS_DIFF)]
    seen = _request().seen | {programs.source_hash(REFERENCE.replace('"z_loss": 1e-4', '"z_loss": 1e-3'))}
    request = ProposalRequest(island=0, parents=_request().parents, n_children=4, seen=seen)
    proposal, _ = _propose(server, *replies, request=request, concurrency=1)
    assert len(proposal.children) == 1
    assert sorted(c.outcome for c in proposal.calls) == ["duplicate", "duplicate", "duplicate", "ok"]
    assert sum(c.n_programs for c in proposal.calls) == 1


def test_several_children_per_prompt_are_requested_concurrently(server):
    replies = [Reply(content=_diff('        "clip": 1.0,', f'        "clip": {c},'), delay_s=0.2) for c in (0.5, 0.6, 0.7, 0.8)]
    # FAST's 0.3 s timeout left 0.1 s over the replies' delay: a loaded machine timed requests out.
    proposal, _ = _propose(server, *replies, children_per_prompt=4, concurrency=4, timeout_s=5.0)
    assert len(proposal.children) == 4 and server.max_in_flight >= 2


def test_concurrency_one_sends_one_request_at_a_time(server):
    replies = [Reply(content=_diff('        "clip": 1.0,', f'        "clip": {c},'), delay_s=0.05) for c in (0.5, 0.6, 0.7)]
    proposal, _ = _propose(server, *replies, children_per_prompt=3, concurrency=1, timeout_s=5.0)
    assert len(proposal.children) == 3 and server.max_in_flight == 1


def test_each_proposal_draws_one_model_of_the_ensemble_by_weight():
    with ChatServer(responder=strategy_responder()) as server:
        spec = {"base_url": server.base_url, "models": [{"name": "big", "weight": 3}, {"name": "small"}], **FAST}
        with build_proposer(spec, {}, MutatorProposer()) as proposer:
            rng = np.random.default_rng(1)
            names = [proposer.propose(_request(), rng).proposer for _ in range(40)]
    assert set(names) == {"llm:big", "llm:small"} and names.count("llm:big") > names.count("llm:small")
    assert {r["model"] for r in server.requests} == {"big", "small"}


def test_a_token_budget_stops_the_model_and_the_mutator_carries_on(server):
    replies = [Reply(content=LR_DIFF, usage={"prompt_tokens": 600, "completion_tokens": 100})]
    server.add(*replies * 3)
    with _proposer(server, token_budget=1000) as proposer:
        rng = np.random.default_rng(0)
        first, second, third = (proposer.propose(_request(), rng) for _ in range(3))
    assert first.proposer == "llm:m" and second.proposer == "llm:m"
    assert third.proposer == "mutator" and third.children and "token budget spent (1400 of 1000" in third.message
    assert [c.outcome for c in third.calls] == ["budget"] and len(server.requests) == 2


def test_a_cost_budget_with_stop_ends_proposing_cleanly(server):
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 500_000}
    server.add(Reply(content=LR_DIFF, usage=usage))
    with _proposer(server, price_in=1.0, price_out=4.0, cost_budget=2.5, on_budget="stop") as proposer:
        rng = np.random.default_rng(0)
        first = proposer.propose(_request(), rng)
        assert first.calls[0].cost == pytest.approx(3.0) and not proposer.exhausted
        second, third = proposer.propose(_request(), rng), proposer.propose(_request(), rng)
    assert second.children == [] and "cost budget spent" in second.message and proposer.exhausted
    assert [c.outcome for c in second.calls] == ["budget"] and third.calls == []  # the budget is recorded once
    assert proposer.stats()["cost"] == pytest.approx(3.0)


def test_an_endpoint_that_goes_down_trips_the_breaker_and_the_mutator_proposes_until_it_is_back():
    clock = Clock()
    server = ChatServer(responder=strategy_responder()).start()
    with _proposer(server, clock=clock, breaker_failures=2, breaker_cooldown_s=60, max_retries=0) as proposer:
        rng = np.random.default_rng(0)
        assert proposer.propose(_request(), rng).proposer == "llm:m"
        server.stop()
        down = [proposer.propose(_request(), rng) for _ in range(2)]  # two connection failures open the breaker
        assert [p.calls[0].outcome for p in down] == ["connection", "connection"]
        assert all(p.proposer == "mutator" and p.children for p in down)
        outage = proposer.propose(_request(), rng)
        assert outage.proposer == "mutator" and outage.children
        assert [c.outcome for c in outage.calls] == ["unavailable"] and "the endpoint is down" in outage.message
        n_requests = len(server.requests)
        server.start()  # same port
        assert proposer.propose(_request(), rng).calls[0].outcome == "unavailable"  # still cooling down
        clock.now += 61
        probe = proposer.propose(_request(), rng)
        assert probe.proposer == "llm:m" and len(server.requests) == n_requests + 1
    server.stop()
    stats = proposer.stats()
    assert stats["outcomes"]["connection"] == 2 and stats["outcomes"]["unavailable"] == 2
    assert stats["fallback_proposals"] == 4 and stats["programs"] == 2


def test_a_failed_probe_reopens_the_breaker_for_longer():
    clock = Clock()
    server = ChatServer().start()
    server.stop()
    with _proposer(server, clock=clock, breaker_failures=1, breaker_cooldown_s=10, max_retries=0) as proposer:
        rng = np.random.default_rng(0)
        assert proposer.propose(_request(), rng).calls[0].outcome == "connection"
        clock.now += 11
        assert proposer.propose(_request(), rng).calls[0].outcome == "connection"  # the probe fails
        clock.now += 11
        assert proposer.propose(_request(), rng).calls[0].outcome == "unavailable"  # now 20 s
        clock.now += 10
        assert proposer.propose(_request(), rng).calls[0].outcome == "connection"


def test_a_probe_that_finds_the_server_back_but_the_model_failing_benches_the_model_not_the_endpoint():
    clock = Clock()
    server = ChatServer().start()
    server.stop()
    with _proposer(server, clock=clock, breaker_failures=1, breaker_cooldown_s=10, max_retries=0) as proposer:
        rng = np.random.default_rng(0)
        assert proposer.propose(_request(), rng).calls[0].outcome == "connection"
        server.start()
        server.add(Reply(status=500), Reply(content=LR_DIFF))
        clock.now += 11
        assert proposer.propose(_request(), rng).calls[0].outcome == "http_500"  # the probe: the model fails
        assert "the endpoint is down" not in proposer.propose(_request(), rng).message  # the model is benched
        clock.now += 11
        assert proposer.propose(_request(), rng).calls[0].outcome == "ok"
    server.stop()


def test_a_model_that_keeps_failing_is_benched_and_the_other_models_carry_on():
    def respond(body):
        if body["model"] == "broken":
            return Reply(status=404, error="model 'broken' not found")
        return strategy_responder()(body)

    with ChatServer(responder=respond) as server:
        spec = {"base_url": server.base_url, "models": ["broken", "good"], "breaker_failures": 1, **FAST}
        with build_proposer(spec, {}, MutatorProposer()) as proposer:
            rng = np.random.default_rng(3)
            names = [proposer.propose(_request(), rng).proposer for _ in range(12)]
            broken = [r for r in server.requests if r["model"] == "broken"]
    assert len(broken) == 1 and names.count("llm:good") >= 10


def test_a_server_that_never_answers_cannot_hang_a_proposal(server):
    proposal, _ = _propose(server, Reply(hang=True), Reply(hang=True), max_retries=1, timeout_s=0.2)
    assert [c.outcome for c in proposal.calls] == ["timeout", "timeout"] and proposal.proposer == "mutator"


def test_a_dropped_connection_is_retried(server):
    proposal, _ = _propose(server, Reply(drop=True), Reply(content=LR_DIFF))
    assert [c.outcome for c in proposal.calls] == ["connection", "ok"] and len(proposal.children) == 1


def test_500s_that_persist_fall_back_to_the_mutator(server):
    proposal, _ = _propose(server, Reply(status=500), Reply(status=500))
    assert [c.outcome for c in proposal.calls] == ["http_500", "http_500"] and proposal.proposer == "mutator"


# ----------------------------------------------------------------------------- the spec table


def test_the_mutator_is_the_default_and_llm_is_chosen_by_naming_an_endpoint_or_model():
    fallback = MutatorProposer()
    assert build_proposer({}, {}, fallback) is fallback
    assert build_proposer(None, {"OPENAI_BASE_URL": "http://x/v1"}, fallback) is fallback
    assert build_proposer({"kind": "mutator", "crossover_rate": 0.3}, {}, fallback) is fallback
    with build_proposer({"base_url": "http://127.0.0.1:9/v1", "model": "m"}, {}, fallback) as p:
        assert isinstance(p, LLMProposer) and p.config.llm.api_key == "none"


def test_keys_come_from_the_spec_then_the_environment():
    env = {"OPENAI_BASE_URL": "http://env/v1", "OPENAI_API_KEY": "sk-env", "SCALESEARCH_MODELS": "a, llama3.1:8b=2", "MY_KEY": "sk-mine"}
    config = proposer_config({"kind": "llm"}, env)
    assert (config.llm.base_url, config.llm.api_key) == ("http://env/v1", "sk-env")
    assert [(m.name, m.weight) for m in config.llm.models] == [("a", 1.0), ("llama3.1:8b", 2.0)]
    config = proposer_config({"base_url": "http://spec/v1", "api_key_env": "MY_KEY", "model": "m"}, env)
    assert (config.llm.base_url, config.llm.api_key, config.llm.model_names) == ("http://spec/v1", "sk-mine", ("m",))
    section = {
        "model": "m", "base_url": "http://h/v1", "temperature": 0.2, "max_tokens": 100, "timeout_s": 5, "deadline_s": 9,
        "max_retries": 1, "concurrency": 2, "children_per_prompt": 3, "price_in": 0.5, "price_out": 1.5,
        "token_budget": 10_000, "cost_budget": 1.0, "on_budget": "stop", "extra_body": {"top_p": 0.9},
    }  # fmt: skip
    config = proposer_config(section, {})
    assert (config.llm.temperature, config.llm.max_tokens, config.llm.deadline, config.llm.extra_body) == (0.2, 100, 9, {"top_p": 0.9})
    assert (config.concurrency, config.children_per_prompt, config.cost(1_000_000, 1_000_000)) == (2, 3, 2.0)


@pytest.mark.parametrize(
    "section, env, match",
    [
        ({"kind": "llm", "base_url": "http://h/v1"}, {}, "names no model"),
        ({"model": "m"}, {}, "needs a key"),
        ({"model": "m", "api_key_env": "NOPE"}, {}, "not set"),
        ({"model": "m", "base_url": "http://h/v1", "temprature": 0.5}, {}, "unknown key"),
        ({"kind": "gpt"}, {}, "kind must be"),
        ({"model": "m", "base_url": "http://h/v1", "on_budget": "panic"}, {}, "on_budget"),
        ({"models": [{"name": "m", "weight": -1}], "base_url": "http://h/v1"}, {}, "weight"),
    ],
)
def test_bad_spec_tables_are_refused_with_a_message_that_says_what_to_fix(section, env, match):
    with pytest.raises(ValueError, match=match):
        build_proposer(section, env, MutatorProposer())
