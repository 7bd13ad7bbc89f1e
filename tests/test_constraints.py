"""constraints.txt, the pinned install: it must pin every dependency pyproject.toml names, within its range."""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(text: str) -> dict[str, Version]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_every_dependency_is_pinned_within_its_range():
    pins = _pins((ROOT / "constraints.txt").read_text())
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned; run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} is outside pyproject.toml's {req.specifier}; run make lock")


def test_the_project_itself_is_not_pinned():
    # A pin on scalesearch would make `pip install -c constraints.txt -e .` refuse the checkout's own version.
    assert "scalesearch" not in _pins((ROOT / "constraints.txt").read_text())


def test_pins_parse_and_reject_unpinned_lines():
    assert _pins("# header\nnumpy==2.4.6\n\nscikit_learn==1.9.1  # why\n") == {
        "numpy": Version("2.4.6"), "scikit-learn": Version("1.9.1")}
    with pytest.raises(AssertionError, match="not pinned"):
        _pins("numpy>=2\n")
