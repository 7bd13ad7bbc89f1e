"""Opening a campaign: created whole or not at all, and resumed only by a spec that still describes it."""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import sys

import pytest
from rich.console import Console

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # test_loop's helpers (tests/ is not a package)

from db import query, schema  # noqa: E402
from proxy_models.program import seed_source  # noqa: E402
from search.cli import main  # noqa: E402
from search.config import load_spec  # noqa: E402
from search.loop import NoParents  # noqa: E402
from search.inspection import campaign_status  # noqa: E402
from search.opening import (RESUMABLE, CampaignMismatch, open_campaign, resumed_changes, spec_differences,  # noqa: E402
                            spec_json)
from search.views import status_view  # noqa: E402
from test_loop import make_spec, run_loop  # noqa: E402


def _open(spec):
    db = schema.connect(spec.resolve(spec.database))
    try:
        return open_campaign(spec, db, "")
    finally:
        db.conn.close()


def _edit(root: pathlib.Path, old: str, new: str):
    path = root / "campaign.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return load_spec(path)


def test_a_spec_that_fails_half_way_leaves_no_campaign_and_the_fixed_one_creates_it(tmp_path):
    spec = make_spec(tmp_path)
    (tmp_path / "reference.py").unlink()  # the comparison program is read after the seed
    with pytest.raises(FileNotFoundError, match=r"\[campaign\] compare: cannot read .*reference.py"):
        _open(spec)
    db = schema.connect(spec.resolve(spec.database))
    assert query.campaign(db) is None and not query.programs(db) and not query.runs(db)
    (tmp_path / "reference.py").write_text(seed_source("reference"))
    assert _open(spec) is True
    assert [p.proposer for p in query.programs(db)] == ["seed", "compare"] and len(query.runs(db)) == 4


def test_budgets_workers_and_the_proposer_may_change_on_resume(tmp_path):
    spec = make_spec(tmp_path, candidates=3)
    run_loop(spec)
    spec = _edit(tmp_path, "candidates = 3", "candidates = 5")
    spec = _edit(tmp_path, "workers = 0", "workers = 3")
    spec = _edit(tmp_path, 'kind = "mutator"', 'kind = "mutator"\nedit_weights = {learning_rate = 9}')
    reason, db = run_loop(spec)
    assert "candidate budget reached (5 >= 5)" in reason
    # Each run is recorded with its spec; status reads the newest, the campaign row keeps the first.
    first, second = query.invocations(db)
    assert first.changes == () and first.spec["budget"]["candidates"] == 3
    assert "budget.candidates: 3 -> 5" in second.changes and "evaluator.workers: 0 -> 3" in second.changes
    assert any(c.startswith("proposer.edit_weights") for c in second.changes)
    assert query.campaign(db).spec["budget"]["candidates"] == 3 and query.current_spec(db)["budget"]["candidates"] == 5
    status = campaign_status(db)
    candidates = next(b for b in status["budgets"] if b["name"] == "candidates")
    assert candidates["limit"] == 5 and candidates["fraction"] == 1.0
    assert status["invocations"]["count"] == 2 and status["invocations"]["latest"] == second.created
    console = Console(width=200, file=io.StringIO())
    console.print(status_view(status))
    text = console.file.getvalue()
    assert "run 2 times, the latest started" in text and "budget.candidates: 3 -> 5" in text


def test_resumed_changes_list_only_what_a_resume_may_change():
    previous = {"seed": 0, "budget": {"candidates": 3, "wall_hours": 0}, "evaluator": {"workers": 1, "simulate": False}}
    current = {"seed": 0, "budget": {"candidates": 9, "wall_hours": 0}, "evaluator": {"workers": 1, "simulate": True},
               "proposer": {"kind": "mutator"}}
    assert list(resumed_changes(previous, current)) == ["budget.candidates: 3 -> 9", "proposer.kind: None -> 'mutator'"]
    assert list(resumed_changes(current, current)) == []


def test_status_of_a_file_without_the_invocations_record_reads_the_campaign_spec(tmp_path):
    spec = make_spec(tmp_path, candidates=3)
    path = spec.resolve(spec.database)
    _open(spec)
    db = schema.connect(path)
    db["invocations"].drop()  # as a file written before invocations were recorded, opened read-only (not migrated)
    db.conn.close()
    old = schema.connect_readonly(path)
    assert query.invocations(old) == [] and query.current_spec(old)["budget"]["candidates"] == 3
    status = campaign_status(old)
    assert status["invocations"]["count"] == 0
    assert next(b for b in status["budgets"] if b["name"] == "candidates")["limit"] == 3


