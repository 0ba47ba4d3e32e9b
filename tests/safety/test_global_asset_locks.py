"""One holder per asset across every tenant: the hosts are shared, so are their locks."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from opsconductor.safety import mutex
from opsconductor.schema.migrate import migration_files
from tests.helpers import wait_for


def _asset() -> str:
    return f"shared-{uuid.uuid4().hex[:8]}"


async def test_two_tenants_on_one_asset_are_serialised(db_pool: asyncpg.Pool) -> None:
    asset = _asset()
    first = await mutex.acquire(db_pool, "tenant-a", [asset], "exec-a", "w", 30, timeout=1)
    assert first
    # tenant B asks for the same asset: it queues behind A instead of getting a second lease
    attempt = await mutex.try_acquire(db_pool, "tenant-b", [asset], "exec-b", "w", 30)
    assert not attempt.acquired and attempt.holder_execution_id == "exec-a"
    holder = await mutex.holder_of(db_pool, "tenant-b", asset)
    assert holder is not None and holder.tenant == "tenant-a" and holder.execution_id == "exec-a"

    waiter = asyncio.create_task(
        mutex.acquire(db_pool, "tenant-b", [asset], "exec-b", "w", 30, timeout=10))
    await wait_for(lambda: db_pool.fetchval(
        "SELECT count(*) FROM execution.execution_lock_waiters"
        " WHERE asset = $1 AND tenant = 'tenant-b'", asset), what="tenant B queued on the asset")
    assert not waiter.done()
    assert await mutex.release(db_pool, "tenant-a", "exec-a") == [asset]
    second = await asyncio.wait_for(waiter, timeout=10)
    assert second[asset] > first[asset]  # fencing tokens stay monotonic across tenants
    row = await db_pool.fetchrow(
        "SELECT tenant, execution_id FROM execution.execution_locks WHERE asset = $1", asset)
    assert dict(row) == {"tenant": "tenant-b", "execution_id": "exec-b"}
    await mutex.release(db_pool, "tenant-b", "exec-b")


async def test_fencing_of_the_other_tenant_fails(db_pool: asyncpg.Pool) -> None:
    asset = _asset()
    tokens = await mutex.acquire(db_pool, "tenant-a", [asset], "exec-a", "w", 30, timeout=1)
    async with db_pool.acquire() as conn, conn.transaction():
        assert await mutex.check_fencing(conn, "tenant-a", asset, "exec-a", tokens[asset])
        assert not await mutex.check_fencing(conn, "tenant-b", asset, "exec-b", tokens[asset])
    await mutex.release(db_pool, "tenant-a", "exec-a")


async def test_004_applies_twice_and_keys_by_asset(db_pool: asyncpg.Pool) -> None:
    sql = dict(migration_files())["004_global_asset_locks.sql"]
    async with db_pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute(sql)
            await conn.execute(sql)
            keys = await conn.fetch(
                "SELECT c.conrelid::regclass::text AS tbl, array_agg(a.attname ORDER BY a.attnum)"
                " AS cols FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid"
                " AND a.attnum = ANY (c.conkey) WHERE c.contype = 'p' AND c.conrelid IN"
                " ('execution.execution_locks'::regclass,"
                "  'execution.execution_lock_waiters'::regclass) GROUP BY 1")
        finally:
            await tr.rollback()
    assert {r["tbl"]: list(r["cols"]) for r in keys} == {
        "execution.execution_locks": ["asset"],
        "execution.execution_lock_waiters": ["asset", "execution_id"],
    }
