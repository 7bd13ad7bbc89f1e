"""A campaign end to end against a scripted endpoint that goes down half way: the mutator takes over, the outage is recorded."""

import collections
import io
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for chat_server (tests/ is not a package)

from chat_server import ChatServer, strategy_responder  # noqa: E402

campaign = pytest.importorskip("search.campaign", reason="the runner (search/campaign.py) is not there yet")

from rich.console import Console  # noqa: E402

from db import schema  # noqa: E402
from proxy_models.program import seed_source  # noqa: E402
from search.config import SPEC_TEMPLATE, load_spec  # noqa: E402


class StopServerAfter:
    """Passes proposals through, and stops the endpoint before proposal number ``n`` (0-based)."""

    def __init__(self, inner, server: ChatServer, n: int):
        self.inner, self.server, self.n, self.count = inner, server, n, 0

    def propose(self, request, rng):
        if self.count == self.n:
            self.server.stop()
        self.count += 1
        return self.inner.propose(request, rng)


def _spec(root: pathlib.Path, base_url: str, candidates: int):
    root.mkdir(parents=True, exist_ok=True)
    (root / "seed.py").write_text(seed_source("reference"))
    proposer = (
        f'kind = "llm"\nbase_url = "{base_url}"\nmodels = [{{name = "stand-in"}}]\n'
        "timeout_s = 0.5\nconnect_timeout_s = 0.5\nmax_retries = 1\nbackoff_s = 0.01\nmax_backoff_s = 0.02\n"
        "breaker_failures = 2\nbreaker_cooldown_s = 3600\n"
    )
    text = SPEC_TEMPLATE.format(name="llm-e2e", spec_name="campaign.toml")
    text = text.replace("candidates = 40", f"candidates = {candidates}").replace("simulate = false", "simulate = true")
    text = text.replace('kind = "mutator"               # "llm" for an OpenAI-compatible endpoint:\n', proposer)
    (root / "campaign.toml").write_text(text)
    return load_spec(root / "campaign.toml")


# search/campaign.py reads the spec with open(...).read() and leaves the file to the garbage collector.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <_io.FileIO name=.*campaign.toml:pytest.PytestUnraisableExceptionWarning")
def test_a_campaign_runs_on_the_endpoint_and_carries_on_with_the_mutator_when_it_goes_down(tmp_path):
    server = ChatServer(responder=strategy_responder(), models=("stand-in",)).start()
    spec = _spec(tmp_path, server.base_url, candidates=16)
    proposer = campaign.build_proposer(spec)
    out = io.StringIO()
    try:
        code = campaign.run_campaign(spec, console=Console(file=out, width=160), proposer=StopServerAfter(proposer, server, 3))
    finally:
        server.stop()
        proposer.close()
    assert code == 0, out.getvalue()

    db = schema.connect(spec.resolve(spec.database))
    calls = list(db["proposer_calls"].rows)
    outcomes = collections.Counter(c["outcome"] for c in calls)
    by_proposer = collections.Counter(p["proposer"] for p in db["programs"].rows)
    steps = list(db["steps"].rows)
    # before the outage: the model's programs, one per call
    assert by_proposer["llm:stand-in"] >= 4 and outcomes["ok"] == by_proposer["llm:stand-in"]
    # the outage: connection failures open the breaker, then every step records it and the mutator proposes
    assert outcomes["connection"] >= 2 and outcomes["unavailable"] >= 1 and by_proposer["mutator"] >= 4
    assert any("LLM unavailable" in s["message"] for s in steps), [s["message"] for s in steps]
    assert all(c["prompt_id"] is not None for c in calls if c["outcome"] == "ok")
    assert sum(c["tokens_in"] for c in calls) > 0
    assert "llm-e2e" in out.getvalue() or "campaign" in out.getvalue()
