"""Asset leases against the real embedded PostgreSQL: FIFO, no deadlock, expiry, fencing."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import asyncpg
import pytest

from opsconductor.safety import mutex
from tests.helpers import lease_expired, wait_for


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_uncontended_acquire_release(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    tokens = await mutex.acquire(db_pool, tenant, ["web-1", "db-1", "web-1"], "e1", "w1", 30,
                                 timeout=1)
    assert sorted(tokens) == ["db-1", "web-1"]
    holder = await mutex.holder_of(db_pool, tenant, "web-1")
    assert holder is not None and holder.execution_id == "e1" and holder.owner == "w1"
    # re-entrant: same execution gets the same tokens back
    again = await mutex.acquire(db_pool, tenant, ["web-1"], "e1", "w1", 30, timeout=1)
    assert again["web-1"] == tokens["web-1"]
    assert await mutex.release(db_pool, tenant, "e1") == ["db-1", "web-1"]
    assert await mutex.holder_of(db_pool, tenant, "web-1") is None
    assert await mutex.release(db_pool, tenant, "e1") == []


async def test_tokens_are_monotonic(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    seen = []
    for i in range(5):
        tokens = await mutex.acquire(db_pool, tenant, ["a"], f"e{i}", "w", 30, timeout=1)
        seen.append(tokens["a"])
        await mutex.release(db_pool, tenant, f"e{i}")
    assert seen == sorted(seen) and len(set(seen)) == 5


async def test_two_hundred_waiters_fifo_no_overlap(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    n = 200
    first = await mutex.acquire(db_pool, tenant, ["host"], "holder", "w", 30, timeout=1)
    assert first
    # Enqueue in a known order: each request takes its ticket before the next one asks.
    tickets = []
    for i in range(n):
        att = await mutex.try_acquire(db_pool, tenant, ["host"], f"e{i:03d}", "w", 30)
        assert not att.acquired and att.holder_execution_id == "holder"
        assert att.waiters_ahead == i
        tickets.append(att.ticket)
    assert tickets == sorted(tickets)

    intervals: list[tuple[float, float, str]] = []
    active = 0
    max_active = 0

    async def worker(i: int) -> None:
        nonlocal active, max_active
        eid = f"e{i:03d}"
        tokens = await mutex.acquire(db_pool, tenant, ["host"], eid, "w", 30, timeout=60,
                                     poll_interval=0.5)
        start = time.monotonic()
        active += 1
        max_active = max(max_active, active)
        async with db_pool.acquire() as conn, conn.transaction():
            assert await mutex.check_fencing(conn, tenant, "host", eid, tokens["host"])
        await asyncio.sleep(0)
        active -= 1
        intervals.append((start, time.monotonic(), eid))
        await mutex.release(db_pool, tenant, eid, ["host"])

    tasks = [asyncio.create_task(worker(i)) for i in range(n)]
    await mutex.release(db_pool, tenant, "holder")
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert max_active == 1
    order = [eid for _, _, eid in sorted(intervals)]
    assert order == [f"e{i:03d}" for i in range(n)]
    ordered = sorted(intervals)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered))


async def test_ab_vs_ba_never_deadlock(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    done: list[str] = []

    async def run(eid: str, assets: list[str]) -> None:
        for _ in range(15):
            await mutex.acquire(db_pool, tenant, assets, eid, "w", 30, timeout=30,
                                poll_interval=0.2)
            h_a = await mutex.holder_of(db_pool, tenant, "a")
            h_b = await mutex.holder_of(db_pool, tenant, "b")
            assert h_a is not None and h_b is not None
            assert h_a.execution_id == eid and h_b.execution_id == eid
            await mutex.release(db_pool, tenant, eid)
        done.append(eid)

    await asyncio.wait_for(asyncio.gather(run("x", ["a", "b"]), run("y", ["b", "a"]),
                                          run("z", ["b", "a"])), 60)
    assert sorted(done) == ["x", "y", "z"]


async def test_killed_holder_is_reaped_and_next_waiter_gets_it(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    dead = await mutex.acquire(db_pool, tenant, ["h"], "dead", "w-dead", 0.5, timeout=1)
    t0 = time.monotonic()
    waits: list[dict] = []
    tokens = await mutex.acquire(db_pool, tenant, ["h"], "next", "w2", 30, timeout=10,
                                 poll_interval=0.1,
                                 on_wait=lambda att, _w: waits.append(att.describe()))
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 5
    assert waits and waits[0]["holder_execution_id"] == "dead"
    assert tokens["h"] > dead["h"]
    # the dead holder's token is stale now
    async with db_pool.acquire() as conn, conn.transaction():
        assert not await mutex.check_fencing(conn, tenant, "h", "dead", dead["h"])
        assert await mutex.check_fencing(conn, tenant, "h", "next", tokens["h"])
    with pytest.raises(mutex.LockLost, match="dead"):
        await mutex.renew(db_pool, tenant, ["h"], "dead", 30)
    await mutex.release(db_pool, tenant, "next")


async def test_reap_expired(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    await mutex.acquire(db_pool, tenant, ["r1"], "gone", "w", 0.05, timeout=1)
    await wait_for(lambda: lease_expired(db_pool, tenant, "r1", "gone"), timeout=5,
                   interval=0.01, what="the 0.05 s lease to expire")
    reaped = await mutex.reap_expired(db_pool)
    assert (tenant, "r1", "gone") in reaped
    assert await mutex.holder_of(db_pool, tenant, "r1") is None


async def test_expired_lease_fails_fencing_and_renew(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    tokens = await mutex.acquire(db_pool, tenant, ["x"], "e", "w", 1.0, timeout=1)
    expires = await mutex.renew(db_pool, tenant, ["x"], "e", 1.0)
    assert "x" in expires
    async with db_pool.acquire() as conn, conn.transaction():
        assert await mutex.check_fencing(conn, tenant, "x", "e", tokens["x"])
        assert not await mutex.check_fencing(conn, tenant, "x", "e", tokens["x"] - 1)
    await wait_for(lambda: lease_expired(db_pool, tenant, "x", "e"), timeout=5,
                   interval=0.02, what="the renewed 1 s lease to expire")
    async with db_pool.acquire() as conn, conn.transaction():
        assert not await mutex.check_fencing(conn, tenant, "x", "e", tokens["x"])
    with pytest.raises(mutex.LockLost):
        await mutex.renew(db_pool, tenant, ["x"], "e", 10)
    await mutex.release(db_pool, tenant, "e")


async def test_fencing_blocks_takeover_until_commit(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    tokens = await mutex.acquire(db_pool, tenant, ["f"], "old", "w", 1.0, timeout=1)
    async with db_pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        assert await mutex.check_fencing(conn, tenant, "f", "old", tokens["f"])
        # the lease expires while the step's transaction is open
        await wait_for(lambda: lease_expired(db_pool, tenant, "f", "old"), timeout=5,
                       interval=0.02, what="the 1 s lease to expire")
        taker = asyncio.create_task(
            mutex.try_acquire(db_pool, tenant, ["f"], "new", "w", 30))
        # the takeover's backend is visibly blocked by the step's transaction (FOR SHARE)
        step_pid = conn.get_server_pid()
        await wait_for(lambda: _blocked_by(db_pool, step_pid), timeout=10,
                       what="the takeover to wait on the step transaction's row lock")
        assert not taker.done()
        await tr.commit()
        att = await asyncio.wait_for(taker, 5)
    assert att.acquired and att.tokens["f"] > tokens["f"]
    await mutex.release(db_pool, tenant, "new")


async def test_timeout_and_cancel_leave_the_queue(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    await mutex.acquire(db_pool, tenant, ["q"], "h", "w", 30, timeout=1)
    with pytest.raises(mutex.LockTimeout, match="held by execution h"):
        await mutex.acquire(db_pool, tenant, ["q"], "late", "w", 30, timeout=0.3,
                            poll_interval=0.1)
    task = asyncio.create_task(mutex.acquire(db_pool, tenant, ["q"], "cx", "w", 30, timeout=30,
                                             poll_interval=0.1))
    await wait_for(lambda: lock_waiters(db_pool, tenant), timeout=10, interval=0.02,
                   what="the acquisition to queue as a waiter")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n = await db_pool.fetchval(
        "SELECT count(*) FROM execution.execution_lock_waiters WHERE tenant=$1", tenant)
    assert n == 0
    await mutex.release(db_pool, tenant, "h")


async def test_keep_renewed(db_pool: asyncpg.Pool) -> None:
    tenant = _tenant()
    await mutex.acquire(db_pool, tenant, ["k"], "e", "w", 1.0, timeout=1)
    first = await mutex.holder_of(db_pool, tenant, "k")
    assert first is not None
    async with mutex.keep_renewed(db_pool, tenant, ["k"], "e", 1.0) as lost:
        # live at a moment two lease lengths past the first expiry: only renewals explain it
        async def outlived() -> bool:
            return lost.is_set() or bool(await db_pool.fetchval(
                "SELECT clock_timestamp() > $4::timestamptz + interval '2 seconds' AND "
                "expires_at > clock_timestamp() FROM execution.execution_locks "
                "WHERE tenant = $1 AND asset = $2 AND execution_id = $3",
                tenant, "k", "e", first.expires_at))

        await wait_for(outlived, timeout=10, interval=0.02,
                       what="the lease to stay live two lease lengths past its first expiry")
        assert not lost.is_set()
        assert await mutex.holder_of(db_pool, tenant, "k") is not None
    await mutex.release(db_pool, tenant, "e")


async def _blocked_by(pool: asyncpg.Pool, pid: int) -> bool:
    """Some backend waits for a lock held by backend `pid`."""
    return bool(await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)))",
        pid))


async def lock_waiters(pool: asyncpg.Pool, tenant: str) -> int:
    """How many waiter rows the tenant's queue holds."""
    return int(await pool.fetchval(
        "SELECT count(*) FROM execution.execution_lock_waiters WHERE tenant = $1", tenant))
