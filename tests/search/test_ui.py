"""scalesearch ui: Datasette in-process over the recorded campaign; canned queries answer, writes are refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for recorded_campaign (tests/ is not a package)

from recorded_campaign import BEST, FAILED, campaign_path  # noqa: E402
from search import datasette_ui, inspection  # noqa: E402
from search.cli import main  # noqa: E402

pytest.importorskip("datasette", reason="Datasette is the optional extra 'ui'")


@pytest.fixture(scope="module")
def client():
    ds = datasette_ui.make_datasette(campaign_path())

    def get(path: str, **kwargs):
        async def go():
            await ds.invoke_startup()
            return await ds.client.get(path, **kwargs)

        return asyncio.run(go())

    return get


def _rows(client, path: str) -> list[dict]:
    response = client(path)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def test_the_leaderboard_query_ranks_candidates_as_scalesearch_top_does(client):
    rows = _rows(client, "/campaign/leaderboard.json?_shape=array")
    expected = inspection.leaderboard(inspection.open_readonly(campaign_path()))
    assert [r["program"] for r in rows] == [r["id"] for r in expected]
    assert rows[0]["program"] == BEST and rows[0]["predicted_loss"] == pytest.approx(expected[0]["loss"], abs=1e-4)
    assert all(r["low"] <= r["predicted_loss"] <= r["high"] for r in rows)


def test_the_lineage_query_walks_every_ancestor_by_generation(client):
    rows = _rows(client, f"/campaign/lineage.json?_shape=array&id={BEST}")
    assert [(r["generation"], r["program"]) for r in rows] == [(0, 5), (1, 3), (2, 1)]
    assert rows[0]["predicted_loss"] is not None


def test_the_failure_queries_count_and_list_by_status(client):
    counts = _rows(client, "/campaign/failures_by_status.json?_shape=array")
    programs = {r["status"]: r["n"] for r in counts if r["what"] == "program"}
    runs = {r["status"]: r["n"] for r in counts if r["what"] == "run"}
    assert programs == {str(s): 1 for s in FAILED.values()}
    assert runs == {"diverged": 1, "pruned": 1, "timeout": 1}
    assert all(r["latest_message"] for r in counts)
    timeouts = _rows(client, "/campaign/failures.json?_shape=array&status=timeout")
    assert [(r["program"], r["status"]) for r in timeouts] == [(3, "timeout")]
    assert len(_rows(client, "/campaign/failures.json?_shape=array&status=")) == 8


def test_tables_are_described(client):
    meta = client("/-/metadata.json").json()
    tables = meta["databases"]["campaign"]["tables"]
    assert {"programs", "runs", "fits"} <= set(tables) and "predicted loss at C*" in tables["fits"]["description"]


def test_writes_are_refused_and_the_file_is_unchanged(client):
    path = campaign_path()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for sql in ("DELETE FROM programs", "UPDATE fits SET loss_at_c_star = 0", "DROP TABLE runs",
                "INSERT INTO programs (source, proposer, stage) VALUES ('x', 'y', 0)"):
        response = client("/campaign.json", params={"sql": sql})
        assert response.status_code == 400 and response.json()["ok"] is False
    assert _rows(client, "/campaign.json?_shape=array&sql=select+count(*)+as+n+from+programs")[0]["n"] == 10
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_server_binds_localhost_read_only(tmp_path):
    meta = datasette_ui.write_metadata(campaign_path(), tmp_path)
    assert json.loads(meta.read_text())["databases"]["campaign"]["queries"].keys() >= {"leaderboard", "lineage"}
    cmd = datasette_ui.serve_command(campaign_path(), meta, port=8123, immutable=True)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--immutable" in cmd
    live = datasette_ui.serve_command(campaign_path(), meta, port=8123, immutable=False)
    assert "--immutable" not in live and "0.0.0.0" not in live


def test_a_campaign_with_an_open_write_ahead_log_is_served_live(tmp_path):
    db = tmp_path / "c.sqlite"
    db.write_bytes(campaign_path().read_bytes())
    assert not datasette_ui.is_live(db)
    pathlib.Path(f"{db}-wal").write_bytes(b"\0" * 32)
    assert datasette_ui.is_live(db)


def test_without_datasette_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(datasette_ui, "available", lambda: False)
    assert main(["ui", str(campaign_path())]) == 2
    assert "pip install 'scalesearch[ui]'" in capsys.readouterr().err
