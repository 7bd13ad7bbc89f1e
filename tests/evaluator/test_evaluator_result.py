"""Statuses, results and the classification of dead processes; early stopping on plain curves."""

from __future__ import annotations

import signal

import pytest

from evaluator.early_stopping import EarlyStopping, make_should_stop, quantile, window_mean
from evaluator.protocol import Job, StageSpec
from evaluator.result import EvalResult, ProcessEnd, Status, classify_exit, tail

GiB = 1 << 30


def test_result_round_trips_through_a_dict():
    result = EvalResult("smoke", Status.OUT_OF_MEMORY, "m", {"n_params": 3}, "out", "err", "E: x", "tb", 1.5, "iso", "x")
    assert EvalResult.from_dict(result.to_dict()) == result
    assert result.to_dict()["status"] == "out_of_memory"


def test_only_ok_passes_and_cascade_decisions_are_not_failures():
    assert [s for s in Status if s.is_ok()] == [Status.OK]
    assert not Status.DUPLICATE.is_failure() and not Status.PRUNED.is_failure()
    assert Status.TIMEOUT.is_failure() and Status.INVALID.is_failure()


def test_tail_keeps_the_last_bytes_at_a_character_boundary():
    text = "é" * 30_000
    kept = tail(text, 20 * 1024)
    assert len(kept.encode()) <= 20 * 1024 and text.endswith(kept)


@pytest.mark.parametrize(
    "end, status",
    [
        (ProcessEnd(-9, killed_by_parent=True, reason="timeout"), Status.TIMEOUT),
        (ProcessEnd(-signal.SIGXCPU), Status.TIMEOUT),
        (ProcessEnd(-signal.SIGSEGV, memory_limit_bytes=8 * GiB), Status.OUT_OF_MEMORY),
        (ProcessEnd(-signal.SIGSEGV), Status.ERROR),  # no memory limit, no allocation failure: a crash
        (ProcessEnd(-signal.SIGABRT, memory_limit_bytes=GiB, stderr="terminate: std::bad_alloc"), Status.OUT_OF_MEMORY),
        (ProcessEnd(-signal.SIGABRT, memory_limit_bytes=GiB), Status.ERROR),
        (ProcessEnd(-signal.SIGKILL, peak_rss_bytes=GiB, memory_limit_bytes=GiB), Status.OUT_OF_MEMORY),
        (ProcessEnd(-signal.SIGKILL, peak_rss_bytes=GiB // 100, memory_limit_bytes=GiB), Status.ERROR),
        (ProcessEnd(3), Status.ERROR),
        (ProcessEnd(-9, killed_by_parent=True, reason="printed more than 64 MiB"), Status.ERROR),
    ],
)
def test_dead_processes_are_classified(end, status):
    got, message, exit_desc = classify_exit(end, "smoke", 10.0)
    assert got is status
    assert "smoke" in message and exit_desc


def test_job_round_trips_through_json():
    job = Job("src", (StageSpec("smoke", "smoke", 5), StageSpec("base", "train", 9, 10, 20, 1, {"curves": []})), {"f": "p1"})
    assert Job.from_json(job.to_json()) == job
    assert job.total_timeout_s == 14


@pytest.mark.parametrize(
    "kwargs", [dict(kind="fit", timeout_s=1), dict(kind="smoke", timeout_s=0), dict(kind="train", timeout_s=1)]
)
def test_bad_stage_specs_are_refused(kwargs):
    with pytest.raises(ValueError):
        StageSpec("x", **kwargs)


# ----------------------------------------------------------------------------- early stopping


def curve(level: float, d: int = 1000, points: int = 20) -> list[list[float]]:
    """A learning curve decaying towards ``level``."""
    return [[i, d * i // points, level + 3.0 / i] for i in range(1, points + 1)]


def run_curve(stop, values: list[list[float]]) -> int | None:
    """Feed a curve to a stopper; the token count where it stopped, or None."""
    for _, tokens, loss in values:
        if stop(tokens, loss):
            return tokens
    return None


def test_a_clearly_worse_curve_is_pruned_at_the_first_rung():
    stop = make_should_stop({**EarlyStopping().to_dict(), "curves": [curve(2.0), curve(2.1)]}, 1000)
    assert run_curve(stop, curve(4.0)) == 250
    assert "above the incumbents'" in stop.decision


def test_a_curve_within_the_noise_is_never_pruned():
    stop = make_should_stop({**EarlyStopping().to_dict(), "curves": [curve(2.0)]}, 1000)
    assert run_curve(stop, curve(2.1)) is None
    assert stop.decision is None


def test_the_margin_is_wider_at_early_rungs():
    config = EarlyStopping(margin=0.1)
    assert config.margin_at(0.25) == pytest.approx(0.2)
    assert EarlyStopping(margin=0.1, widen_early=False).margin_at(0.25) == 0.1


def test_quantile_chooses_which_incumbent_to_beat():
    incumbents = [curve(2.0), curve(3.0)]
    strict = make_should_stop({**EarlyStopping(quantile=0.0).to_dict(), "curves": incumbents}, 1000)
    lenient = make_should_stop({**EarlyStopping(quantile=1.0).to_dict(), "curves": incumbents}, 1000)
    assert run_curve(strict, curve(2.8)) is not None
    assert run_curve(lenient, curve(2.8)) is None


def test_non_finite_losses_are_pruned_and_no_incumbents_means_no_stopper():
    stop = make_should_stop({**EarlyStopping().to_dict(), "curves": [curve(2.0)]}, 1000)
    assert stop(300, float("nan"))
    assert make_should_stop({**EarlyStopping().to_dict(), "curves": []}, 1000) is None
    assert make_should_stop(None, 1000) is None


def test_incumbent_curves_that_stop_short_are_ignored():
    short = curve(2.0)[:4]  # reaches 200 of 1000 tokens
    stop = make_should_stop({**EarlyStopping().to_dict(), "curves": [short]}, 1000)
    assert run_curve(stop, curve(9.0)) is None


def test_window_mean_and_quantile():
    assert window_mean([[1, 100, 4.0], [2, 200, 2.0]], 0, 150) == pytest.approx(4.0)
    assert window_mean([[1, 100, 4.0], [2, 200, 2.0]], 140, 150) == pytest.approx(3.0)  # interpolated
    assert window_mean([[1, 100, 4.0]], 0, 150) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0 and quantile([1.0, 2.0], 0.25) == pytest.approx(1.25)


@pytest.mark.parametrize("kwargs", [dict(rungs=(0.5, 0.25)), dict(rungs=(1.5,)), dict(margin=-1), dict(quantile=2)])
def test_bad_early_stopping_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        EarlyStopping(**kwargs)
