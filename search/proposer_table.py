"""The campaign spec's ``[proposer]`` table: which proposer, which endpoint and models, which limits.

``build_proposer`` reads the table (the spec wins over the environment) and
returns the built-in mutator or an ``LLMProposer`` (``search.llm_propose``) with
the mutator as its fallback. Unknown keys and bad values are errors that name
the key, before the campaign's database is created.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from search.llm import LLMConfig, ModelChoice
from search.llm_propose import LLMProposer, ProposerConfig
from search.mutate import MutatorConfig
from search.propose import Proposer

_LLM_KEYS = {f.name for f in dataclasses.fields(LLMConfig)} - {"models", "api_key", "base_url", "extra_body", "headers"}
_PROPOSER_KEYS = {f.name for f in dataclasses.fields(ProposerConfig)} - {"llm"}
_OTHER_KEYS = {"kind", "base_url", "api_key", "api_key_env", "models", "model", "extra_body", "headers", "mutator"}
_MUTATOR_KEYS = {f.name for f in dataclasses.fields(MutatorConfig)}  # the runner's; accepted, not ours
KEYS = frozenset(_LLM_KEYS | _PROPOSER_KEYS | _OTHER_KEYS | _MUTATOR_KEYS)


def build_proposer(section: Mapping[str, Any] | None, environ: Mapping[str, str], fallback: Proposer) -> Proposer:
    """The proposer the campaign spec's ``[proposer]`` table asks for.

    Keys (all optional; the spec wins over the environment):

    - ``kind``: ``"mutator"`` (the fallback, offline) or ``"llm"``; default ``"llm"`` when the table
      names ``base_url``, ``model`` or ``models``, else ``"mutator"``.
    - ``base_url``: the OpenAI-compatible endpoint, e.g. ``"http://localhost:8000/v1"`` (vLLM),
      ``"http://localhost:11434/v1"`` (Ollama); default ``$SCALESEARCH_BASE_URL``, then
      ``$OPENAI_BASE_URL``, then OpenAI's own API.
    - ``api_key``: the key itself (better kept out of specs); ``api_key_env``: the name of the
      environment variable that holds it (an error if it is not set); otherwise
      ``$SCALESEARCH_API_KEY``, then ``$OPENAI_API_KEY``, then a dummy for servers that need none
      (OpenAI's own API needs a key: an error).
    - ``models``: the ensemble, ``[{name = "qwen2.5-coder-32b", weight = 3}, {name = "llama3.1-8b"}]``
      or ``["a", "b"]`` (weight 1 each); ``model = "name"`` for one; default
      ``$SCALESEARCH_MODELS`` (``"a,b=3"``: comma-separated, optional ``=weight``). Each proposal
      draws one model by weight.
    - ``temperature`` (0.8), ``max_tokens`` (4096), ``max_tokens_field`` (``"max_tokens"``, or
      ``"max_completion_tokens"`` for OpenAI's reasoning models), ``system_prompt``,
      ``extra_body`` (a table of extra request fields, e.g. ``{top_p = 0.95}``), ``headers``.
    - ``timeout_s`` (120, per HTTP attempt), ``connect_timeout_s`` (10), ``deadline_s`` (hard limit
      on one call with its retries; default ``timeout_s * (max_retries + 1) + max_backoff_s``),
      ``max_retries`` (3), ``backoff_s`` (1), ``max_backoff_s`` (30), ``max_retry_after_s`` (120).
    - ``concurrency`` (4): requests in flight at once; ``children_per_prompt``: answers per prompt
      (default: what the runner asks for); ``repair`` (true): one repair round for a diff that does
      not apply or a program the static stage refuses.
    - ``price_in``, ``price_out``: price per million input / output tokens (cost recorded per call);
      ``token_budget``, ``cost_budget``: when spent, ``on_budget`` decides: ``"mutator"`` (default,
      the built-in mutator proposes from then on) or ``"stop"`` (no more children;
      ``proposer.exhausted`` becomes true).
    - ``breaker_failures`` (3), ``breaker_cooldown_s`` (60), ``breaker_max_cooldown_s`` (900, or the cool-down if longer): the
      circuit breaker; ``fallback_when_empty`` (true): the mutator proposes when no answer was usable.

    Keys of the built-in mutator's config (``crossover_rate`` ...) and a ``mutator`` sub-table are
    accepted and left to the caller, which builds ``fallback``.

    Raises:
      ValueError: an unknown key, a bad value, or no way to reach a model.
    """
    section = dict(section or {})
    if unknown := sorted(set(section) - KEYS):
        raise ValueError(f"[proposer]: unknown key(s) {unknown}; known keys are {sorted(KEYS)}")
    kind = section.get("kind", "llm" if {"base_url", "model", "models"} & set(section) else "mutator")
    if kind == "mutator":
        return fallback
    if kind != "llm":
        raise ValueError(f"[proposer] kind must be 'mutator' or 'llm', got {kind!r}")
    return LLMProposer(proposer_config(section, environ), fallback)


def proposer_config(section: Mapping[str, Any], environ: Mapping[str, str]) -> ProposerConfig:
    """The ``ProposerConfig`` of a ``[proposer]`` table (see ``build_proposer``)."""
    base_url = section.get("base_url") or environ.get("SCALESEARCH_BASE_URL") or environ.get("OPENAI_BASE_URL") or None
    llm = LLMConfig(
        models=_models(section, environ),
        base_url=base_url,
        api_key=_api_key(section, environ, base_url),
        extra_body=dict(section.get("extra_body", {})),
        headers={str(k): str(v) for k, v in dict(section.get("headers", {})).items()},
        **{k: section[k] for k in _LLM_KEYS if k in section},
    )
    return ProposerConfig(llm=llm, **{k: section[k] for k in _PROPOSER_KEYS if k in section})


def _api_key(section: Mapping[str, Any], environ: Mapping[str, str], base_url: str | None) -> str:
    if section.get("api_key"):
        return str(section["api_key"])
    if name := section.get("api_key_env"):
        if not environ.get(name):
            raise ValueError(f"[proposer] api_key_env names {name!r}, which is not set in the environment")
        return environ[name]
    key = environ.get("SCALESEARCH_API_KEY") or environ.get("OPENAI_API_KEY")
    if key:
        return key
    if base_url is None:
        raise ValueError("[proposer] kind 'llm' without base_url talks to OpenAI's API, which needs a key: "
                         "set OPENAI_API_KEY (or api_key_env), or give the base_url of your own server")
    return "none"  # local servers (vLLM, Ollama, llama.cpp, LM Studio) accept any key


def _models(section: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[ModelChoice, ...]:
    raw = section.get("models")
    if raw is None and section.get("model"):
        raw = [section["model"]]
    if raw is None and environ.get("SCALESEARCH_MODELS"):
        raw = []
        for item in environ["SCALESEARCH_MODELS"].split(","):
            name, _, weight = item.strip().partition("=")  # not ':', which Ollama's names use (llama3.1:8b)
            raw.append({"name": name.strip(), "weight": float(weight)} if weight else {"name": name.strip()})
    if not raw:
        raise ValueError("[proposer] names no model: set models = [{name = ..., weight = ...}] or model = \"...\"")
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append(ModelChoice(item))
        elif isinstance(item, Mapping) and set(item) <= {"name", "weight"} and "name" in item:
            out.append(ModelChoice(str(item["name"]), float(item.get("weight", 1.0))))
        else:
            raise ValueError(f"[proposer] models: each entry is a name or {{name, weight}}, got {item!r}")
    return tuple(out)
