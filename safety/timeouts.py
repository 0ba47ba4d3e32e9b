"""Timeout policy: the SLA x action-class matrix from `execution.timeout_policies`, cached,
with per-request overrides clamped to limits, and the remaining-time arithmetic.

Override limits (`apply_overrides`), so a request can make things safer but not unbounded:

- step, execution and approval timeouts may be shortened freely (floor 1 s) and lengthened
  up to `MAX_EXTENSION` (4x) the policy value; a step timeout longer than the execution
  deadline is cut to fit it (the deadline is never raised to fit a step);
- `max_attempts` may only be lowered (1 … policy max_attempts);
- `heartbeat_timeout_seconds` is kept between 1 s and the resulting step timeout.

If the table cannot be read, `FALLBACK_MATRIX` (identical to the seed in 001_core.sql) is
used, so a broken database never means "no timeouts".
"""

from __future__ import annotations

import math
import time
from datetime import datetime

import asyncpg

from opsconductor.schema.enums import ActionClass, SlaClass
from opsconductor.schema.messages import TimeoutPolicy
from opsconductor.schema.request import TimeoutOverrides

CACHE_TTL_SECONDS = 60.0
MAX_EXTENSION = 4.0
MIN_STEP_SECONDS = 1.0
MIN_HEARTBEAT_SECONDS = 1.0

PolicyMatrix = dict[tuple[SlaClass, ActionClass], TimeoutPolicy]

# (sla, action): step, execution, approval, max_attempts, initial_backoff, max_backoff
_SEED: dict[tuple[str, str], tuple[float, float, float, int, float, float]] = {
    ("fast", "read"): (30, 600, 3600, 3, 1, 10),
    ("fast", "modify"): (60, 900, 3600, 2, 1, 10),
    ("fast", "deploy"): (120, 900, 3600, 1, 1, 10),
    ("medium", "read"): (120, 1800, 14400, 3, 2, 30),
    ("medium", "modify"): (300, 3600, 14400, 2, 2, 30),
    ("medium", "deploy"): (600, 3600, 14400, 1, 2, 30),
    ("long", "read"): (900, 7200, 86400, 3, 5, 60),
    ("long", "modify"): (1800, 14400, 86400, 2, 5, 60),
    ("long", "deploy"): (3600, 14400, 86400, 1, 5, 60),
}

FALLBACK_MATRIX: PolicyMatrix = {
    (SlaClass(s), ActionClass(a)): TimeoutPolicy(
        sla_class=SlaClass(s), action_class=ActionClass(a), step_timeout_seconds=v[0],
        execution_timeout_seconds=v[1], approval_timeout_seconds=v[2], max_attempts=v[3],
        initial_backoff_seconds=v[4], max_backoff_seconds=v[5])
    for (s, a), v in _SEED.items()
}

_cache: tuple[float, PolicyMatrix] | None = None


def clear_cache() -> None:
    global _cache
    _cache = None


async def load_policies(db: asyncpg.Pool | asyncpg.Connection, *,
                        ttl_seconds: float = CACHE_TTL_SECONDS) -> PolicyMatrix:
    """The matrix keyed by (SlaClass, ActionClass) (StrEnums: plain strings work as keys too).

    Cached for `ttl_seconds`; rows missing from the table, or the whole table when it cannot
    be read, come from FALLBACK_MATRIX.
    """
    global _cache
    now = time.monotonic()
    if _cache is not None and now - _cache[0] < ttl_seconds:
        return _cache[1]
    try:
        rows = await db.fetch("SELECT * FROM execution.timeout_policies")
    except (OSError, asyncpg.PostgresError):
        return dict(FALLBACK_MATRIX)
    matrix = dict(FALLBACK_MATRIX)
    for r in rows:
        d = dict(r)
        d["sla_class"] = SlaClass(d["sla_class"])
        d["action_class"] = ActionClass(d["action_class"])
        policy = TimeoutPolicy.model_validate(d)
        matrix[(policy.sla_class, policy.action_class)] = policy
    _cache = (now, matrix)
    return matrix


def _clamp(value: float | None, base: float, floor: float) -> float:
    if value is None:
        return base
    return max(floor, min(value, base * MAX_EXTENSION))


def apply_overrides(policy: TimeoutPolicy, overrides: TimeoutOverrides | None) -> TimeoutPolicy:
    """The policy with the request's overrides applied within the documented limits."""
    if overrides is None:
        return policy
    execution = _clamp(overrides.execution_timeout_seconds, policy.execution_timeout_seconds,
                       MIN_STEP_SECONDS)
    step = min(execution, _clamp(overrides.step_timeout_seconds, policy.step_timeout_seconds,
                                 MIN_STEP_SECONDS))
    approval = _clamp(overrides.approval_timeout_seconds, policy.approval_timeout_seconds,
                      MIN_STEP_SECONDS)
    attempts = policy.max_attempts
    if overrides.max_attempts is not None:
        attempts = max(1, min(overrides.max_attempts, policy.max_attempts))
    heartbeat = overrides.heartbeat_timeout_seconds or policy.heartbeat_timeout_seconds
    heartbeat = max(MIN_HEARTBEAT_SECONDS, min(heartbeat, step))
    return policy.model_copy(update={
        "step_timeout_seconds": step, "execution_timeout_seconds": execution,
        "approval_timeout_seconds": approval, "max_attempts": attempts,
        "heartbeat_timeout_seconds": heartbeat})


def remaining_seconds(deadline: datetime | None, now: datetime) -> float:
    """Seconds left until the deadline (0 when past, inf when there is none)."""
    if deadline is None:
        return math.inf
    return max(0.0, (deadline - now).total_seconds())
