"""Fleet steps: one step, many targets, at most `max_concurrency` at once, `max_errors` allowed.

A step names its targets as a list of asset ids/hostnames or as an inventory selector
(`{"tags": [...], "groups": [...]}`: every tag, and any group — an asset is in group `g` when
it carries the tag `group:g`). `max_concurrency` and `max_errors` are an integer or a
percentage of the targets, as AWS SSM defines them: a percentage rounds down (concurrency at
least 1); once more than `max_errors` targets failed no further target starts, and the step
fails; the targets already running finish. Pure: the step activity runs the targets (through
the same variant runner as the asset-query fan-out) and this module decides.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

PERCENT = re.compile(r"^\s*(\d{1,3})\s*%\s*$")
DEFAULT_CONCURRENCY = "50"  # SSM's default MaxConcurrency
DEFAULT_ERRORS = "0"
MAX_TARGETS = 5000


def _limit_text(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError("must be an integer or a percentage such as \"10%\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("may not be negative")
        return str(value)
    if isinstance(value, str):
        if value.strip().isdigit():
            return value.strip()
        found = PERCENT.match(value)
        if found and int(found.group(1)) <= 100:
            return f"{int(found.group(1))}%"
    raise ValueError("must be an integer or a percentage such as \"10%\"")


def resolve_limit(value: str, total: int, *, at_least: int = 0) -> int:
    """An integer or percentage limit for `total` targets (a percentage rounds down)."""
    if value.endswith("%"):
        return max(at_least, total * int(value[:-1]) // 100)
    return max(at_least, int(value))


class TargetSelector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)

    def matches(self, tags: list[str]) -> bool:
        have = set(tags)
        return set(self.tags) <= have and (
            not self.groups or any(f"group:{g}" in have for g in self.groups))


class Fleet(BaseModel):
    """What a fleet step runs on and how."""

    model_config = ConfigDict(extra="forbid")
    targets: list[str] | None = Field(default=None, min_length=1, max_length=MAX_TARGETS)
    selector: TargetSelector | None = None
    max_concurrency: str = DEFAULT_CONCURRENCY
    max_errors: str = DEFAULT_ERRORS

    @field_validator("max_concurrency", "max_errors", mode="before")
    @classmethod
    def _limit(cls, v: Any) -> str:
        return _limit_text(v)

    def concurrency(self, total: int) -> int:
        return resolve_limit(self.max_concurrency, total, at_least=1)

    def errors_allowed(self, total: int) -> int:
        return resolve_limit(self.max_errors, total)


def fleet_from(targets: Any, max_concurrency: Any, max_errors: Any) -> Fleet:
    """A step's `targets` (list or selector) and limits, checked (ValueError names what)."""
    fields: dict[str, Any] = {}
    if max_concurrency is not None:
        fields["max_concurrency"] = max_concurrency
    if max_errors is not None:
        fields["max_errors"] = max_errors
    if isinstance(targets, list):
        if not all(isinstance(t, str) and t.strip() for t in targets):
            raise ValueError("targets must be asset ids or hostnames (non-empty strings)")
        if len(set(targets)) != len(targets):
            raise ValueError("targets lists an asset twice")
        return Fleet(targets=targets, **fields)
    if isinstance(targets, dict):
        selector = TargetSelector.model_validate(targets)
        if not selector.tags and not selector.groups:
            raise ValueError("a target selector needs `tags` or `groups`")
        return Fleet(selector=selector, **fields)
    raise ValueError("targets must be a list of assets or a selector such as "
                     "{\"tags\": [\"web\"]}")


def stop_starting(failed: int, allowed: int) -> bool:
    """SSM's rule: once more targets failed than allowed, start no more."""
    return failed > allowed
