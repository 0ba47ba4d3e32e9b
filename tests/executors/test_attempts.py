"""The unknown-outcome guard's storage (migration 003, activities.attempts)."""

from __future__ import annotations

import uuid
from importlib import resources

import asyncpg

from opsconductor.activities.attempts import (
    attempts,
    mark_stopped,
    prior_attempts,
    record_attempt_finished,
    record_attempt_started,
    record_process,
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


# ------------------------------------------------- durable facts across linked runs (007)

async def linked_execution(pool: asyncpg.Pool, previous: str) -> str:
    eid = await new_execution(pool)
    await pool.execute("UPDATE execution.executions SET previous_execution_id = $2 "
                       "WHERE execution_id = $1", uuid.UUID(eid), uuid.UUID(previous))
    return eid


async def test_a_requeued_run_sees_the_attempts_of_the_run_it_repeats(
        db_pool: asyncpg.Pool) -> None:
    first = await new_execution(db_pool)
    async with db_pool.acquire() as conn:
        await record_attempt_started(conn, first, "deploy", 1, "w1", target="web-1")
        await record_attempt_finished(conn, first, "deploy", 1, "succeeded",
                                      result={"step_id": "deploy", "status": "completed",
                                              "stdout": "v2"})
        await record_attempt_started(conn, first, "migrate", 1, "w1")
        await record_process(conn, first, "migrate", 1, process_host="local:h", pgid=4242,
                             proc_start=777)
    second = await linked_execution(db_pool, first)
    third = await linked_execution(db_pool, second)

    done = await prior_attempts(db_pool, third, "deploy")
    assert [(a.execution_id, a.outcome, a.result["stdout"]) for a in done] == [
        (first, "succeeded", "v2")]
    assert not done[0].may_have_acted
    crashed = await prior_attempts(db_pool, third, "migrate")
    assert [(a.pgid, a.proc_start, a.process_host) for a in crashed] == [(4242, 777, "local:h")]
    assert crashed[0].may_have_acted and "never finished" in crashed[0].evidence()
    # an unrelated execution sees nothing
    assert await prior_attempts(db_pool, await new_execution(db_pool), "migrate") == []

    # the operator's answer in the third run closes the first run's attempt, in their name
    assert await resolve_unfinished(db_pool, third, "migrate", "retry", "carol") == 1
    (row,) = await prior_attempts(db_pool, third, "migrate")
    assert (row.outcome, row.resolved_by, row.may_have_acted) == ("resolved_retry", "carol",
                                                                   False)


async def test_a_killed_attempt_may_have_acted_until_an_operator_answers(
        db_pool: asyncpg.Pool) -> None:
    eid = await new_execution(db_pool)
    async with db_pool.acquire() as conn:
        await record_attempt_started(conn, eid, "s", 1, "w1")
        await record_process(conn, eid, "s", 1, process_host="local:h", pgid=99,
                             proc_start=5)
        await record_attempt_finished(conn, eid, "s", 1, "cancelled", "its worker shut down")
    (killed,) = await prior_attempts(db_pool, eid, "s", exclude_attempt=2)
    assert killed.may_have_acted and "cancelled" in killed.evidence()
    assert killed.stopped_at is not None  # closed: its runner stopped the group
    assert await prior_attempts(db_pool, eid, "s", exclude_attempt=1) == []
    assert await resolve_unfinished(db_pool, eid, "s", "skip", "dave") == 1
    (answered,) = await prior_attempts(db_pool, eid, "s")
    assert answered.outcome == "cancelled" and answered.resolved_by == "dave"
    assert not answered.may_have_acted
    await mark_stopped(db_pool, eid, "s", 1, "checked again")
    assert "checked again" in (await prior_attempts(db_pool, eid, "s"))[0].detail
