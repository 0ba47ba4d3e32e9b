"""Whether a process still runs: for the dev stack's lock and the embedded server's pid file."""

from __future__ import annotations

import os
from pathlib import Path


def process_state(pid: int | str) -> str | None:
    """The one-letter state from `/proc/<pid>/stat` (`R`, `S`, `Z`...), None when unknown.
    Read here, not through the supervisor's `proc_stat`: the embedded PostgreSQL starter
    imports this module where the activities package is not installed."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True while `pid` exists (owned by us or not) and is not a zombie: a killed postmaster
    whose parent has not reaped it yet is gone, though `kill(pid, 0)` still finds it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return process_state(pid) != "Z"
