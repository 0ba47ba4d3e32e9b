"""Lock activities in temporalio's ActivityEnvironment: heartbeats name the holder, cancel
removes the waiter rows, timeouts are non-retryable LockTimeout errors."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from opsconductor.activities import db as activities_db
from opsconductor.activities.locks import acquire_locks, release_locks, renew_locks
from opsconductor.safety import mutex
from opsconductor.schema.locks import AcquireLocksInput, ReleaseLocksInput, RenewLocksInput
from opsconductor.schema.messages import LockGrant


@pytest.fixture(autouse=True)
def _pool(db_pool: asyncpg.Pool) -> None:
    activities_db.set_pool(db_pool)


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_acquire_renew_release(db_pool: asyncpg.Pool) -> None:
    tenant, eid = _tenant(), str(uuid.uuid4())
    env = ActivityEnvironment()
    res = await env.run(acquire_locks, AcquireLocksInput(
        tenant=tenant, execution_id=eid, assets=["b", "a"], wait_timeout_seconds=5))
    assert sorted(res.tokens) == ["a", "b"]
    assert LockGrant.model_validate(res.model_dump()).tokens == res.tokens  # wire compatible
    renewed = await env.run(renew_locks, RenewLocksInput(tenant=tenant, execution_id=eid,
                                                         assets=["a", "b"], lease_seconds=30))
    assert sorted(renewed.expires_at) == ["a", "b"]
    rel = await env.run(release_locks, ReleaseLocksInput(tenant=tenant, execution_id=eid,
                                                         tokens=res.tokens))
    assert rel.released == ["a", "b"]
    with pytest.raises(ApplicationError) as err:
        await env.run(renew_locks, RenewLocksInput(tenant=tenant, execution_id=eid,
                                                   assets=["a"]))
    assert err.value.type == "LockLost" and err.value.non_retryable


async def test_waiting_heartbeats_name_holder_then_cancel_cleans_up(
        db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    holder = str(uuid.uuid4())
    await mutex.acquire(db_pool, tenant, ["web-1"], holder, "other-worker", 30, timeout=1)
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    waiter = str(uuid.uuid4())
    task = asyncio.create_task(env.run(acquire_locks, AcquireLocksInput(
        tenant=tenant, execution_id=waiter, assets=["web-1"], wait_timeout_seconds=30,
        poll_interval_seconds=0.05)))
    for _ in range(200):
        if beats:
            break
        await asyncio.sleep(0.01)
    assert beats[0]["holder_execution_id"] == holder
    assert beats[0]["waiting_on"] == "web-1"
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n = await db_pool.fetchval(
        "SELECT count(*) FROM execution.execution_lock_waiters WHERE tenant = $1", tenant)
    assert n == 0
    await mutex.release(db_pool, tenant, holder)


async def test_timeout_is_non_retryable(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    await mutex.acquire(db_pool, tenant, ["db-1"], "h1", "w", 30, timeout=1)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(acquire_locks, AcquireLocksInput(
            tenant=tenant, execution_id=str(uuid.uuid4()), assets=["db-1"],
            wait_timeout_seconds=0.2, poll_interval_seconds=0.05))
    assert err.value.type == "LockTimeout" and err.value.non_retryable
    assert "held by execution h1" in str(err.value)
    await mutex.release(db_pool, tenant, "h1")
