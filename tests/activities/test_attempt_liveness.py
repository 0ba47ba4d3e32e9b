"""The liveness of a running attempt, on the real PostgreSQL: held while its worker's session
lives, gone the moment that session dies (a killed worker), never kept by the pool."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from opsconductor.activities.attempts import AttemptLiveness, attempt_alive, attempt_key


async def test_held_while_running_free_when_released(db_pool: asyncpg.Pool) -> None:
    live = AttemptLiveness(db_pool)
    key = attempt_key(uuid.uuid4(), "act", 1)
    other = attempt_key(uuid.uuid4(), "act", 1)
    assert not await attempt_alive(db_pool, key)
    assert await live.hold(key) and await live.hold(other)
    assert await attempt_alive(db_pool, key) and await attempt_alive(db_pool, other)
    await live.release(key)
    assert not await attempt_alive(db_pool, key) and await attempt_alive(db_pool, other)
    await live.release(other)
    assert not await attempt_alive(db_pool, other)
    assert live._conn is None  # idle: the pooled connection went back, its locks with it


async def test_a_dead_session_frees_the_attempt_and_a_new_one_holds_again(
        db_pool: asyncpg.Pool) -> None:
    live = AttemptLiveness(db_pool)
    key = attempt_key(uuid.uuid4(), "act", 2)
    assert await live.hold(key)
    pid = live._conn.get_server_pid()
    async with db_pool.acquire() as conn:  # the worker's session dies (kill -9, lost host)
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    # The backend exits, and its locks go, a moment after the signal: await that, bounded.
    deadline = asyncio.get_running_loop().time() + 30
    while await attempt_alive(db_pool, key):
        assert asyncio.get_running_loop().time() < deadline, "the dead session kept its lock"
        await asyncio.sleep(0.05)
    second = attempt_key(uuid.uuid4(), "act", 1)
    assert await live.hold(second)  # a new session, which holds both again
    assert await attempt_alive(db_pool, key) and await attempt_alive(db_pool, second)
    await live.release(key)
    await live.release(second)
    assert not await attempt_alive(db_pool, second)


def test_keys_differ_by_attempt_step_and_execution() -> None:
    e = uuid.uuid4()
    keys = {attempt_key(e, "a", 1), attempt_key(e, "a", 2), attempt_key(e, "b", 1),
            attempt_key(uuid.uuid4(), "a", 1)}
    assert len(keys) == 4 and all(-2**63 <= k < 2**63 for k in keys)
