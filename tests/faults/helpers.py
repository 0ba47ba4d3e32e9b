"""What the fault suites share: their rounds per scenario from OPSC_FAULT_COUNTS."""

from __future__ import annotations

from collections.abc import Callable

from opsconductor.schema.config import load_settings


def fault_counts(defaults: dict[str, int], *, theirs: Callable[[str], bool]) -> dict[str, int]:
    """Rounds per scenario: `defaults`, overridden by OPSC_FAULT_COUNTS (`name=N,...`). A name
    `theirs` says belongs to another suite is skipped; any other unknown name is an error."""
    counts = dict(defaults)
    raw = load_settings().fault_counts or ""
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, value = part.partition("=")
        if theirs(name):
            continue
        if name not in counts:
            raise ValueError(f"OPSC_FAULT_COUNTS: unknown scenario {name!r}")
        counts[name] = int(value)
    return counts
