"""Fixtures for proxy-model tests: a session corpus in a private cache, programs, keys."""

import pytest

from proxy_models import data
from proxy_models.program import load_program, seed_source


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SCALESEARCH_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def corpus(cache_dir):
    return data.load_corpus()


@pytest.fixture(scope="session")
def reference():
    return load_program(seed_source("reference"), "reference")


@pytest.fixture(scope="session")
def weakened():
    return load_program(seed_source("weakened"), "weakened")
