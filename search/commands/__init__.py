"""The subcommands, one module each (see ``search.cli``), and what several of them share."""

from __future__ import annotations

import pathlib


def check_out_folder(path: str, option: str = "--out") -> None:
    """``option`` must name a folder (created later if missing), not a file.

    Raises:
      NotADirectoryError: it names a file; the message names the option.
    """
    if pathlib.Path(path).exists() and not pathlib.Path(path).is_dir():
        raise NotADirectoryError(f"{option} {path} is a file, not a folder; give a folder (it is created if missing)")
