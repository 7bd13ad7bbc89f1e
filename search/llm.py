"""The language-model client: any OpenAI-compatible endpoint, with retries and a hard deadline.

``OpenAIChat.complete(messages, model)`` sends one chat completion through the
real ``openai`` client and never raises and never hangs: it returns the list of
``Attempt``s it made, the last one being the answer or the final failure.

- The ``openai`` client's own retries are off (``max_retries=0``) so that every
  attempt is seen and recorded; this module retries HTTP 408, 409, 429 and
  5xx, timeouts and connection errors, up to ``max_retries`` times, with
  exponential backoff and jitter, and honours ``Retry-After`` (and
  ``retry-after-ms``) when the server sends it, as long as the wait fits in
  the deadline.
- Each HTTP attempt runs in a daemon thread, and the caller waits for it at
  most until the call's hard deadline (``deadline_s`` from the first attempt,
  retries included). The client's own timeouts (``timeout_s``, per read) stop
  a silent server; the deadline also stops one that trickles bytes forever.
  An abandoned attempt finishes on its own in the background.
- An answer cut by the length limit (``finish_reason`` ``length``), an empty
  answer, a content-filter stop and a malformed body are failures with their
  own outcome, not answers.
- Usage missing from a response is estimated at four characters per token
  and the attempt says so.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

Message = dict[str, str]

DEFAULT_SYSTEM_PROMPT = (
    "You are an expert in deep learning and JAX who improves small language models and their "
    "training recipes. Answer with one sentence that says what you change and why, then the change "
    "as SEARCH/REPLACE blocks or as whole evolve blocks in a ```python fence. Nothing else."
)
RETRYABLE_STATUS = frozenset({408, 409, 429})
# Outcomes that mean the endpoint (or this model on it) did not answer; they feed the circuit breaker.
CONNECTION_OUTCOMES = frozenset({"timeout", "connection"})


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One model of the ensemble and its weight (the probability of a draw is proportional to it)."""

    name: str
    weight: float = 1.0

    def __post_init__(self):
        if not self.name:
            raise ValueError("a model needs a name")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"model {self.name!r}: weight must be a positive number, got {self.weight!r}")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """How to reach the endpoint and what to ask it.

    Attributes:
      models: the ensemble; each proposal draws one model by weight.
      base_url: the endpoint (``http://localhost:8000/v1``); None for OpenAI's own.
      api_key: the key sent as a bearer token (any dummy for servers that need none).
      temperature: sampling temperature.
      max_tokens: the answer's token limit; an answer that reaches it is a failure.
      max_tokens_field: the request field that carries it: ``max_tokens`` (vLLM, Ollama, llama.cpp,
        LM Studio) or ``max_completion_tokens`` (OpenAI's reasoning models).
      timeout_s: the client's timeout per HTTP attempt (each read, write and the pool wait).
      connect_timeout_s: the connect timeout (a server that is down fails fast).
      deadline_s: hard limit on one call, retries and waits included; None: ``timeout_s * (max_retries + 1)
        + max_backoff_s``.
      max_retries: further attempts after a retryable failure.
      backoff_s: the first backoff; it doubles per retry, with up to 25% jitter.
      max_backoff_s: the longest backoff.
      max_retry_after_s: the longest ``Retry-After`` honoured; a longer one ends the call (``http_429``).
      system_prompt: the system message.
      extra_body: extra request fields, sent as they are (``{"top_p": 0.95}``, vLLM's ``{"min_p": 0.05}``).
      headers: extra HTTP headers.
    """

    models: tuple[ModelChoice, ...]
    base_url: str | None = None
    api_key: str = "none"
    temperature: float = 0.8
    max_tokens: int = 4096
    max_tokens_field: str = "max_tokens"
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    deadline_s: float | None = None
    max_retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    extra_body: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.models:
            raise ValueError("no models: name at least one model the endpoint serves")
        if len({m.name for m in self.models}) != len(self.models):
            raise ValueError(f"a model is named twice: {[m.name for m in self.models]}")
        if self.max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(f"max_tokens_field must be max_tokens or max_completion_tokens, got {self.max_tokens_field!r}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature!r}")
        for name in ("max_tokens", "timeout_s", "connect_timeout_s", "backoff_s", "max_backoff_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {self.deadline_s!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries!r}")

    @property
    def deadline(self) -> float:
        """The hard limit on one call, in seconds."""
        if self.deadline_s is not None:
            return self.deadline_s
        return self.timeout_s * (self.max_retries + 1) + self.max_backoff_s

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)


