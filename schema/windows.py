"""Change windows and blackouts as typed policy, and their pure, zone-correct evaluation.

A policy says *when* changes may run for a scope (environments, tenants, asset tags): weekly
windows of local wall-clock time and blackout dates, both in one named IANA time zone. The
evaluation is a pure function of the policies, the run's scope and an instant, so the
workflow can call it with `workflow.now()` and replay gives the same answer.

Wall-clock times across daylight-saving changes (docs/schedules.md):
- a time of day means the first instant the zone's clock shows it (on the fall-back day a
  01:30 means the first 01:30);
- a time that the clock skips (on the spring-forward day, 02:30 in Europe/Berlin) means the
  instant the clock jumps past it (03:00 local): a window entirely inside the gap has no
  length that day;
- a window whose end is not after its start crosses midnight (22:00-02:00); equal start and
  end is a whole day.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opsconductor.schema.enums import Environment

# How far ahead the next opening is looked for: past it, a run is told "no window".
HORIZON_DAYS = 400


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


WEEKDAYS = list(Weekday)  # index = date.weekday()


class OutsideWindow(StrEnum):
    """What a run outside its window does."""

    WAIT = "wait"  # waits visibly (a typed wait) until the window opens
    REFUSE = "refuse"  # ends refused at once


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeeklyWindow(_Strict):
    """Changes allowed on `days` from `start` to `end`, local wall-clock time."""

    days: list[Weekday] = Field(min_length=1)
    start: time
    end: time

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("a window's times are local to the policy's zone: give no offset")
        return value

    @property
    def label(self) -> str:
        return f"{','.join(self.days)} {self.start:%H:%M}-{self.end:%H:%M}"


class Blackout(_Strict):
    """No changes from `start` to `end` (whole local days, both inclusive)."""

    start: date
    end: date | None = None
    reason: str = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> Blackout:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"blackout ends ({self.end}) before it starts ({self.start})")
        return self

    @property
    def last(self) -> date:
        return self.end or self.start


class WindowScope(_Strict):
    """Which runs a policy governs; an empty list matches every value."""

    environments: list[Environment] = Field(default_factory=list)
    tenants: list[str] = Field(default_factory=list)
    asset_tags: list[str] = Field(default_factory=list)


class WindowPolicy(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    zone: str
    scope: WindowScope = Field(default_factory=WindowScope)
    windows: list[WeeklyWindow] = Field(default_factory=list)  # none: always open
    blackouts: list[Blackout] = Field(default_factory=list)
    outside: OutsideWindow = OutsideWindow.WAIT

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Europe/Berlin)") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)


class WindowPolicySet(_Strict):
    """The whole policy file."""

    version: Literal[1] = 1
    policies: list[WindowPolicy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> WindowPolicySet:
        names = [p.name for p in self.policies]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"policy names must be unique: {', '.join(dup)}")
        return self


class RunScope(_Strict):
    """What a run is, as far as windows care."""

    environment: Environment
    tenant: str
    asset_tags: list[str] = Field(default_factory=list)


class WindowVerdict(_Strict):
    """The gate's answer at one instant."""

    open: bool
    action: Literal["run", "wait", "refuse"]
    at: datetime
    policies: list[str] = Field(default_factory=list)  # every policy that governs the run
    blocking: list[str] = Field(default_factory=list)  # those closed at `at`
    reason: str
    opens_at: datetime | None = None  # closed: the next instant every policy is open
    closes_at: datetime | None = None  # open: the next instant one of them closes


class WindowPolicyError(ValueError):
    """A policy file that is not valid, with every problem named by its path."""


def parse_policies(data: object, source: str = "window policy") -> WindowPolicySet:
    """Validate a policy document (already parsed from YAML/JSON); every problem named."""
    try:
        return WindowPolicySet.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                             for e in err.errors())
        raise WindowPolicyError(f"{source}: {problems}") from None


def governs(policy: WindowPolicy, run: RunScope) -> bool:
    scope = policy.scope
    return ((not scope.environments or run.environment in scope.environments)
            and (not scope.tenants or run.tenant in scope.tenants)
            and (not scope.asset_tags or bool(set(scope.asset_tags) & set(run.asset_tags))))


def governing(policies: WindowPolicySet, run: RunScope) -> list[WindowPolicy]:
    return [p for p in policies.policies if governs(p, run)]


# ------------------------------------------------------------------ wall clock -> instants


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) the zone's clock shows `day at`; in a gap, the gap's end."""
    wall = datetime.combine(day, at)
    for fold in (0, 1):
        cand = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
        if cand.astimezone(tz).replace(tzinfo=None) == wall:
            # both folds may show it (fall back): the earlier instant is the first
            other = wall.replace(tzinfo=tz, fold=1 - fold).astimezone(UTC)
            if other.astimezone(tz).replace(tzinfo=None) == wall:
                return min(cand, other)
            return cand
    # Skipped by the clock: the first instant whose wall time is past `wall`
    lo = min(wall.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1))
    hi = max(wall.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1))
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def _instances(window: WeeklyWindow, tz: ZoneInfo,
               first: date, last: date) -> list[tuple[datetime, datetime]]:
    """The window's [start, end) instants for the local days first..last."""
    out = []
    day = first
    while day <= last:
        if WEEKDAYS[day.weekday()] in window.days:
            end_day = day if window.end > window.start else day + timedelta(days=1)
            start = local_instant(day, window.start, tz)
            end = local_instant(end_day, window.end, tz)
            if end > start:
                out.append((start, end))
        day += timedelta(days=1)
    return out


