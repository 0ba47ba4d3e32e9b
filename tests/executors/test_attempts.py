"""The unknown-outcome guard's storage (migration 003, activities.attempts)."""

from __future__ import annotations

import uuid
from importlib import resources

import asyncpg

from opsconductor.activities.attempts import (
    attempts,
    record_attempt_finished,
    record_attempt_started,
    resolve_unfinished,
    unfinished_attempt,
    worker_identity,
)


async def new_execution(pool: asyncpg.Pool) -> str:
    eid = str(uuid.uuid4())
    await pool.execute(
        """INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor,
             environment, mode, sla_class, idempotency_key, plan_hash, spec)
           VALUES ($1, $2, 't', 'a', 'dev', 'background', 'fast', $2, 'h', '{}'::jsonb)""",
        uuid.UUID(eid), f"wf-{eid}")
    return eid


async def test_migration_is_idempotent(db_pool: asyncpg.Pool) -> None:
    sql = (resources.files("opsconductor.schema") / "migrations" / "003_attempts.sql").read_text()
    async with db_pool.acquire() as conn:
        await conn.execute(sql)
        await conn.execute(sql)
    assert await db_pool.fetchval("SELECT to_regclass('execution.step_attempts')::text") == \
        "execution.step_attempts"


async def test_started_finished_unfinished(db_pool: asyncpg.Pool) -> None:
    eid = await new_execution(db_pool)
    assert await unfinished_attempt(db_pool, eid, "s1") is None
    async with db_pool.acquire() as conn, conn.transaction():
        await record_attempt_started(conn, eid, "s1", 1, "worker-a:1")
    row = await unfinished_attempt(db_pool, eid, "s1")
    assert row is not None and row.attempt == 1 and row.worker == "worker-a:1"
    assert row.finished_at is None and row.outcome is None
    assert await unfinished_attempt(db_pool, eid, "s1", before_attempt=1) is None
    # attempt 2 (a retry after worker-a died) sees attempt 1 still open
    assert (await unfinished_attempt(db_pool, eid, "s1", before_attempt=2)).attempt == 1
    assert await resolve_unfinished(db_pool, eid, "s1", "retry", "alice") == 1
    assert await unfinished_attempt(db_pool, eid, "s1") is None
    async with db_pool.acquire() as conn:
        await record_attempt_started(conn, eid, "s1", 2)
    assert await record_attempt_finished(db_pool, eid, "s1", 2, "succeeded") is True
    assert await record_attempt_finished(db_pool, eid, "s1", 2, "failed") is False
    rows = await attempts(db_pool, eid)
    assert [(r.attempt, r.outcome) for r in rows] == [(1, "resolved_retry"), (2, "succeeded")]
    assert rows[0].detail == "resolved by alice" and rows[1].worker == worker_identity()


async def test_started_rolls_back_with_the_mirror_write(db_pool: asyncpg.Pool) -> None:
    eid = await new_execution(db_pool)
    async with db_pool.acquire() as conn:
        try:
            async with conn.transaction():
                await record_attempt_started(conn, eid, "s1", 1, "w")
                raise RuntimeError("mirror write failed")
        except RuntimeError:
            pass
    assert await unfinished_attempt(db_pool, eid, "s1") is None
    # a redelivered task re-records the same attempt: it restarts instead of failing
    async with db_pool.acquire() as conn:
        await record_attempt_started(conn, eid, "s1", 1, "w1")
        await record_attempt_finished(conn, eid, "s1", 1, "failed", "boom")
        await record_attempt_started(conn, eid, "s1", 1, "w2")
    row = await unfinished_attempt(db_pool, eid, "s1")
    assert row is not None and row.worker == "w2" and row.outcome is None
