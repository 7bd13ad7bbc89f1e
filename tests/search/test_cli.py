"""The command's own behaviour: what a Ctrl-C inside any subcommand leaves the shell, and --version."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from search import cli


def test_ctrl_c_in_a_command_says_so_and_exits_as_the_campaign_does(monkeypatch, capsys):
    import search.campaign
    from search.commands import status

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(status, "run", interrupted)  # the command's run raises as a Ctrl-C would
    assert cli.main(["status", "missing.sqlite"]) == search.campaign.INTERRUPTED == 130
    assert "interrupted" in capsys.readouterr().err


def test_an_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as stop:
        cli.main(["frobnicate"])
    assert stop.value.code == 2


def test_version_names_this_install_and_its_stack_without_importing_jax(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"scalesearch {metadata.version('scalesearch')} (")
    assert f"jax {metadata.version('jax')}," in line and f"numpy {metadata.version('numpy')}," in line
    # In a fresh interpreter: --version must stay instant, so it reads metadata instead of importing JAX.
    probe = "import sys; from search import cli\ntry: cli.main(['--version'])\nexcept SystemExit: pass\nprint('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()[-1] == "False"
