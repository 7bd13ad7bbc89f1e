"""``python -m search.bench``: a Ctrl-C stops the campaign cleanly and prints no figures."""

import pytest

import search.campaign
from search import bench


def test_an_interrupted_campaign_prints_no_figures_and_exits_130(tmp_path, monkeypatch, capsys):
    calls = []

    def stopped_by_ctrl_c(spec, **kwargs):
        calls.append(kwargs)
        return search.campaign.INTERRUPTED

    monkeypatch.setattr(search.campaign, "run_campaign", stopped_by_ctrl_c)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--dir", str(tmp_path / "b"), "--simulate"])
    assert stop.value.code == 130
    assert calls == [{"install_signals": True}]  # the first Ctrl-C is a clean stop, not a traceback
    out, err = capsys.readouterr()
    assert out == ""  # no JSON line a script could take for a result
    assert "interrupted" in err and str(tmp_path / "b" / "campaign.sqlite") in err


def test_a_simulated_campaign_measures_its_gaps_against_the_reference(tmp_path, capsys):
    out = bench.main(["--dir", str(tmp_path / "b"), "--simulate", "--candidates", "6"])
    assert out["candidates"] == 6 and out["runs"] >= 6
    assert sum(out["fraction_by_status"].values()) == pytest.approx(1.0, abs=1e-2)
    assert out["seed_gap"] == pytest.approx(out["seed_pred"] / out["reference_pred"] - 1)
    assert out["best_gap"] == pytest.approx(out["best_pred"] / out["reference_pred"] - 1)
    # the best searched candidate is at least as good as the seed it started from
    assert out["best_pred"] <= out["seed_pred"]
    expected = 1 - out["best_gap"] / out["seed_gap"] if out["seed_gap"] > 0 else None
    assert out["gap_closed_fraction"] == (pytest.approx(expected) if expected is not None else None)
    assert capsys.readouterr().out.splitlines()[-1].startswith("{")  # JSON on the last line
