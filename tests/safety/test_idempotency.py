"""Idempotency: concurrent duplicates, window from Postgres, linked reruns after failure."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from opsconductor.safety.idempotency import (
    claim,
    idempotency_key,
    record_outcome,
    runs,
    workflow_id_for,
)

PLAN = {"plan": {"steps": [{"id": "s1", "tool": "noop", "inputs": {}}]}}


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def test_key_is_canonical_and_scoped() -> None:
    a = idempotency_key({"b": 1, "a": [1, 2]}, "acme", "alice")
    assert a == idempotency_key({"a": [1, 2], "b": 1}, "acme", "alice")
    assert a != idempotency_key({"a": [1, 2], "b": 1}, "other", "alice")
    assert a != idempotency_key({"a": [1, 2], "b": 1}, "acme", "bob")
    assert len(a) == 64
    assert workflow_id_for("acme", a, 1) == f"opsc-acme-{a[:32]}"
    assert workflow_id_for("acme", a, 3) == f"opsc-acme-{a[:32]}-r3"


async def test_fifty_concurrent_claims_make_one(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    key = idempotency_key(PLAN, tenant, "alice")
    claims = await asyncio.gather(*(claim(db_pool, tenant, key, actor="alice")
                                    for _ in range(50)))
    new = [c for c in claims if c.is_new]
    assert len(new) == 1
    assert {c.execution_id for c in claims} == {new[0].execution_id}
    assert {c.workflow_id for c in claims} == {workflow_id_for(tenant, key, 1)}
    assert len(await runs(db_pool, tenant, key)) == 1


async def test_duplicate_returns_existing_running_or_completed(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    key = idempotency_key(PLAN, tenant, "alice")
    first = await claim(db_pool, tenant, key)
    await record_outcome(db_pool, tenant, key, first.execution_id, "running")
    dup = await claim(db_pool, tenant, key)
    assert not dup.is_new and dup.execution_id == first.execution_id and dup.status == "running"
    await record_outcome(db_pool, tenant, key, first.execution_id, "completed")
    dup = await claim(db_pool, tenant, key)
    assert not dup.is_new and dup.status == "completed"


async def test_failed_run_allows_linked_rerun(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    key = idempotency_key(PLAN, tenant, "alice")
    first = await claim(db_pool, tenant, key)
    for status in ("failed", "cancelled", "timeout", "rejected"):
        prev = (await runs(db_pool, tenant, key))[-1]
        assert await record_outcome(db_pool, tenant, key, prev.execution_id, status)
        again = await asyncio.gather(*(claim(db_pool, tenant, key) for _ in range(10)))
        new = [c for c in again if c.is_new]
        assert len(new) == 1
        assert new[0].previous_execution_id == prev.execution_id
        assert new[0].workflow_id == workflow_id_for(tenant, key, new[0].run_number)
    assert [r.run_number for r in await runs(db_pool, tenant, key)] == [1, 2, 3, 4, 5]
    assert first.run_number == 1


async def test_live_status_from_executions_mirror(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    key = idempotency_key(PLAN, tenant, "alice")
    c = await claim(db_pool, tenant, key)
    await db_pool.execute(
        "INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor, environment,"
        " status, mode, sla_class, idempotency_key, plan_hash, spec) VALUES ($1, $2, $3, 'alice',"
        " 'dev', 'failed', 'immediate', 'fast', $4, 'h', '{}')",
        uuid.UUID(c.execution_id), c.workflow_id, tenant, key)
    rerun = await claim(db_pool, tenant, key)
    assert rerun.is_new and rerun.previous_execution_id == c.execution_id


async def test_window_is_enforced_from_postgres(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    key = idempotency_key(PLAN, tenant, "alice")
    c = await claim(db_pool, tenant, key, window_seconds=3600)
    await record_outcome(db_pool, tenant, key, c.execution_id, "completed")
    assert not (await claim(db_pool, tenant, key, window_seconds=3600)).is_new
    # age the record beyond the window: a new, unlinked run with a new workflow id
    await db_pool.execute(
        "UPDATE execution.idempotency_records SET created_at = now() - interval '2 hours'"
        " WHERE tenant = $1", tenant)
    later = await claim(db_pool, tenant, key, window_seconds=3600)
    assert later.is_new and later.previous_execution_id is None and later.run_number == 2
    assert later.workflow_id.endswith("-r2")
