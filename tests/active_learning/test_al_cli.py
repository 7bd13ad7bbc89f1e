"""`scalesearch fit`: a CSV round trip through search.cli.main, and errors that say what to fix."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest

from active_learning.scaling_law import HOFFMANN_2022
from search.cli import main


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def runs_csv(tmp_path, chinchilla_runs, rng):
    runs = chinchilla_runs(noise=0.005, rng=rng)
    return _write(tmp_path / "runs.csv", ["N", "D", "loss"], [(r.n, r.d, r.loss) for r in runs])


def test_json_round_trip_reports_parameters_and_the_target(runs_csv, capsys):
    assert main(["fit", runs_csv, "--target-flops", "5.76e23", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["law"] == "chinchilla" and out["n_runs"] == 35
    assert out["params"]["alpha"]["lo"] < 0.34 < out["params"]["alpha"]["hi"]
    target = out["target"]
    assert target["loss"]["lo"] < target["loss"]["value"] < target["loss"]["hi"]
    assert 70 < target["tokens_per_parameter"] < 120
    with open(runs_csv, newline="") as f:
        largest = max(6 * float(row["N"]) * float(row["D"]) for row in csv.DictReader(f))
    assert target["times_largest_run"] == pytest.approx(5.76e23 / largest)
    assert out["warnings"] == []  # 35 runs over IsoFLOP budgets pin every parameter down
    # A well-determined fit: the profile interval is near Laplace's (first order), not equal to it.
    loss = target["loss"]
    assert loss["profile_lo"] < loss["value"] < loss["profile_hi"]
    assert loss["profile_lo"] != loss["lo"] and loss["profile_hi"] == pytest.approx(loss["hi"], rel=0.05)


def test_a_fit_the_runs_do_not_pin_down_says_so(tmp_path, capsys):
    """Seven runs over 1.2 decades of N, one D/N but for two: the estimates mean little, and the output says which."""
    rows = [(1e7, 2e8), (2e7, 4e8), (4e7, 8e8), (8e7, 1.6e9), (1.6e8, 3.2e9), (1e7, 4e8), (4e7, 2e8)]
    loss = [3.5, 3.3, 3.1, 2.95, 2.85, 3.4, 3.2]
    path = _write(tmp_path / "few.csv", ["N", "D", "loss"], [(n, d, y) for (n, d), y in zip(rows, loss)])
    assert main(["fit", path, "--json"]) == 0
    (warning,) = json.loads(capsys.readouterr().out)["warnings"]
    assert "alpha" in warning and "beta" in warning and "1.2 decades" in warning
    assert main(["fit", path]) == 0
    assert "warning: poorly determined" in capsys.readouterr().out


def test_a_parameter_at_its_bound_is_reported_as_such_not_with_a_zero_width_interval(tmp_path, chinchilla_runs,
                                                                                         capsys):
    """Pure power-law runs (no irreducible loss) push E onto its bound; the report says so and what to do."""
    theta = HOFFMANN_2022.copy()
    theta[0] = -40.0
    runs = chinchilla_runs(theta)
    path = _write(tmp_path / "power.csv", ["N", "D", "loss"], [(r.n, r.d, r.loss) for r in runs])
    assert main(["fit", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["E"]["at_bound"] == "lower"
    assert [k for k, e in out["params"].items() if "at_bound" in e] == ["E"]
    assert out["warnings"][0].startswith("E is at its lower bound") and "--law kaplan" in out["warnings"][0]
    assert not any(w.startswith("poorly determined") and "E" in w.split(".")[0] for w in out["warnings"])
    assert main(["fit", path]) == 0
    text = capsys.readouterr().out
    assert "at its lower bound" in text and "warning: E is at its lower bound" in " ".join(text.split())


def test_e_at_its_bound_reports_its_profile_upper_limit_and_the_loss_there(tmp_path, chinchilla_runs, capsys):
    """Noisy pure power-law runs: E's cell, the JSON and the extrapolation carry the profile likelihood's upper end."""
    theta = HOFFMANN_2022.copy()
    theta[0] = -40.0
    runs = chinchilla_runs(theta, noise=0.005, rng=np.random.default_rng(3))
    path = _write(tmp_path / "power.csv", ["N", "D", "loss"], [(r.n, r.d, r.loss) for r in runs])
    assert main(["fit", path, "--target-flops", "1e24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    e = out["params"]["E"]
    assert e["at_bound"] == "lower" and e["hi"] < e["profile_limit"] < min(r.loss for r in runs)
    assert [k for k, p in out["params"].items() if "profile_limit" in p] == ["E"]
    at_limit = out["target"]["loss_at_limits"]["E"]
    loss = out["target"]["loss"]
    assert at_limit > loss["hi"]  # the held-E interval leaves this law out
    assert loss["profile_hi"] >= at_limit  # the profile interval of the loss does not: E moves off its bound there
    assert "the profile interval of the predicted loss does not hold it" in out["warnings"][0]
    assert f"up to {e['profile_limit']:.3g}" in out["warnings"][0]
    assert main(["fit", path, "--target-flops", "1e24"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"at its lower bound (<= {e['profile_limit']:.5g})" in text
    assert f"with E at {e['profile_limit']:.3g}, the upper end of its 90% profile interval" in text
    assert f"predicted loss {at_limit:.4f}" in text
    assert (f"Laplace [{loss['lo']:.4f}, {loss['hi']:.4f}], profile [{loss['profile_lo']:.4f}, "
            f"{loss['profile_hi']:.4f}]") in text


def test_runs_at_one_n_report_the_undetermined_parameters_and_no_allocation(tmp_path, chinchilla_runs, capsys):
    """Every run at N 1e8: A and alpha are arbitrary, so no N_opt is printed, in JSON, text or plot."""
    d = [1e9 * 2**i for i in range(7)]
    runs = chinchilla_runs(n=np.full(7, 1e8), d=np.array(d), noise=0.005, rng=np.random.default_rng(1))
    path = _write(tmp_path / "one_n.csv", ["N", "D", "loss"], [(r.n, r.d, r.loss) for r in runs])
    assert main(["fit", path, "--target-flops", "1e21", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [k for k, e in out["params"].items() if e.get("determined") is False] == ["A", "alpha"]
    assert out["target"]["determined"] is False and "n_opt" not in out["target"] and "loss" not in out["target"]
    assert out["warnings"][0].startswith("not determined: A, alpha") and "1 distinct N" in out["warnings"][0]
    plot = tmp_path / "one_n.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the figure draws no frontier and no empty legend
        assert main(["fit", path, "--target-flops", "1e21", "--plot", str(plot)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "not determined" in text and "not reported" in text and "N_opt" not in text
    assert plot.stat().st_size > 0


@pytest.mark.parametrize("encoding, sep", [("utf-8-sig", ","), ("utf-8", ";"), ("utf-8", "\t")])
def test_a_spreadsheet_export_reads_as_its_plain_csv(tmp_path, runs_csv, capsys, encoding, sep):
    """A byte-order mark (Excel's UTF-8 CSV) and semicolon or tab separators give the same fit as the plain file."""
    with open(runs_csv, newline="") as f:
        rows = list(csv.reader(f))
    path = tmp_path / "export.csv"
    with open(path, "w", newline="", encoding=encoding) as f:
        csv.writer(f, delimiter=sep).writerows(rows)
    assert main(["fit", runs_csv, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["fit", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == plain


def test_a_binary_file_is_refused_with_exit_2(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    assert main(["fit", str(path)]) == 2
    assert "not a text (UTF-8) CSV" in capsys.readouterr().err


def test_flops_column_stands_in_for_tokens(tmp_path, chinchilla_runs, capsys):
    runs = chinchilla_runs()
    path = _write(tmp_path / "c.csv", ["n", "C", "Loss"], [(r.n, 6 * r.n * r.d, r.loss) for r in runs])
    assert main(["fit", path, "--loss", "approach3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["E"]["value"] == pytest.approx(1.69, abs=1e-3)


def test_text_output_bootstrap_and_plot(runs_csv, tmp_path, capsys):
    plot = tmp_path / "fit.png"
    assert main(["fit", runs_csv, "--loss", "student-t", "--target-flops", "1e22", "--bootstrap", "8",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "bootstrap" in out and "predicted loss" in out
    assert plot.stat().st_size > 10_000


def test_text_table_with_bootstrap_fits_80_columns(runs_csv, capsys, monkeypatch):
    # Each header on one line and no line past the edge: the bootstrap header used to wrap.
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["fit", runs_csv, "--bootstrap", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = [line for line in lines if "estimate" in line]
    assert len(header) == 1 and "Laplace" in header[0] and "bootstrap (K=8)" in header[0]


def test_data_constrained_law_reads_unique_tokens(tmp_path, chinchilla_runs, capsys, rng):
    runs = chinchilla_runs(noise=0.005, rng=rng)
    rows = [(r.n, r.d, r.loss, r.d) for r in runs]  # every token fresh
    path = _write(tmp_path / "dc.csv", ["N", "D", "loss", "unique"], rows)
    assert main(["fit", path, "--law", "data-constrained", "--target-flops", "1e21", "--json"]) == 0
    assert "R_D_star" in json.loads(capsys.readouterr().out)["params"]


@pytest.mark.parametrize("header, rows, message", [
    (["N", "loss"], [(1e8, 3.0)], "missing column(s) D (or C)"),
    (["N", "D", "loss"], [(1e8, -1e9, 3.0)], "line 2: column 'd' must be a positive number"),
    (["N", "D", "loss"], [(1e8, "lots", 3.0)], "line 2: column 'd' is 'lots', not a number"),
    (["N", "D", "loss"], [(1e8, 1e9, 3.0)] * 3, "needs at least 6 runs"),
])
def test_bad_input_exits_2_with_a_message_that_says_what_to_fix(tmp_path, capsys, header, rows, message):
    path = _write(tmp_path / "bad.csv", header, rows)
    assert main(["fit", path]) == 2
    assert message in capsys.readouterr().err


def test_data_constrained_law_without_unique_column_is_explained(runs_csv, capsys):
    assert main(["fit", runs_csv, "--law", "data-constrained"]) == 2
    assert "unique" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nope.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_non_positive_target_is_rejected(runs_csv, capsys):
    assert main(["fit", runs_csv, "--target-flops", "-5"]) == 2
    assert "--target-flops must be > 0" in capsys.readouterr().err


def test_the_plotted_profile_band_ends_at_the_reported_profile_interval(runs_csv, tmp_path, capsys, monkeypatch):
    """The band --plot draws runs from the smallest run's C out to --target-flops, its last
    interval the one the JSON reports there (not a second, different computation)."""
    import active_learning.plot

    drawn = {}
    monkeypatch.setattr(active_learning.plot, "plot_fit", lambda fit, runs, path, **kw: drawn.update(kw))
    assert main(["fit", runs_csv, "--target-flops", "1e22", "--plot", str(tmp_path / "f.png"), "--json"]) == 0
    loss = json.loads(capsys.readouterr().out)["target"]["loss"]
    band = drawn["profile_band"]
    assert len(band) == active_learning.plot.PROFILE_POINTS
    assert band[-1].flops == 1e22 and (band[-1].lo, band[-1].hi) == (loss["profile_lo"], loss["profile_hi"])
    assert all(a.flops < b.flops for a, b in zip(band, band[1:]))
    assert all(p.lo < p.hi for p in band)
    # Without a target the band runs to 100x the largest run, as the Laplace band does.
    assert main(["fit", runs_csv, "--plot", str(tmp_path / "g.png"), "--json"]) == 0
    with open(runs_csv, newline="") as f:
        largest = max(6 * float(row["N"]) * float(row["D"]) for row in csv.DictReader(f))
    assert drawn["profile_band"][-1].flops == pytest.approx(100 * largest)
