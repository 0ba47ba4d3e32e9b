"""Lock activities: acquire (waiting with heartbeats), renew and release per-asset leases.

Locks are taken after approval (the workflow calls `acquire_locks` once the plan is approved),
so a pending approval never blocks a host. While queued, the activity heartbeats details that
name the holder, and records a `locks.waiting` event in the mirror each time the holder
changes, so `status`/`watch` can say who is in the way. `LockActivities` holds the worker's
pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from opsconductor.safety import mutex
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.locks import (
    AcquireLocksInput,
    AcquireLocksResult,
    ReleaseLocksInput,
    ReleaseLocksResult,
    RenewLocksInput,
    RenewLocksResult,
)

WORKER = f"{socket.gethostname()}:{os.getpid()}"
DB_OUTAGE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
             asyncpg.OperatorInterventionError)
T = TypeVar("T")


async def _until_reachable(write: Callable[[], Awaitable[T]]) -> T:
    """Retry through a database outage, heartbeating, until shortly before this activity's
    own timeout; then raise, and the workflow's retry policy calls again (a lock is never
    left to expire because PostgreSQL blinked)."""
    info = activity.info()
    budget = info.start_to_close_timeout.total_seconds() if info.start_to_close_timeout else 30
    deadline = time.monotonic() + max(1.0, budget - 2.0)
    delay = 0.1
    while True:
        try:
            return await write()
        except DB_OUTAGE:
            if time.monotonic() + delay >= deadline:
                raise
            activity.heartbeat({"waiting_for": "postgresql"})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _owner() -> str:
    try:
        info = activity.info()
        return f"{info.workflow_id}@{WORKER}"
    except RuntimeError:
        return WORKER


async def _record_waiting(pool: Any, execution_id: str, attempt: mutex.AcquireAttempt) -> None:
    """Best effort: the mirror row may not exist (tests, or a mirror outage)."""
    holder = attempt.holder_execution_id or "queue"
    with contextlib.suppress(Exception):
        await pool.execute(
            "INSERT INTO execution.event_log (execution_id, event_key, event_type, message,"
            " data) VALUES ($1, $2, 'locks.waiting', $3, $4::jsonb)"
            " ON CONFLICT (execution_id, event_key) DO NOTHING",
            uuid.UUID(execution_id), f"locks:waiting:{attempt.blocked_asset}:{holder}",
            f"waiting for {attempt.blocked_asset}: held by "
            + (f"execution {attempt.holder_execution_id}" if attempt.holder_execution_id
               else f"nobody; {attempt.waiters_ahead} earlier request(s) queued"),
            json.dumps(attempt.describe()))


async def _stop_local_commands(pool: Any, execution_id: str) -> None:
    """Stop the process groups of this execution's unfinished attempts that run here."""
    from opsconductor.activities.attempts import mark_stopped
    from opsconductor.activities.executors.local_command import stop_leftover_group

    try:
        eid = uuid.UUID(execution_id)
    except ValueError:  # not an execution's id: it has no attempts
        return
    rows = await pool.fetch(
        "SELECT step_id, attempt, pgid, proc_start FROM execution.step_attempts "
        "WHERE execution_id = $1 AND finished_at IS NULL AND stopped_at IS NULL "
        "AND pgid IS NOT NULL AND process_host = $2",
        eid, f"local:{socket.gethostname()}")
    for r in rows:
        killed = await stop_leftover_group(r["pgid"], r["proc_start"])
        await mark_stopped(pool, execution_id, r["step_id"], r["attempt"],
                           f"process group {r['pgid']} "
                           + ("stopped" if killed else "already gone") + " before lock release")


class LockActivities:
    """`acquire_locks`, `renew_locks` and `release_locks`, on the worker's pool."""

    def __init__(self, *, pool: Any) -> None:
        self.pool = pool

    @activity.defn(name="acquire_locks")
    async def acquire_locks(self, inp: AcquireLocksInput) -> AcquireLocksResult:
        """Wait (FIFO, heartbeating) until all assets are ours, up to `wait_timeout_seconds`.

        Raises a non-retryable `LockTimeout` naming the holder; on cancellation the waiter
        rows are removed before the cancellation propagates.
        """
        pool = self.pool
        owner = _owner()
        start = time.monotonic()
        last_holder: tuple[str | None, str | None] | None = None

        async def on_wait(attempt: mutex.AcquireAttempt, waited: float) -> None:
            nonlocal last_holder
            activity.heartbeat({**attempt.describe(), "waited_seconds": round(waited, 1)})
            holder = (attempt.blocked_asset, attempt.holder_execution_id)
            if holder != last_holder:
                last_holder = holder
                await _record_waiting(pool, inp.execution_id, attempt)

        try:
            tokens = await mutex.acquire(
                pool, inp.tenant, inp.assets, inp.execution_id, owner, inp.lease_seconds,
                timeout=inp.wait_timeout_seconds, poll_interval=inp.poll_interval_seconds,
                on_wait=on_wait)
        except mutex.LockTimeout as err:
            raise ApplicationError(str(err), err.last.describe() if err.last else None,
                                   type=ErrorType.LOCK_TIMEOUT, non_retryable=True) from None
        except asyncio.CancelledError:
            # The execution is being cancelled: a grant that raced with the cancel is of no
            # use, so free the assets too instead of letting the lease run out.
            with contextlib.suppress(Exception):
                await asyncio.shield(mutex.release(pool, inp.tenant, inp.execution_id,
                                                   inp.assets))
            raise
        return AcquireLocksResult(tokens=tokens, waited_seconds=time.monotonic() - start,
                                  owner=owner)

    @activity.defn(name="renew_locks")
    async def renew_locks(self, inp: RenewLocksInput) -> RenewLocksResult:
        """Extend the leases; a non-retryable `LockLost` names any asset no longer held."""
        pool = self.pool
        try:
            expires = await mutex.renew(pool, inp.tenant, inp.assets, inp.execution_id,
                                        inp.lease_seconds)
        except mutex.LockLost as err:
            raise ApplicationError(str(err), {"assets": err.assets}, type=ErrorType.LOCK_LOST,
                                   non_retryable=True) from None
        return RenewLocksResult(expires_at=expires)

    @activity.defn(name="release_locks")
    async def release_locks(self, inp: ReleaseLocksInput) -> ReleaseLocksResult:
        """Release on completion, failure or cancel; idempotent, never touches others' leases.

        A command of this execution still alive on this machine (an attempt the server gave
        up on while its worker ran on) is stopped first: the asset is never handed on while
        its holder's command may still act.
        """
        pool = self.pool
        assets = inp.assets if inp.assets is not None else (list(inp.tokens) or None)
        await _until_reachable(lambda: _stop_local_commands(pool, inp.execution_id))
        released = await _until_reachable(
            lambda: mutex.release(pool, inp.tenant, inp.execution_id, assets))
        return ReleaseLocksResult(released=released)
