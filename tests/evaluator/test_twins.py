"""Twins in flight together: the earliest submitted trains, whichever smoke stage finishes first."""

from __future__ import annotations

import threading

from evaluator.twins import Twins


def _in_thread(fn, *args):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn(*args)))
    thread.start()
    return thread, out


def test_a_later_twin_waits_for_the_earlier_smoke_and_is_its_duplicate():
    twins = Twins(wait_s=60)
    first, second = twins.enter(), twins.enter()
    thread, out = _in_thread(twins.twin_of, second, "fp")  # the second's smoke finished first
    thread.join(0.2)
    assert thread.is_alive(), "it must wait for the first candidate's smoke stage"
    twins.settle(first, "program 1", "fp")
    thread.join(10)
    assert out["value"] == "program 1"


def test_the_earliest_is_nobody_s_twin_even_if_it_reports_last():
    twins = Twins(wait_s=60)
    first, second = twins.enter(), twins.enter()
    twins.settle(second, "program 2", "fp")
    assert twins.twin_of(first, "fp") is None
    twins.settle(first, "program 1", "fp")
    assert twins.twin_of(twins.enter(), "fp") == "program 1"


def test_other_fingerprints_and_failed_smokes_are_not_twins():
    twins = Twins(wait_s=60)
    a, b, c = twins.enter(), twins.enter(), twins.enter()
    twins.settle(a, "a", "other")
    twins.settle(b, "b", None)  # failed before its smoke stage reported
    assert twins.twin_of(c, "fp") is None


def test_an_earlier_candidate_that_never_reports_delays_only_up_to_the_limit():
    twins = Twins(wait_s=0.05)
    twins.enter()  # never settled: an executor that did not start it
    assert twins.twin_of(twins.enter(), "fp") is None


def test_settle_is_idempotent_and_keeps_the_earliest_name():
    twins = Twins(wait_s=60)
    a, b = twins.enter(), twins.enter()
    twins.settle(b, "b", "fp")
    twins.settle(a, "a", "fp")
    twins.settle(a, "a", None)  # the done callback after the gate already settled it
    assert twins.twin_of(twins.enter(), "fp") == "a"
