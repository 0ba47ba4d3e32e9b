"""Per-asset mutual exclusion: Postgres leases with fencing tokens and FIFO waiters.

Why leases and not session locks: a worker may die at any moment; a lease in
`execution.execution_locks` simply expires (`expires_at`) and is reaped, while a fencing token
(a value of the sequence `execution.lock_fencing_seq`, monotonic across the whole system) lets a
step prove *in its own transaction* that it still holds the asset (`check_fencing`).

Model (all state in migrations 002_safety.sql and 004_global_asset_locks.sql, every operation
one SQL function call, i.e. one round trip):

- one holder per asset, across all tenants (the hosts are shared: two tenants changing one
  host must exclude each other): `execution_id` + `owner` (worker tag), `fencing_token`,
  `expires_at`, and the holder's `tenant` for visibility and audit; the holder extends it with
  `renew` while it works;
- a request for several assets gets ONE ticket (sequence `lock_ticket_seq`) and one waiter row
  per asset; on every asset the smallest live ticket is served first. That is FIFO per asset
  and, since tickets are totally ordered, two requests for {a, b} and {b, a} can never wait on
  each other in a cycle: the oldest waiting request always gets all of its assets once their
  holders are done. Assets are also locked internally in sorted (canonical) order;
- acquisition is all-or-nothing: either every asset is taken in one transaction or none;
- a waiter row lives while its owner keeps polling (`seen_until`); an abandoned waiter stops
  blocking the queue after `wait_ttl_seconds`;
- on release the head waiter of each freed asset is woken with NOTIFY `opsc_locks` (payload:
  its ticket), so waiting costs no busy polling; a slow poll remains as a safety net and to
  notice leases that simply expired.

Re-entrancy: an execution that already holds an asset gets it again with the same token and a
longer lease (an activity retried after a crash does not lose its lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection
NOTIFY_CHANNEL = "opsc_locks"
DEFAULT_POLL_SECONDS = 1.0


class LockError(Exception):
    """Base of lock failures; `non_retryable` tells an activity how to surface it."""

    non_retryable = True


class LockLost(LockError):
    """The execution no longer holds a lease it relied on (expired, reaped or taken over)."""

    def __init__(self, tenant: str, execution_id: str, assets: Iterable[str]):
        self.tenant, self.execution_id, self.assets = tenant, execution_id, sorted(assets)
        super().__init__(f"lock lost: execution {execution_id} no longer holds "
                         f"{', '.join(self.assets)} (tenant {tenant})")


class LockTimeout(LockError):
    """The assets did not become free within the wait timeout; names the holder."""

    def __init__(self, tenant: str, assets: Iterable[str], waited: float,
                 attempt: AcquireAttempt | None):
        self.tenant, self.assets, self.waited, self.last = tenant, sorted(assets), waited, attempt
        holder = ""
        if attempt is not None and attempt.blocked_asset:
            holder = f"; {attempt.blocked_asset} is held by " + (
                f"execution {attempt.holder_execution_id}" if attempt.holder_execution_id
                else "nobody (earlier requests are queued)")
        super().__init__(f"timed out after {waited:.1f}s waiting for "
                         f"{', '.join(self.assets)}{holder}")


@dataclass(frozen=True)
class AcquireAttempt:
    """Result of one `try_acquire`: the tokens, or who blocks us and how many wait ahead."""

    acquired: bool
    ticket: int | None
    tokens: dict[str, int] = field(default_factory=dict)
    blocked_asset: str | None = None
    holder_execution_id: str | None = None
    holder_owner: str | None = None
    holder_expires_at: datetime | None = None
    waiters_ahead: int = 0

    def describe(self) -> dict[str, Any]:
        """Heartbeat / event details: what we wait for and who holds it (no secrets here)."""
        return {"waiting_on": self.blocked_asset, "holder_execution_id": self.holder_execution_id,
                "holder_owner": self.holder_owner,
                "holder_expires_at": (self.holder_expires_at.isoformat()
                                      if self.holder_expires_at else None),
                "waiters_ahead": self.waiters_ahead, "ticket": self.ticket}


@dataclass(frozen=True)
class Holder:
    tenant: str
    asset: str
    execution_id: str
    owner: str
    fencing_token: int
    acquired_at: datetime
    expires_at: datetime


def canonical_assets(assets: Iterable[str]) -> list[str]:
    """The one order in which assets are taken: sorted, duplicates removed."""
    return sorted({a for a in assets if a})


async def try_acquire(db: Db, tenant: str, assets: Iterable[str], execution_id: str, owner: str,
                      ttl_seconds: float, *, ticket: int | None = None, enqueue: bool = True,
                      wait_ttl_seconds: float = 30.0) -> AcquireAttempt:
    """One attempt: take all assets now, or (with `enqueue`) join/keep our place in the queue."""
    row = await db.fetchrow(
        "SELECT * FROM execution.lock_acquire($1, $2, $3, $4, $5, $6, $7, $8)",
        tenant, canonical_assets(assets), execution_id, owner, float(ttl_seconds), ticket,
        enqueue, float(wait_ttl_seconds))
    assert row is not None
    tokens = row["tokens"]
    return AcquireAttempt(
        acquired=row["acquired"], ticket=row["ticket"],
        tokens={k: int(v) for k, v in json.loads(tokens).items()} if tokens else {},
        blocked_asset=row["blocked_asset"], holder_execution_id=row["holder_execution_id"],
        holder_owner=row["holder_owner"], holder_expires_at=row["holder_expires_at"],
        waiters_ahead=row["waiters_ahead"] or 0)


class _Notifier:
    """One LISTEN connection per pool, held only while somebody waits; wakes waiters by ticket."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.conn: asyncpg.Connection | None = None
        self.events: dict[int, asyncio.Event] = {}
        self.users = 0
        self.lock = asyncio.Lock()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            event = self.events.get(int(payload))
            if event is not None:
                event.set()

    async def subscribe(self, ticket: int) -> asyncio.Event:
        event = self.events.setdefault(ticket, asyncio.Event())
        async with self.lock:
            self.users += 1
            try:
                if self.conn is None:
                    await self._listen()
            except BaseException:
                self.users -= 1
                self.events.pop(ticket, None)
                raise
        return event

    async def _listen(self) -> None:
        try:
            conn = await self.pool.acquire()
        except (OSError, asyncpg.PostgresError):
            return  # polling still works; the next subscriber tries to listen again
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException as err:
            await asyncio.shield(self.pool.release(conn))
            if isinstance(err, (OSError, asyncpg.PostgresError)):
                return
            raise
        self.conn = conn

    async def unsubscribe(self, ticket: int) -> None:
        self.events.pop(ticket, None)
        async with self.lock:
            self.users -= 1
            if self.users <= 0 and self.conn is not None:
                conn, self.conn = self.conn, None
                with contextlib.suppress(Exception):
                    await conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)
                with contextlib.suppress(Exception):
                    await self.pool.release(conn)


