"""The command's own behaviour: what a Ctrl-C inside any subcommand leaves the shell."""

from __future__ import annotations

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
