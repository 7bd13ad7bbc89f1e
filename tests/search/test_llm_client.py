"""The chat client on the real ``openai`` client against a scripted local server: every failure is an outcome."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for chat_server (tests/ is not a package)

from chat_server import ChatServer, Reply  # noqa: E402

from search.llm import LLMConfig, ModelChoice, OpenAIChat, draw_model, retry_after  # noqa: E402

MESSAGES = [{"role": "user", "content": "improve the program"}]


def _chat(server: ChatServer, **kw) -> OpenAIChat:
    settings = dict(timeout_s=0.4, connect_timeout_s=0.4, max_retries=2, backoff_s=0.01, max_backoff_s=0.02)
    settings.update(kw)
    return OpenAIChat(LLMConfig(models=(ModelChoice("m"),), base_url=server.base_url, **settings))


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


def _complete(server, *replies, **kw):
    server.add(*replies)
    chat = _chat(server, **kw)
    try:
        return chat.complete(MESSAGES, "m", np.random.default_rng(0))
    finally:
        chat.close()


def test_a_good_answer_comes_back_with_its_usage_and_the_request_carries_the_settings(server):
    [a] = _complete(server, Reply(content="hello"), temperature=0.3, max_tokens=77)
    assert (a.outcome, a.text, a.finish_reason, a.usage_estimated) == ("ok", "hello", "stop", False)
    assert a.tokens_in > 0 and a.tokens_out > 0
    body = server.requests[0]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("m", 0.3, 77)


def test_the_max_completion_tokens_field_and_extra_body_are_sent_when_configured(server):
    _complete(server, Reply(content="x"), max_tokens_field="max_completion_tokens", extra_body={"top_p": 0.9})
    body = server.requests[0]
    assert body["max_completion_tokens"] == 4096 and "max_tokens" not in body and body["top_p"] == 0.9


def test_missing_usage_is_estimated_and_said_so(server):
    [a] = _complete(server, Reply(content="x" * 400, usage=None))
    assert a.ok and a.usage_estimated and a.tokens_out == 100 and "usage estimated" in a.message


def test_429_with_retry_after_is_retried_after_the_servers_wait(server):
    attempts = _complete(server, Reply(status=429, headers={"Retry-After": "0.05"}), Reply(content="ok now"))
    assert [a.outcome for a in attempts] == ["http_429", "ok"]
    assert "retried after 0.05 s (Retry-After)" in attempts[0].message
    assert len(server.requests) == 2


def test_a_retry_after_longer_than_allowed_ends_the_call(server):
    attempts = _complete(server, Reply(status=429, headers={"Retry-After": "600"}), max_retry_after_s=5)
    assert [a.outcome for a in attempts] == ["http_429"] and "not retried" in attempts[0].message
    assert len(server.requests) == 1


def test_500s_are_retried_with_backoff_until_the_retries_run_out(server):
    attempts = _complete(server, Reply(status=500), Reply(status=503), Reply(status=502))
    assert [a.outcome for a in attempts] == ["http_500", "http_503", "http_502"]
    assert "(backoff)" in attempts[0].message and len(server.requests) == 3
    server.add(Reply(status=500), Reply(content="fine"))
    assert [a.outcome for a in _complete(server)] == ["http_500", "ok"]


def test_client_errors_are_not_retried(server):
    attempts = _complete(server, Reply(status=404, error="model 'm' not found"))
    assert [a.outcome for a in attempts] == ["http_404"] and "not found" in attempts[0].message


def test_a_server_that_never_answers_hits_the_timeout(server):
    attempts = _complete(server, Reply(hang=True), Reply(hang=True), max_retries=1, timeout_s=0.2)
    assert [a.outcome for a in attempts] == ["timeout", "timeout"]


def test_a_server_that_trickles_bytes_forever_is_cut_by_the_hard_limit(server):
    attempts = _complete(server, Reply(trickle=True), max_retries=0, timeout_s=0.3)
    assert [a.outcome for a in attempts] == ["timeout"] and "hard limit" in attempts[0].message


def test_the_hard_deadline_bounds_a_call_whatever_the_retries(server):
    attempts = _complete(server, *[Reply(hang=True)] * 5, max_retries=5, timeout_s=0.2, deadline_s=0.3)
    assert attempts[-1].outcome == "timeout"
    assert len(attempts) < 6  # the deadline, not the retry count, ended the call


def test_a_dropped_connection_is_a_connection_error_and_is_retried(server):
    attempts = _complete(server, Reply(drop=True), Reply(content="back"))
    assert [a.outcome for a in attempts] == ["connection", "ok"]


def test_a_stopped_server_is_a_connection_error():
    server = ChatServer().start()
    server.stop()
    attempts = _complete(server, max_retries=1)
    assert [a.outcome for a in attempts] == ["connection", "connection"]


@pytest.mark.parametrize(
    "reply, outcome",
    [
        (Reply(content="half a progr", finish_reason="length"), "length"),
        (Reply(content=""), "empty"),
        (Reply(content=None), "empty"),
        (Reply(content="no", finish_reason="content_filter"), "content_filter"),
        (Reply(raw=b"<html>bad gateway</html>"), "bad_response"),
        (Reply(raw=b'{"choices": "nonsense"}'), "bad_response"),
        (Reply(choices=False), "bad_response"),
    ],
)
def test_answers_that_are_not_answers_are_failures_with_their_own_outcome(server, reply, outcome):
    attempts = _complete(server, reply)
    assert [a.outcome for a in attempts] == [outcome]
    assert len(server.requests) == 1  # an answer, however bad, is not retried


def test_a_length_cut_keeps_its_usage_for_the_accounts(server):
    [a] = _complete(server, Reply(content="x" * 40, finish_reason="length", usage={"prompt_tokens": 5, "completion_tokens": 9}))
    assert (a.tokens_in, a.tokens_out) == (5, 9) and "length limit" in a.message


def test_the_endpoint_lists_its_models(server):
    chat = _chat(server)
    try:
        assert chat.models() == ["test-model"]
    finally:
        chat.close()


def test_retry_after_reads_seconds_milliseconds_and_dates():
    assert retry_after({"Retry-After": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=lambda: 1445412480.0) == 10.0
    assert retry_after({"Retry-After": "soon"}) is None and retry_after({}) is None


def test_models_are_drawn_in_proportion_to_their_weights():
    models = (ModelChoice("big", 3.0), ModelChoice("small", 1.0))
    rng = np.random.default_rng(0)
    draws = [draw_model(models, rng).name for _ in range(4000)]
    assert abs(draws.count("big") / 4000 - 0.75) < 0.03


def test_bad_settings_are_refused_with_the_offending_value():
    with pytest.raises(ValueError, match="no models"):
        LLMConfig(models=())
    with pytest.raises(ValueError, match="weight"):
        ModelChoice("m", 0.0)
    with pytest.raises(ValueError, match="max_tokens_field"):
        LLMConfig(models=(ModelChoice("m"),), max_tokens_field="tokens")
    with pytest.raises(ValueError, match="timeout_s"):
        LLMConfig(models=(ModelChoice("m"),), timeout_s=0)
    assert LLMConfig(models=(ModelChoice("m"),), timeout_s=10, max_retries=2, max_backoff_s=5).deadline == 35
