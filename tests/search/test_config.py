"""The campaign spec's checks: a value no campaign can run with is refused when the spec is read, naming the key."""

from __future__ import annotations

import pytest

from proxy_models.program import seed_source
from search.cli import main
from search.config import SPEC_TEMPLATE, SpecError, load_spec


def _spec(tmp_path, old="", new=""):
    path = tmp_path / "campaign.toml"
    text = SPEC_TEMPLATE.format(name="t", spec_name=path)
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_the_template_is_a_valid_spec(tmp_path):
    spec = load_spec(_spec(tmp_path))
    assert spec.budget.candidates == 40 and spec.proxies.seq_len == 128


@pytest.mark.parametrize("old, new, message", [
    ("candidates = 40", "candidates = -3", "[budget] candidates must be 0 or more (0: no limit), got -3"),
    ("wall_hours = 0", "wall_hours = -1", "[budget] wall_hours must be 0 or more"),
    ("proxy_flops = 0", "proxy_flops = nan", "[budget] proxy_flops must be 0 or more"),
    ("workers = 0", "workers = -1", "[evaluator] workers must be at least 0, got -1"),
    ("memory_gb = 8.0", "memory_gb = 0.0", "[evaluator] memory_gb must be positive"),
    ("seq_len = 128", "seq_len = 0", "[proxies] seq_len must be at least 1, got 0"),
    ("grid = 3", "grid = 0", "[proxies] grid must be at least 1"),
    ("seeds_per_point = 1", "seeds_per_point = 0", "[proxies] seeds_per_point must be at least 1, got 0"),
    ("scaling_fraction = 0.5", "scaling_fraction = 1.5", "scaling_fraction is a share"),
    ("n_max = 4e5", "n_max = 4e3", "got n 50000 to 4000"),
    ("candidates = 40", 'candidates = "40"', "[budget] candidates must be an integer, got '40'"),
    ('evolve = ["model", "strategy"]', 'evolve = "model"', "[campaign] evolve must be a list, got 'model'"),
])
def test_a_value_no_campaign_can_run_with_is_refused_by_name(tmp_path, old, new, message):
    with pytest.raises(SpecError) as refused:
        load_spec(_spec(tmp_path, old, new))
    assert message in str(refused.value)


def test_the_run_commands_budget_override_is_checked_too(tmp_path, capsys):
    assert main(["run", str(_spec(tmp_path)), "--candidates", "-3"]) == 2
    assert "[budget] candidates must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "campaign.sqlite").exists()


def test_a_database_in_a_missing_folder_is_refused_with_what_to_do(tmp_path, capsys):
    (tmp_path / "seed.py").write_text(seed_source("reference"))
    path = _spec(tmp_path, 'database = "campaign.sqlite"', 'database = "nodir/campaign.sqlite"')
    assert main(["run", str(path)]) == 2
    assert "the folder" in capsys.readouterr().err and not (tmp_path / "nodir").exists()


def test_init_into_a_file_or_an_unwritable_place_is_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["init", str(tmp_path / "a-file")]) == 2
    assert "DIR" in capsys.readouterr().err and (tmp_path / "a-file").read_text() == ""
    assert main(["init", "/proc/scalesearch-cannot-be-here"]) == 2
    assert "cannot write into" in capsys.readouterr().err
