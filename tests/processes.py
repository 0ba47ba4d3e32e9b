"""What runs on this host: for tests that prove a cancelled command is really gone."""

from __future__ import annotations

from pathlib import Path

from opsconductor.starter.pids import pid_alive as alive

__all__ = ["alive", "group_members", "shell_leftover_check"]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid` on this host."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def shell_leftover_check(pids: Path, leftovers: Path) -> str:
    """POSIX sh that appends to `leftovers` every process group listed in `pids` which still
    has a live (non-zombie) member: a step command runs it first, to prove that no process of
    an earlier attempt was alive when it started."""
    return (f'touch {pids}; for p in $(cat {pids}); do [ "$p" = "$$" ] && continue; '
            'for f in /proc/[0-9]*/stat; do read -r l 2>/dev/null < "$f" || continue; '
            f'set -- $l; [ "$5" = "$p" ] && [ "$3" != Z ] && echo "$p" >> {leftovers}; '
            "done; done")
