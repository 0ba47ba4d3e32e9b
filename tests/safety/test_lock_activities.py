"""Lock activities in temporalio's ActivityEnvironment: heartbeats name the holder, cancel
removes the waiter rows, timeouts are non-retryable LockTimeout errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from opsconductor.activities.locks import LockActivities
from opsconductor.safety import mutex
from opsconductor.schema.locks import (
    AcquireLocksInput,
    AcquireLocksResult,
    ReleaseLocksInput,
    RenewLocksInput,
)
from opsconductor.schema.messages import LockGrant, LockRelease, LockRequest
from tests.helpers import wait_for


@pytest.fixture
def locks(db_pool: asyncpg.Pool) -> LockActivities:
    return LockActivities(pool=db_pool)


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_acquire_renew_release(db_pool: asyncpg.Pool, locks: LockActivities) -> None:
    tenant, eid = _tenant(), str(uuid.uuid4())
    env = ActivityEnvironment()
    res = await env.run(locks.acquire_locks, AcquireLocksInput(
        tenant=tenant, execution_id=eid, assets=["b", "a"], wait_timeout_seconds=5))
    assert sorted(res.tokens) == ["a", "b"]
    # on the wire: the result decodes as the type the workflow asks for, tokens intact
    conv = pydantic_data_converter.payload_converter
    payloads = conv.to_payloads([res])
    assert json.loads(payloads[0].data) == {"tokens": res.tokens, "owner": res.owner,
                                            "waited_seconds": res.waited_seconds}
    [decoded] = conv.from_payloads(payloads, [AcquireLocksResult])
    assert isinstance(decoded, AcquireLocksResult) and decoded == res
    renewed = await env.run(locks.renew_locks, RenewLocksInput(tenant=tenant, execution_id=eid,
                                                         assets=["a", "b"], lease_seconds=30))
    assert sorted(renewed.expires_at) == ["a", "b"]
    rel = await env.run(locks.release_locks, ReleaseLocksInput(tenant=tenant, execution_id=eid,
                                                         tokens=res.tokens))
    assert rel.released == ["a", "b"]
    with pytest.raises(ApplicationError) as err:
        await env.run(locks.renew_locks, RenewLocksInput(tenant=tenant, execution_id=eid,
                                                   assets=["a"]))
    assert err.value.type == "LockLost" and err.value.non_retryable


async def test_waiting_heartbeats_name_holder_then_cancel_cleans_up(
        db_pool: asyncpg.Pool, locks: LockActivities) -> None:
    tenant = _tenant()
    holder = str(uuid.uuid4())
    await mutex.acquire(db_pool, tenant, ["web-1"], holder, "other-worker", 30, timeout=1)
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    waiter = str(uuid.uuid4())
    task = asyncio.create_task(env.run(locks.acquire_locks, AcquireLocksInput(
        tenant=tenant, execution_id=waiter, assets=["web-1"], wait_timeout_seconds=30,
        poll_interval_seconds=0.05)))
    await wait_for(lambda: beats, timeout=10, interval=0.01,
                   what="a heartbeat from the queued acquisition")
    assert beats[0]["holder_execution_id"] == holder
    assert beats[0]["waiting_on"] == "web-1"
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n = await db_pool.fetchval(
        "SELECT count(*) FROM execution.execution_lock_waiters WHERE tenant = $1", tenant)
    assert n == 0
    await mutex.release(db_pool, tenant, holder)


def test_older_names_are_the_same_models() -> None:
    """Histories and callers written with the older names decode into today's models."""
    assert (LockRequest, LockGrant, LockRelease) == (
        AcquireLocksInput, AcquireLocksResult, ReleaseLocksInput)


async def test_timeout_is_non_retryable(db_pool: asyncpg.Pool, locks: LockActivities) -> None:
    tenant = _tenant()
    await mutex.acquire(db_pool, tenant, ["db-1"], "h1", "w", 30, timeout=1)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(locks.acquire_locks, AcquireLocksInput(
            tenant=tenant, execution_id=str(uuid.uuid4()), assets=["db-1"],
            wait_timeout_seconds=0.2, poll_interval_seconds=0.05))
    assert err.value.type == "LockTimeout" and err.value.non_retryable
    assert "held by execution h1" in str(err.value)
    await mutex.release(db_pool, tenant, "h1")