@pytest.mark.parametrize("old, new, key", [
    ("target_flops = 1e18", "target_flops = 1e20", "target_flops 1e+18 in the database, 1e+20 in the spec"),
    ("seed = 0 ", "seed = 1 ", "seed 0 in the database, 1 in the spec"),
    ('fit_law = "chinchilla"', 'fit_law = "data-constrained"', "fit_law 'chinchilla' in the database"),
    ("base_n = 1e5", "base_n = 8e4", "proxies.base_n 100000.0 in the database, 80000.0 in the spec"),
    ("seq_len = 128", "seq_len = 256", "proxies.seq_len"),
    ("simulate = true", "simulate = false", "evaluator.simulate True in the database, False in the spec"),
    ("n_islands = 4", "n_islands = 2", "population.n_islands"),
])
def test_a_setting_the_campaign_was_made_with_cannot_change_on_resume(tmp_path, old, new, key):
    _open(make_spec(tmp_path))
    spec = _edit(tmp_path, old, new)
    with pytest.raises(CampaignMismatch) as refused:
        _open(spec)
    assert key in str(refused.value) and "Restore those settings" in str(refused.value)


def test_the_seed_and_comparison_programs_are_checked_by_content_not_by_path(tmp_path):
    _open(make_spec(tmp_path))
    (tmp_path / "moved").mkdir()
    for name in ("seed.py", "reference.py"):
        os.rename(tmp_path / name, tmp_path / "moved" / name)
    spec = _edit(tmp_path, 'seed_program = "seed.py"', 'seed_program = "moved/seed.py"')
    spec = _edit(tmp_path, 'compare = ["reference.py"]', 'compare = ["moved/reference.py"]')
    assert _open(spec) is False  # the same programs at new paths
    (tmp_path / "moved" / "reference.py").write_text(seed_source("weakened") + "\n# edited\n")
    with pytest.raises(CampaignMismatch, match="compare lists 1 program"):
        _open(spec)
    (tmp_path / "moved" / "reference.py").unlink()  # a missing file is not checked: the database holds it
    (tmp_path / "moved" / "seed.py").unlink()
    assert _open(spec) is False


def test_differences_ignore_resumable_keys_and_keys_an_old_campaign_lacks():
    stored = {"seed": 0, "budget": {"candidates": 3}, "evaluator": {"workers": 1, "simulate": False}}
    current = {"seed": 0, "budget": {"candidates": 9}, "evaluator": {"workers": 4, "simulate": False},
               "added_later": 1}
    assert list(spec_differences(stored, current)) == []
    current["evaluator"]["simulate"] = True
    assert list(spec_differences(stored, current)) == ["evaluator.simulate False in the database, True in the spec"]
    assert {"budget", "proposer"} <= set(RESUMABLE) and "target_flops" not in RESUMABLE


def test_a_real_campaign_refuses_run_simulate_with_exit_2(tmp_path, capsys):
    spec = make_spec(tmp_path)
    real = dataclasses.replace(spec, evaluator=dataclasses.replace(spec.evaluator, simulate=False))
    db = schema.connect(real.resolve(real.database))
    open_campaign(real, db, "")  # as `scalesearch run` would have created it, untrained here
    db.conn.close()
    assert main(["run", str(tmp_path / "campaign.toml"), "--simulate"]) == 2
    err = capsys.readouterr().err
    assert "evaluator.simulate False in the database, True in the spec" in err and "Traceback" not in err
    assert spec_json(real)["evaluator"]["simulate"] is False


def test_a_seed_that_fails_stops_the_campaign_with_what_to_do(tmp_path, capsys):
    make_spec(tmp_path)
    (tmp_path / "seed.py").write_text("import os\n" + seed_source("weakened"))  # refused by the static stage
    with pytest.raises(NoParents, match=r"the seed program \(program 1\) did not pass its base run.*ended invalid"):
        run_loop(load_spec(tmp_path / "campaign.toml"))
    assert main(["run", str(tmp_path / "campaign.toml")]) == 2
    assert "delete" in capsys.readouterr().err


def test_a_second_run_on_the_same_campaign_is_refused_while_the_first_holds_it(tmp_path, capsys):
    make_spec(tmp_path)
    with schema.writer_lock(tmp_path / "campaign.sqlite"):
        assert main(["run", str(tmp_path / "campaign.toml")]) == 2
        assert f"another scalesearch run (pid {os.getpid()})" in capsys.readouterr().err
    assert not (tmp_path / "campaign.sqlite").exists()  # refused before the database was touched


def test_run_says_what_a_resume_changed(tmp_path, capsys):
    make_spec(tmp_path, candidates=2)
    assert main(["run", str(tmp_path / "campaign.toml")]) == 0
    assert "created campaign" in capsys.readouterr().out
    _edit(tmp_path, "candidates = 2", "candidates = 3")
    assert main(["run", str(tmp_path / "campaign.toml")]) == 0
    out = capsys.readouterr().out
    assert "resuming campaign 'test'" in out and "(changed: budget.candidates: 2 -> 3)" in out
    db = schema.connect_readonly(tmp_path / "campaign.sqlite")
    assert [i.changes for i in query.invocations(db)] == [(), ("budget.candidates: 2 -> 3",)]
