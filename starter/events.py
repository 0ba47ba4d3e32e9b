"""An execution's event timeline, read once or followed live and resumed after any event id.

The mirror announces new events on the Postgres channel `opsc_events` (migration 009). An
`EventHub` holds ONE listening connection per process and wakes the followers of the
execution a notification names; a follower reads what is new (`id > after`) and sleeps until
the next notification, so nothing polls. Event ids of one execution are handed out in commit
order, so resuming after the last id a client saw loses nothing and repeats nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import asyncpg

log = logging.getLogger("opsconductor.events")

CHANNEL = "opsc_events"
ENDED = ("completed", "failed", "cancelled", "timeout", "partial", "rejected")
EVENTS_SQL = (
    "SELECT id, execution_id::text AS execution_id, event_type, step_id, from_status, "
    "to_status, actor, message, data, created_at FROM execution.event_log "
    "WHERE execution_id = $1 AND id > $2 ORDER BY id LIMIT $3")
BATCH = 500
# A follower re-reads after this long without a notification: a guard against a notification
# lost with a dropped connection, not the way events arrive.
QUIET_RECHECK_SECONDS = 30.0


def event_view(row: Any) -> dict[str, Any]:
    """One event as the CLI's JSON lines and the HTTP stream show it."""
    data = row["data"]
    return {"id": row["id"], "execution_id": row["execution_id"], "type": row["event_type"],
            "step_id": row["step_id"], "from_status": row["from_status"],
            "to_status": row["to_status"], "actor": row["actor"], "message": row["message"],
            "data": json.loads(data) if isinstance(data, str) else data,
            "at": row["created_at"].isoformat() if isinstance(row["created_at"], datetime)
            else row["created_at"]}


class EventHub:
    """One LISTEN connection (taken from `pool`) for every follower in the process; it
    reconnects after a drop and then wakes every follower, which re-reads from its last id."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()
        self.notifications = 0

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        execution_id = payload.partition(":")[0]
        for event in self.waiters.get(execution_id, ()):
            event.set()

    def _on_lost(self, _conn: Any) -> None:
        self.conn = None
        for events in self.waiters.values():
            for event in events:
                event.set()

    async def ensure_listening(self) -> None:
        """LISTEN, unless already listening."""
        async with self.lock:
            if self.conn is not None and not self.conn.is_closed():
                return
            conn = await self.pool.acquire()
            try:
                await conn.add_listener(CHANNEL, self._on_notify)
                conn.add_termination_listener(self._on_lost)
            except BaseException:
                await self.pool.release(conn)
                raise
            self.conn = conn

    async def close(self) -> None:
        async with self.lock:
            conn, self.conn = self.conn, None
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(asyncpg.PostgresError, OSError):
                    await conn.remove_listener(CHANNEL, self._on_notify)
                    conn.remove_termination_listener(self._on_lost)
                await self.pool.release(conn)

    @contextlib.contextmanager
    def subscription(self, execution_id: str) -> Any:
        event = asyncio.Event()
        self.waiters.setdefault(execution_id, set()).add(event)
        try:
            yield event
        finally:
            waiting = self.waiters.get(execution_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self.waiters[execution_id]

    async def read(self, execution_id: str, after: int = 0,
                   limit: int = BATCH) -> list[dict[str, Any]]:
        """Events with id > `after`, oldest first."""
        rows = await self.pool.fetch(EVENTS_SQL, uuid.UUID(execution_id), after, limit)
        return [event_view(r) for r in rows]

    async def ended(self, execution_id: str) -> bool:
        status = await self.pool.fetchval(
            "SELECT status::text FROM execution.executions WHERE execution_id = $1",
            uuid.UUID(execution_id))
        return status in ENDED

    async def follow(self, execution_id: str, after: int = 0, *,
                     until_ended: bool = True) -> AsyncGenerator[dict[str, Any], None]:
        """Every event after `after`, then each new one as it is committed; returns once the
        execution has ended and its last event was yielded (`until_ended`)."""
        with self.subscription(execution_id) as wake:
            while True:
                try:
                    await self.ensure_listening()  # before reading: nothing slips between
                    wake.clear()
                    batch = await self.read(execution_id, after)
                except (OSError, asyncpg.PostgresConnectionError,
                        asyncpg.InterfaceError) as err:
                    log.warning("event stream interrupted (%s); resuming after %d", err, after)
                    await asyncio.sleep(0.5)
                    continue
                for event in batch:
                    after = event["id"]
                    yield event
                if len(batch) == BATCH:
                    continue
                if until_ended and await self.ended(execution_id):
                    # the final status and its events commit together: drain, then stop
                    for event in await self.read(execution_id, after, limit=1_000_000):
                        after = event["id"]
                        yield event
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), QUIET_RECHECK_SECONDS)
