"""Timeout policy: table matches the fallback seed, overrides are clamped, remaining time."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import asyncpg

from opsconductor.safety import timeouts
from opsconductor.schema.enums import ActionClass, SlaClass
from opsconductor.schema.request import TimeoutOverrides


async def test_table_matches_fallback_and_is_cached(db_pool: asyncpg.Pool) -> None:
    timeouts.clear_cache()
    matrix = await timeouts.load_policies(db_pool)
    assert len(matrix) == 9
    for k, p in timeouts.FALLBACK_MATRIX.items():
        assert matrix[k] == p
    assert matrix[("medium", "modify")].step_timeout_seconds == 300  # plain strings work
    assert await timeouts.load_policies(db_pool) is matrix


async def test_unreadable_table_falls_back() -> None:
    class Broken:
        async def fetch(self, *_a: object) -> list:
            raise asyncpg.PostgresError("boom")

    timeouts.clear_cache()
    matrix = await timeouts.load_policies(Broken())  # type: ignore[arg-type]
    assert matrix == timeouts.FALLBACK_MATRIX
    timeouts.clear_cache()


def test_overrides_clamped() -> None:
    base = timeouts.FALLBACK_MATRIX[(SlaClass.MEDIUM, ActionClass.MODIFY)]
    assert timeouts.apply_overrides(base, None) is base
    p = timeouts.apply_overrides(base, TimeoutOverrides(
        step_timeout_seconds=10_000, execution_timeout_seconds=5, approval_timeout_seconds=60,
        max_attempts=9, heartbeat_timeout_seconds=0.1))
    assert p.execution_timeout_seconds == 5
    assert p.step_timeout_seconds == 5  # cut to fit the deadline, never the other way round
    assert p.approval_timeout_seconds == 60
    assert p.max_attempts == base.max_attempts  # can only lower
    assert p.heartbeat_timeout_seconds == 1.0
    q = timeouts.apply_overrides(base, TimeoutOverrides(step_timeout_seconds=0.01,
                                                        max_attempts=1,
                                                        heartbeat_timeout_seconds=999))
    assert q.step_timeout_seconds == 1.0 and q.max_attempts == 1
    assert q.heartbeat_timeout_seconds == q.step_timeout_seconds


def test_remaining_seconds() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert timeouts.remaining_seconds(now + timedelta(seconds=90), now) == 90
    assert timeouts.remaining_seconds(now - timedelta(seconds=5), now) == 0
    assert timeouts.remaining_seconds(None, now) == math.inf