def draw_model(models: Sequence[ModelChoice], rng: np.random.Generator) -> ModelChoice:
    """One model, with probability proportional to its weight.

    Raises:
      ValueError: no models.
    """
    if not models:
        raise ValueError("no models to draw from")
    weights = np.array([m.weight for m in models], dtype=float)
    return models[int(rng.choice(len(models), p=weights / weights.sum()))]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One HTTP attempt and what came of it.

    Attributes:
      model: the model asked.
      outcome: ``ok``, ``length``, ``empty``, ``content_filter``, ``bad_response``, ``timeout``,
        ``connection``, ``http_<status>``, ``cancelled``.
      latency_s: from sending to the answer (or the failure).
      tokens_in, tokens_out: usage as reported (estimated when the endpoint sent none).
      message: what went wrong, or a note (``usage estimated``, ``retried after ...``).
      text: the answer's content (ok, and length cuts for the record).
      finish_reason: as the endpoint sent it.
      retry_after: the server's Retry-After in seconds, when it sent one.
      usage_estimated: the endpoint sent no usage.
    """

    model: str
    outcome: str
    latency_s: float
    tokens_in: int = 0
    tokens_out: int = 0
    message: str = ""
    text: str = ""
    finish_reason: str | None = None
    retry_after: float | None = None
    usage_estimated: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def answered(self) -> bool:
        """The endpoint answered with a completion (good or not): it is up."""
        return self.outcome in ("ok", "length", "empty", "content_filter")

    @property
    def retryable(self) -> bool:
        if self.outcome in CONNECTION_OUTCOMES:
            return True
        if self.outcome.startswith("http_"):
            status = int(self.outcome[5:])
            return status in RETRYABLE_STATUS or status >= 500
        return False


class ChatClient(Protocol):
    """What the proposer needs from a client (``OpenAIChat``, or a fake in tests)."""

    def complete(
        self, messages: Sequence[Message], model: str, rng: np.random.Generator | None = None
    ) -> list[Attempt]: ...

    def close(self) -> None: ...


def estimate_tokens(text: str) -> int:
    """About four characters per token: for endpoints that report no usage."""
    return (len(text) + 3) // 4


def retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), if given."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - now()
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
        return max(0.0, seconds) if math.isfinite(seconds) else None
    return None


def _short(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OpenAIChat:
    """Chat completions through the real ``openai`` client (thread-safe; see the module docstring).

    Args:
      config: where and how to ask.
      clock: monotonic seconds, for latencies and the deadline.
    """

    def __init__(self, config: LLMConfig, *, clock: Callable[[], float] = time.monotonic):
        import httpx2
        import openai

        self.config = config
        self.clock = clock
        self._openai = openai
        self._httpx = httpx2
        self._closed = threading.Event()
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "none",
            max_retries=0,  # retries are ours, so that each attempt is seen and recorded
            timeout=self._timeout(config.timeout_s),
            default_headers=dict(config.headers) or None,
        )

    def _timeout(self, seconds: float):
        return self._httpx.Timeout(seconds, connect=min(seconds, self.config.connect_timeout_s))

    def close(self) -> None:
        """Stop: waits for a retry end at once, and the HTTP client is closed."""
        self._closed.set()
        self._client.close()

    def models(self) -> list[str]:
        """The model names the endpoint lists (``GET /models``); raises the client's errors."""
        return [m.id for m in self._client.models.list(timeout=self._timeout(self.config.timeout_s))]

    # ------------------------------------------------------------------ one call, with retries
    def complete(
        self, messages: Sequence[Message], model: str, rng: np.random.Generator | None = None
    ) -> list[Attempt]:
        """Ask ``model``; the last attempt returned is the answer or the final failure."""
        rng = rng if rng is not None else np.random.default_rng()
        deadline = self.clock() + self.config.deadline
        attempts: list[Attempt] = []
        for retry in range(self.config.max_retries + 1):
            remaining = deadline - self.clock()
            if remaining <= 0 or self._closed.is_set():
                break
            attempt = self._attempt(messages, model, min(self.config.timeout_s, remaining))
            if attempt.ok or not attempt.retryable or retry == self.config.max_retries or self._closed.is_set():
                return attempts + [attempt]
            wait, why = self._wait(attempt, retry, rng)
            if wait is None or wait >= deadline - self.clock():
                limit = "its Retry-After" if attempt.retry_after is not None else "the backoff"
                note = f"{why}; not retried: {limit} does not fit in the {self.config.deadline:g} s deadline"
                return attempts + [dataclasses.replace(attempt, message=_short(f"{attempt.message}; {note}"))]
            attempts.append(dataclasses.replace(attempt, message=_short(f"{attempt.message}; retried after {why}")))
            if self._closed.wait(wait):
                break
        outcome = "cancelled" if self._closed.is_set() else "timeout"
        message = "the client was closed" if self._closed.is_set() else f"deadline of {self.config.deadline:g} s reached"
        return attempts + [Attempt(model, outcome, 0.0, message=message)]

    def _wait(self, attempt: Attempt, retry: int, rng: np.random.Generator) -> tuple[float | None, str]:
        if attempt.retry_after is not None:
            if attempt.retry_after > self.config.max_retry_after_s:
                return None, f"Retry-After {attempt.retry_after:g} s is over max_retry_after_s"
            return attempt.retry_after, f"{attempt.retry_after:g} s (Retry-After)"
        base = min(self.config.max_backoff_s, self.config.backoff_s * 2.0**retry)
        wait = base * (1 - 0.25 * float(rng.random()))
        return wait, f"{wait:.2g} s (backoff)"

    def _attempt(self, messages: Sequence[Message], model: str, timeout: float) -> Attempt:
        """One HTTP request in a daemon thread, waited for at most ``timeout`` plus a little."""
        box: list[Attempt] = []
        start = self.clock()
        thread = threading.Thread(target=lambda: box.append(self._request(messages, model, timeout, start)), daemon=True)
        thread.start()
        # The client's timeout is per read; the join is the hard limit. The grace lets the client report first.
        thread.join(timeout + min(1.0, 0.1 * timeout + 0.05))
        if box:
            return box[0]
        return Attempt(model, "timeout", self.clock() - start, message=f"no complete answer within {timeout:g} s (hard limit)")

    def _request(self, messages: Sequence[Message], model: str, timeout: float, start: float) -> Attempt:
        openai = self._openai
        kwargs: dict[str, Any] = {self.config.max_tokens_field: self.config.max_tokens}
        if self.config.extra_body:
            kwargs["extra_body"] = dict(self.config.extra_body)
        try:
            completion = self._client.chat.completions.create(
                model=model,
                messages=list(messages),
                temperature=self.config.temperature,
                timeout=self._timeout(timeout),
                **kwargs,
            )
        except openai.APITimeoutError:
            return Attempt(model, "timeout", self.clock() - start, message=f"no answer within {timeout:g} s")
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            return Attempt(model, "connection", self.clock() - start, message=_short(f"{type(cause).__name__}: {cause}"))
        except openai.APIStatusError as e:
            headers = dict(e.response.headers)
            return Attempt(
                model,
                f"http_{e.status_code}",
                self.clock() - start,
                message=_short(f"HTTP {e.status_code}: {e.message}"),
                retry_after=retry_after(headers),
            )
        except Exception as e:  # a body that is not JSON, or not a completion: a failed call, never a crash
            return Attempt(model, "bad_response", self.clock() - start, message=_short(f"{type(e).__name__}: {e}"))
        return read_completion(completion, model, messages, self.clock() - start, self.config.max_tokens)


