"""The `command: ...` form of a safety check: which checks run a command on a host.

Its own module so that authorization, which judges every command a plan can run, reads it
without depending on the check runner (which itself asks authorization before running).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

COMMAND_CHECK = re.compile(r"^\s*command\s*:\s*(?P<cmd>.+)$", re.IGNORECASE | re.DOTALL)


def command_of(check: str | Mapping[str, Any]) -> str | None:
    """The command of a `command:` check, or None for an expression."""
    if isinstance(check, Mapping):
        cmd = check.get("command")
        return str(cmd) if cmd else None
    m = COMMAND_CHECK.match(check)
    return m.group("cmd").strip() if m else None
