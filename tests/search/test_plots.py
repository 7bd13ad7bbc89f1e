"""scalesearch plot: three PNGs that are really drawn (size, dimensions, not blank), also for an empty campaign."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # for recorded_campaign (tests/ is not a package)

from db import record, schema  # noqa: E402
from db.rows import Campaign  # noqa: E402
from recorded_campaign import campaign_path  # noqa: E402
from search import inspection, plots  # noqa: E402
from search.cli import main  # noqa: E402

EXPECTED = {"progress.png": (11, 4.2), "laws.png": (12, 4.8), "runs_nd.png": (7.5, 6)}


def _check_drawn(path: pathlib.Path, inches: tuple[float, float], min_colours: int, min_ink: float = 0.02,
                 min_bytes: int = 20_000) -> None:
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(inches[0] * plots.DPI), round(inches[1] * plots.DPI))
        pixels = np.asarray(image.convert("RGB"))
    ink = np.any(pixels < 200, axis=-1).mean()  # share of pixels that are not (near) white
    assert min_ink < ink < 0.6, f"{path.name}: {ink:.1%} of the image is drawn"
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours >= min_colours, f"{path.name} has only {colours} colours"


def test_the_plot_command_writes_three_drawn_figures(tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(campaign_path()), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(pathlib.Path(p).name for p in printed) == sorted(EXPECTED)
    for name, inches in EXPECTED.items():
        _check_drawn(out / name, inches, min_colours=200)


def test_progress_points_follow_the_fit_rounds():
    db = inspection.open_readonly(campaign_path())
    points = plots.progress_points(db)
    assert [p["round"] for p in points] == [1, 2, 3, 4, 5]
    assert [p["evaluations"] for p in points] == sorted(p["evaluations"] for p in points)
    assert [p["flops"] for p in points] == sorted(p["flops"] for p in points) and points[0]["flops"] > 0
    assert points[-1]["program_id"] == 5 and all(p["low"] < p["loss"] < p["high"] for p in points)


def test_a_campaign_with_no_runs_yet_still_gets_its_figures(tmp_path):
    path = tmp_path / "empty.sqlite"
    db = schema.connect(path)
    record.create_campaign(db, Campaign(name="empty", spec_toml="", spec={"target_flops": 1e18}))
    for figure in plots.plot_campaign(db, tmp_path / "out"):
        _check_drawn(figure, EXPECTED[figure.name], min_colours=2, min_ink=0.002, min_bytes=3000)  # axes, a note


def test_plot_reports_an_unwritable_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["plot", str(campaign_path()), "--out", str(blocker / "sub")]) == 2
    assert "scalesearch plot" in capsys.readouterr().err