def read_completion(completion: Any, model: str, messages: Sequence[Message], latency: float, max_tokens: int) -> Attempt:
    """The ``Attempt`` for a parsed completion; defensive, since servers send all sorts of shapes."""
    try:
        choices = completion.choices
        if not isinstance(choices, list) or not choices:
            return Attempt(model, "bad_response", latency, message="the response has no choices")
        choice = choices[0]
        finish = getattr(choice, "finish_reason", None)
        content = choice.message.content if choice.message is not None else None
        if content is not None and not isinstance(content, str):
            return Attempt(model, "bad_response", latency, message=f"the content is a {type(content).__name__}, not text")
        content = content or ""
        reasoning = getattr(choice.message, "reasoning_content", None) or getattr(choice.message, "reasoning", None) or ""
    except AttributeError as e:
        return Attempt(model, "bad_response", latency, message=_short(f"malformed completion: {e}"))
    tokens_in, tokens_out, estimated = _usage(completion, messages, content + str(reasoning))
    note = "usage estimated (the endpoint reported none)" if estimated else ""
    common = dict(tokens_in=tokens_in, tokens_out=tokens_out, text=content, finish_reason=finish, usage_estimated=estimated)
    if finish == "length":
        message = f"cut off at the length limit (max_tokens {max_tokens}, {tokens_out} tokens out)"
        return Attempt(model, "length", latency, message=message, **common)
    if finish == "content_filter":
        return Attempt(model, "content_filter", latency, message="stopped by the endpoint's content filter", **common)
    if not content.strip():
        return Attempt(model, "empty", latency, message=_short(f"empty answer (finish_reason {finish}) {note}"), **common)
    return Attempt(model, "ok", latency, message=note, **common)


def _usage(completion: Any, messages: Sequence[Message], answer: str) -> tuple[int, int, bool]:
    usage = getattr(completion, "usage", None)
    tokens_in = getattr(usage, "prompt_tokens", None)
    tokens_out = getattr(usage, "completion_tokens", None)
    if isinstance(tokens_in, int) and isinstance(tokens_out, int):
        return tokens_in, tokens_out, False
    prompt = "".join(str(m.get("content", "")) for m in messages)
    return estimate_tokens(prompt), estimate_tokens(answer), True