def _blackout_span(b: Blackout, tz: ZoneInfo) -> tuple[datetime, datetime]:
    return (local_instant(b.start, time(0), tz),
            local_instant(b.last + timedelta(days=1), time(0), tz))


def _local_day(at: datetime, tz: ZoneInfo) -> date:
    return at.astimezone(tz).date()


def blackout_at(policy: WindowPolicy, at: datetime) -> Blackout | None:
    tz = policy.tz
    for b in policy.blackouts:
        start, end = _blackout_span(b, tz)
        if start <= at < end:
            return b
    return None


def in_window(policy: WindowPolicy, at: datetime) -> bool:
    """Inside one of the weekly windows (or the policy has none)."""
    if not policy.windows:
        return True
    tz = policy.tz
    day = _local_day(at, tz)
    return any(start <= at < end for w in policy.windows
               for start, end in _instances(w, tz, day - timedelta(days=1), day))


def policy_open(policy: WindowPolicy, at: datetime) -> bool:
    return in_window(policy, at) and blackout_at(policy, at) is None


def _boundaries(policy: WindowPolicy, after: datetime, until: datetime) -> list[datetime]:
    """Every instant in (after, until] where the policy may change from closed to open or
    back: window starts and ends, blackout starts and ends."""
    tz = policy.tz
    first, last = _local_day(after, tz) - timedelta(days=1), _local_day(until, tz)
    out = {t for w in policy.windows for span in _instances(w, tz, first, last) for t in span}
    out.update(t for b in policy.blackouts for t in _blackout_span(b, tz))
    return sorted(t for t in out if after < t <= until)


def _next_change(policies: list[WindowPolicy], at: datetime, want_open: bool,
                 horizon_days: int) -> datetime | None:
    """The first boundary after `at` at which all are open (want_open) or one is closed."""
    until = at + timedelta(days=horizon_days)
    # Walk in chunks so a policy with windows does not build a year of instances at once.
    chunk = timedelta(days=14)
    lo = at
    while lo < until:
        hi = min(lo + chunk, until)
        cands = sorted({t for p in policies for t in _boundaries(p, lo, hi)})
        for t in cands:
            now_open = all(policy_open(p, t) for p in policies)
            if now_open == want_open:
                return t
        lo = hi
    return None


def _describe_closed(policy: WindowPolicy, at: datetime) -> str:
    b = blackout_at(policy, at)
    if b is not None:
        span = f"{b.start}" + (f"..{b.end}" if b.end and b.end != b.start else "")
        return f"blackout {span} of {policy.name!r} ({policy.zone}): {b.reason}"
    windows = "; ".join(w.label for w in policy.windows)
    return f"outside the change window of {policy.name!r} ({windows}, {policy.zone})"


def evaluate(policies: WindowPolicySet, run: RunScope, at: datetime,
             horizon_days: int = HORIZON_DAYS) -> WindowVerdict:
    """May a run of `run`'s scope start (or launch its next step) at `at`?"""
    if at.tzinfo is None:
        raise ValueError("evaluate() needs an aware instant")
    at = at.astimezone(UTC)
    ruling = governing(policies, run)
    names = [p.name for p in ruling]
    blocking = [p for p in ruling if not policy_open(p, at)]
    if not blocking:
        closes = _next_change(ruling, at, False, horizon_days) if ruling else None
        reason = (f"inside the change window of {', '.join(repr(n) for n in names)}"
                  if ruling else "no change window governs this run")
        return WindowVerdict(open=True, action="run", at=at, policies=names, reason=reason,
                             closes_at=closes)
    reason = "; ".join(_describe_closed(p, at) for p in blocking)
    refuse = any(p.outside is OutsideWindow.REFUSE for p in blocking)
    opens = _next_change(ruling, at, True, horizon_days)
    if opens is None and not refuse:
        reason += f"; no window opens within {horizon_days} days"
    return WindowVerdict(open=False, action="refuse" if refuse or opens is None else "wait",
                         at=at, policies=names, blocking=[p.name for p in blocking],
                         reason=reason, opens_at=opens)


# ------------------------------------------------------------------ the upstream check

# Upstream's planner writes this safety check on critical plans ("Maintenance window
# scheduled and stakeholders notified"): it is the change-window gate, not free text.
MAINTENANCE_WINDOW_PHRASES = ("maintenance window", "change window")


def is_window_check(text: str | Mapping[str, Any]) -> bool:
    """A plan's safety check that asks for the change window (matched as a phrase); a
    `{"command": ...}` check runs a command, never a window check."""
    if not isinstance(text, str):
        return False
    lowered = " ".join(text.lower().split())
    return any(phrase in lowered for phrase in MAINTENANCE_WINDOW_PHRASES)


# ------------------------------------------------------------------ across the activity


class WindowPoliciesInput(_Strict):
    """What the worker needs to say which policies govern a run."""

    tenant: str
    environment: Environment
    assets: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)  # the envelope's own tags


class WindowPoliciesResult(_Strict):
    """The policies (as the worker read them now) and the run's scope."""

    policies: WindowPolicySet = Field(default_factory=WindowPolicySet)
    scope: RunScope
    source: str | None = None  # the file read; None: no window policy configured