_notifiers: dict[int, _Notifier] = {}


def _notifier(pool: asyncpg.Pool) -> _Notifier:
    n = _notifiers.get(id(pool))
    if n is None or n.pool is not pool:
        n = _notifiers[id(pool)] = _Notifier(pool)
    return n


WaitCallback = Callable[[AcquireAttempt, float], Awaitable[None] | None]


async def acquire(pool: asyncpg.Pool, tenant: str, assets: Iterable[str], execution_id: str,
                  owner: str, ttl_seconds: float, *, timeout: float,
                  poll_interval: float = DEFAULT_POLL_SECONDS,
                  wait_ttl_seconds: float | None = None,
                  on_wait: WaitCallback | None = None) -> dict[str, int]:
    """Take every asset (all-or-nothing, FIFO), waiting up to `timeout` seconds.

    Returns {asset: fencing_token}. While queued, `on_wait(attempt, waited_seconds)` is called
    after every attempt (an activity heartbeats there, naming the holder). Raises LockTimeout;
    on timeout or cancellation our waiter rows are removed before the error propagates.
    """
    wanted = canonical_assets(assets)
    if not wanted:
        return {}
    wait_ttl = wait_ttl_seconds if wait_ttl_seconds is not None else max(10.0, 5 * poll_interval)
    start = time.monotonic()
    notifier = _notifier(pool)
    ticket: int | None = None
    event: asyncio.Event | None = None
    try:
        while True:
            if event is not None:
                event.clear()
            attempt = await try_acquire(pool, tenant, wanted, execution_id, owner, ttl_seconds,
                                        ticket=ticket, wait_ttl_seconds=wait_ttl)
            if attempt.acquired:
                return attempt.tokens
            if event is None:
                # Queued: listen for our ticket, then try again at once, since a release may
                # have slipped in before LISTEN was active.
                ticket = attempt.ticket
                assert ticket is not None
                event = await notifier.subscribe(ticket)
                continue
            waited = time.monotonic() - start
            if on_wait is not None:
                maybe = on_wait(attempt, waited)
                if maybe is not None:
                    await maybe
            remaining = timeout - waited
            if remaining <= 0:
                raise LockTimeout(tenant, wanted, waited, attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(poll_interval, remaining))
    except BaseException:
        # Timeout, cancellation (possibly while a query was in flight) or error: leave the
        # queue so we block nobody. Only waiter rows go; leases are the caller's business.
        with contextlib.suppress(Exception):
            await asyncio.shield(dequeue(pool, tenant, execution_id))
        raise
    finally:
        if event is not None and ticket is not None:
            await asyncio.shield(notifier.unsubscribe(ticket))


