"""Find processes through /proc: who runs as a sandbox uid, in a session, or with a marker.

Used to sweep up anything a candidate left behind and, in tests, to prove that
nothing was. Linux only; elsewhere every query returns an empty list.
"""

from __future__ import annotations

import os
import pathlib

PROC = pathlib.Path("/proc")


def _pids() -> list[int]:
    try:
        return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    return text[text.rfind(")") + 2 :].split()


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] in ("Z", "X")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return (PROC / str(pid)).exists() and not is_zombie(pid)


def pids_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid``."""
    found = []
    for pid in _pids():
        try:
            for line in (PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    if int(line.split()[1]) == uid and not is_zombie(pid):
                        found.append(pid)
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


def pids_in_session(sid: int) -> list[int]:
    """Live processes in session ``sid`` (field 6 of /proc/PID/stat)."""
    found = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields and len(fields) > 3 and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            found.append(pid)
    return found


def pids_with_env(marker: str) -> list[int]:
    """Live processes whose initial environment contains ``marker`` (``NAME=value``)."""
    needle = marker.encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            env = (PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and not is_zombie(pid):
            found.append(pid)
    return found
