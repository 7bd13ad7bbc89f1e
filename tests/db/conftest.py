"""Fixtures for the database tests: every test runs on ':memory:' and on a file."""

import itertools

import pytest

from db import schema


@pytest.fixture(params=["memory", "file"])
def db(request, tmp_path):
    """A fresh campaign database, in memory and on disk (WAL)."""
    path = ":memory:" if request.param == "memory" else tmp_path / "campaign.sqlite"
    database = schema.connect(path)
    yield database
    database.close()


@pytest.fixture
def clock():
    """A clock that ticks one second per reading, from 1000."""
    ticks = itertools.count(1000.0)
    return lambda: next(ticks)