async def dequeue(db: Db, tenant: str, execution_id: str) -> list[str]:
    """Remove the execution's waiter rows (not its leases); returns the assets it waited for."""
    rows = await db.fetch("SELECT execution.lock_dequeue($1, $2) AS asset", tenant, execution_id)
    return [r["asset"] for r in rows]


async def renew(db: Db, tenant: str, assets: Iterable[str], execution_id: str,
                ttl_seconds: float) -> dict[str, datetime]:
    """Extend our leases by `ttl_seconds` from now; raise LockLost naming any we no longer hold.

    An expired lease is lost even if nobody took it yet: a step may already have refused to act.
    """
    wanted = canonical_assets(assets)
    rows = await db.fetch("SELECT * FROM execution.lock_renew($1, $2, $3, $4)",
                          tenant, wanted, execution_id, float(ttl_seconds))
    got = {r["asset"]: r["expires_at"] for r in rows}
    lost = set(wanted) - set(got)
    if lost:
        raise LockLost(tenant, execution_id, lost)
    return got


async def release(db: Db, tenant: str, execution_id: str,
                  assets: Iterable[str] | None = None) -> list[str]:
    """Release the execution's leases (all when `assets` is None) and leave every queue.

    Safe to call repeatedly and after the lease was lost: it only deletes rows that are ours.
    """
    wanted = None if assets is None else canonical_assets(assets)
    released = await db.fetchval("SELECT execution.lock_release($1, $2, $3)",
                                 tenant, wanted, execution_id)
    return list(released or [])


async def reap_expired(db: Db) -> list[tuple[str, str, str]]:
    """Delete expired leases and stale waiters; returns (tenant, asset, execution_id) reaped.

    Acquisition already ignores expired leases; reaping just keeps the table honest and wakes
    the next waiter at once instead of at its next poll.
    """
    rows = await db.fetch("SELECT * FROM execution.lock_reap()")
    return [(r["tenant"], r["asset"], r["execution_id"]) for r in rows]


async def check_fencing(conn: asyncpg.Connection, tenant: str, asset: str, execution_id: str,
                        token: int) -> bool:
    """True if `execution_id` still holds `asset` with `token` and the lease has not expired.

    Call it inside the transaction that records "step started": FOR SHARE keeps anyone from
    taking the lease over until that transaction ends, so the check and the record are atomic.
    """
    row = await conn.fetchval(
        "SELECT 1 FROM execution.execution_locks WHERE asset = $1"
        " AND execution_id = $2 AND fencing_token = $3 AND expires_at > clock_timestamp()"
        " FOR SHARE", asset, execution_id, int(token))
    return row is not None


async def holder_of(db: Db, tenant: str, asset: str) -> Holder | None:
    """Who holds the asset now, whichever tenant (None if free or the lease expired): for
    progress and events. `tenant` is the asker's, kept for the callers' symmetry."""
    row = await db.fetchrow(
        "SELECT * FROM execution.execution_locks WHERE asset = $1"
        " AND expires_at > clock_timestamp()", asset)
    if row is None:
        return None
    return Holder(tenant=row["tenant"], asset=row["asset"], execution_id=row["execution_id"],
                  owner=row["owner"], fencing_token=row["fencing_token"],
                  acquired_at=row["acquired_at"], expires_at=row["expires_at"])


@contextlib.asynccontextmanager
async def keep_renewed(pool: asyncpg.Pool, tenant: str, assets: Iterable[str], execution_id: str,
                       ttl_seconds: float, *, interval: float | None = None,
                       on_lost: Callable[[LockLost], None] | None = None,
                       ) -> AsyncIterator[asyncio.Event]:
    """Renew leases in the background while the body runs; yields an Event set on loss.

    For a long step: renew every ttl/3 so one missed renewal does not lose the lease.
    """
    wanted = canonical_assets(assets)
    lost = asyncio.Event()
    every = interval if interval is not None else max(0.05, ttl_seconds / 3)

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await renew(pool, tenant, wanted, execution_id, ttl_seconds)
            except LockLost as err:
                lost.set()
                if on_lost is not None:
                    on_lost(err)
                return
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                continue  # transient; the lease still has up to two thirds of its TTL left

    task = asyncio.create_task(loop()) if wanted else None
    try:
        yield lost
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
