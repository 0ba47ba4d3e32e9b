"""Storage of the unknown-outcome guard (table `execution.step_attempts`, migration 003).

Activities run at least once. Before a step that is not declared idempotent acts, the step
activity records "attempt started" — in the same transaction as its "running" mirror write,
so either both exist or neither — and closes the attempt when the step ends. If a later
attempt finds an earlier one that started and never finished, that worker died mid-step and
the step's effect is unknown: the step must not act again until an operator resolves it
(`resolve_unfinished` with retry / skip / fail).

Migration 007 makes the record the durable fact every retry consults (`prior_attempts`): an
attempt that finished returns its recorded result instead of running again; one that started
and may have acted (never closed, or closed `cancelled` / `unknown` — its command was killed
midway or its end could not be recorded) pauses a non-idempotent step for an operator; and a
process group an attempt left behind (`record_process`) is stopped before the next one acts.
The look-up follows the chain of linked runs (`executions.previous_execution_id`: dlq requeue
and re-runs), so the guard holds across them.

An attempt whose worker is alive holds an advisory lock (`AttemptLiveness`): a retry Temporal
sends while it still runs (a server restart timed it out) waits for its recorded result
(`live_open_attempts`) instead of pausing; only an attempt whose worker is gone pauses.

Every function takes an asyncpg Connection or Pool (`conn_or_pool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

import asyncpg

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
Outcome = Literal["succeeded", "failed", "cancelled", "timeout", "unknown", "resolved_retry",
                  "resolved_skip", "resolved_fail"]
# Closed, yet the command may have acted: killed midway, or its end never recorded.
MAY_HAVE_ACTED = ("cancelled", "unknown")
# The executions linked to $1 by previous_execution_id, itself included (dlq requeue, re-runs).
CHAIN_SQL = """WITH RECURSIVE chain(id, depth) AS (
                 SELECT $1::uuid, 0
                 UNION
                 SELECT e.previous_execution_id, c.depth + 1
                 FROM execution.executions e JOIN chain c ON e.execution_id = c.id
                 WHERE e.previous_execution_id IS NOT NULL AND c.depth < 50)"""


@dataclass(frozen=True)
class TargetProcess:
    """One target's process group of an earlier attempt, not yet known to be stopped."""

    execution_id: str
    step_id: str
    attempt: int
    target: str
    pgid: int
    proc_start: int | None
    process_host: str


@dataclass(frozen=True)
class StepAttempt:
    execution_id: str
    step_id: str
    attempt: int
    worker: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    detail: str | None
    target: str | None = None
    pgid: int | None = None
    proc_start: int | None = None
    process_host: str | None = None
    stopped_at: datetime | None = None
    result: dict[str, Any] | None = None
    resolved_by: str | None = None
    # Its targets' process groups not yet known stopped (`prior_attempts` reads them along).
    targets: tuple[TargetProcess, ...] = ()

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> StepAttempt:
        keys = set(r.keys())
        extra: dict[str, Any] = {k: r[k] for k in ("target", "pgid", "proc_start", "process_host",
                                                   "stopped_at", "resolved_by") if k in keys}
        if "result" in keys and r["result"] is not None:
            raw = r["result"]
            extra["result"] = json.loads(raw) if isinstance(raw, str) else raw
        if "target_processes" in keys and r["target_processes"] is not None:
            raw = r["target_processes"]
            extra["targets"] = tuple(TargetProcess(
                execution_id=str(r["execution_id"]), step_id=r["step_id"], attempt=r["attempt"],
                target=p["target"], pgid=p["pgid"], proc_start=p["proc_start"],
                process_host=p["process_host"])
                for p in (json.loads(raw) if isinstance(raw, str) else raw))
        return cls(execution_id=str(r["execution_id"]), step_id=r["step_id"],
                   attempt=r["attempt"], worker=r["worker"], started_at=r["started_at"],
                   finished_at=r["finished_at"], outcome=r["outcome"], detail=r["detail"],
                   **extra)

    @property
    def may_have_acted(self) -> bool:
        """Started, and its effect is unknown, and no operator has answered for it yet."""
        return self.resolved_by is None and (self.finished_at is None
                                             or self.outcome in MAY_HAVE_ACTED)

    def evidence(self) -> str:
        """Who, where, when, and what is known, for the operator's pause message."""
        known = ("it never finished (its worker died, or its end could not be recorded)"
                 if self.finished_at is None else
                 f"it ended {self.outcome} at {self.finished_at:%H:%M:%S} (killed midway)")
        where = f" on {self.target}" if self.target and self.target != "localhost" else ""
        group = (f"; process group {self.pgid} on {self.process_host}"
                 + (" was stopped" if self.stopped_at else "") if self.pgid else "")
        return (f"attempt {self.attempt} of execution {self.execution_id} started{where} by "
                f"worker {self.worker} at {self.started_at:%Y-%m-%d %H:%M:%S} UTC; {known}"
                f"{group}")


def worker_identity() -> str:
    """host:pid — enough for an operator to know which worker vanished."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _uuid(execution_id: str | uuid.UUID) -> uuid.UUID:
    return execution_id if isinstance(execution_id, uuid.UUID) else uuid.UUID(str(execution_id))


async def record_attempt_started(conn: asyncpg.Connection, execution_id: str | uuid.UUID,
                                 step_id: str, attempt: int, worker: str | None = None, *,
                                 target: str | None = None) -> None:
    """Call inside the step-start mirror transaction, before the step acts.

    Re-recording the same attempt (a redelivered activity task) restarts it.
    """
    await conn.execute(
        """INSERT INTO execution.step_attempts (execution_id, step_id, attempt, worker, target)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (execution_id, step_id, attempt) DO UPDATE
             SET worker = EXCLUDED.worker, target = EXCLUDED.target, started_at = now(),
                 finished_at = NULL, outcome = NULL, detail = NULL, pgid = NULL,
                 proc_start = NULL, process_host = NULL, stopped_at = NULL, result = NULL,
                 resolved_by = NULL, resolved_at = NULL""",
        _uuid(execution_id), step_id, attempt, worker or worker_identity(), target)


_START_CTE = """
a AS (
  INSERT INTO execution.step_attempts (execution_id, step_id, attempt, worker, target)
  VALUES ($1, $19, $20, $21, $22)
  ON CONFLICT (execution_id, step_id, attempt) DO UPDATE
    SET worker = EXCLUDED.worker, target = EXCLUDED.target, started_at = now(),
        finished_at = NULL, outcome = NULL, detail = NULL, pgid = NULL,
        proc_start = NULL, process_host = NULL, stopped_at = NULL, result = NULL,
        resolved_by = NULL, resolved_at = NULL
  RETURNING 1)"""


@functools.cache
def _start_with_step_sql() -> str:
    from opsconductor.activities.mirror_rows import STEP_COLUMNS, _event_insert, _step_update

    return (f"WITH {_START_CTE.strip()},\nstep AS ({_step_update(2)})"
            f"{_event_insert(2 + len(STEP_COLUMNS))}")


async def start_with_step(conn: asyncpg.Connection, execution_id: str | uuid.UUID,
                          step_id: str, attempt: int, worker: str | None = None, *,
                          target: str | None, step: Any, event: Any) -> None:
    """`record_attempt_started` and the mirror's `write_step_and_event` (the "running" row
    and its event) as one statement: one round trip instead of two, atomic in itself."""
    from opsconductor.activities.mirror_rows import _event_arrays, _step_arrays

    await conn.execute(
        _start_with_step_sql(), _uuid(execution_id), *_step_arrays([step]),
        *_event_arrays([event]), step_id, attempt, worker or worker_identity(), target)


async def prior_attempts(conn_or_pool: Executor, execution_id: str | uuid.UUID, step_id: str,
                         *, exclude_attempt: int | None = None) -> list[StepAttempt]:
    """Every attempt of the step in this execution and the runs it is linked to, newest
    first (the caller's own attempt, `exclude_attempt` of this execution, left out), each with
    its targets' process groups not yet stopped: one round trip."""
    rows: list[Any] = await conn_or_pool.fetch(
        CHAIN_SQL + """
           SELECT a.*, (SELECT json_agg(json_build_object(
                            'target', p.target, 'pgid', p.pgid, 'proc_start', p.proc_start,
                            'process_host', p.process_host) ORDER BY p.target)
                        FROM execution.attempt_processes p
                        WHERE p.execution_id = a.execution_id AND p.step_id = a.step_id
                          AND p.attempt = a.attempt AND p.stopped_at IS NULL
                       ) AS target_processes
           FROM execution.step_attempts a JOIN chain c ON a.execution_id = c.id
           WHERE a.step_id = $2 AND NOT (a.execution_id = $1 AND a.attempt = $3)
           ORDER BY a.started_at DESC, a.attempt DESC""",
        _uuid(execution_id), step_id, exclude_attempt or 0)
    return [StepAttempt.from_record(r) for r in rows]


async def record_process(conn_or_pool: Executor, execution_id: str | uuid.UUID, step_id: str,
                         attempt: int, *, process_host: str, pgid: int,
                         proc_start: int | None, target: str | None = None) -> None:
    """Where the attempt's command runs: its process group and the leader's start time.

    With `target` (one of several commands of the attempt: a fleet's target, a fan-out's
    asset) the group gets a row of its own (`execution.attempt_processes`, migration 019), so
    every target's group is known, not only the last one to report."""
    if target is None:
        await conn_or_pool.execute(
            """UPDATE execution.step_attempts SET process_host = $4, pgid = $5, proc_start = $6
               WHERE execution_id = $1 AND step_id = $2 AND attempt = $3""",
            _uuid(execution_id), step_id, attempt, process_host, pgid, proc_start)
        return
    await conn_or_pool.execute(
        """INSERT INTO execution.attempt_processes
             (execution_id, step_id, attempt, target, process_host, pgid, proc_start)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (execution_id, step_id, attempt, target) DO UPDATE SET
             process_host = excluded.process_host, pgid = excluded.pgid,
             proc_start = excluded.proc_start, recorded_at = now(), stopped_at = NULL""",
        _uuid(execution_id), step_id, attempt, target, process_host, pgid, proc_start)


async def mark_target_stopped(conn_or_pool: Executor, old: TargetProcess, detail: str) -> None:
    """A later attempt made sure this target's process group is gone (noted on the attempt)."""
    await conn_or_pool.execute(
        """WITH p AS (UPDATE execution.attempt_processes SET stopped_at = now()
                      WHERE execution_id = $1 AND step_id = $2 AND attempt = $3
                        AND target = $4 RETURNING 1)
           UPDATE execution.step_attempts SET detail = coalesce(detail || '; ', '') || $5
           WHERE execution_id = $1 AND step_id = $2 AND attempt = $3
             AND EXISTS (SELECT 1 FROM p)""",
        _uuid(old.execution_id), old.step_id, old.attempt, old.target, detail)


async def mark_stopped(conn_or_pool: Executor, execution_id: str | uuid.UUID, step_id: str,
                       attempt: int, detail: str) -> None:
    """A later attempt made sure this attempt's process group is gone."""
    await conn_or_pool.execute(
        """UPDATE execution.step_attempts SET stopped_at = now(),
             detail = coalesce(detail || '; ', '') || $4
           WHERE execution_id = $1 AND step_id = $2 AND attempt = $3""",
        _uuid(execution_id), step_id, attempt, detail)


async def record_attempt_finished(conn_or_pool: Executor, execution_id: str | uuid.UUID,
                                  step_id: str, attempt: int, outcome: str,
                                  detail: str | None = None, *,
                                  result: dict[str, Any] | None = None) -> bool:
    """Close an attempt (with its masked result on success); False when it was not open.

    The process group is gone once the attempt closes (the runner kills it at the end), and
    so are its targets' groups (the fleet runner stops each with the step): one statement.
    """
    closed = await conn_or_pool.fetchval(
        """WITH a AS (
             UPDATE execution.step_attempts SET finished_at = now(), outcome = $4,
               detail = $5, result = $6::jsonb,
               stopped_at = CASE WHEN pgid IS NULL THEN NULL ELSE now() END
             WHERE execution_id = $1 AND step_id = $2 AND attempt = $3
               AND finished_at IS NULL RETURNING 1),
           p AS (
             UPDATE execution.attempt_processes SET stopped_at = now()
             WHERE execution_id = $1 AND step_id = $2 AND attempt = $3
               AND stopped_at IS NULL AND EXISTS (SELECT 1 FROM a) RETURNING 1)
           SELECT count(*) FROM a""",
        _uuid(execution_id), step_id, attempt, outcome, detail,
        json.dumps(result, default=str) if result is not None else None)
    return bool(closed)


# The attempt's close, its step row and its event, in one statement (`finish_with_step`):
# $1 execution, $2-$9 the step arrays, $10-$18 the event arrays, then the attempt's own.
_FINISH_CTES = """
a AS (
  UPDATE execution.step_attempts SET finished_at = now(), outcome = $21, detail = $22,
    result = $23::jsonb, stopped_at = CASE WHEN pgid IS NULL THEN NULL ELSE now() END
  WHERE execution_id = $1 AND step_id = $19 AND attempt = $20 AND finished_at IS NULL
  RETURNING 1),
p AS (
  UPDATE execution.attempt_processes SET stopped_at = now()
  WHERE execution_id = $1 AND step_id = $19 AND attempt = $20 AND stopped_at IS NULL
    AND EXISTS (SELECT 1 FROM a) RETURNING 1)"""


@functools.cache
def _finish_with_step_sql() -> str:
    from opsconductor.activities.mirror_rows import STEP_COLUMNS, _event_insert, _step_update

    return (f"WITH {_FINISH_CTES.strip()},\nstep AS ({_step_update(2)})"
            f"{_event_insert(2 + len(STEP_COLUMNS))}")


async def finish_with_step(conn_or_pool: Executor, execution_id: str | uuid.UUID,
                           step_id: str, attempt: int, outcome: str, *, step: Any, event: Any,
                           detail: str | None = None,
                           result: dict[str, Any] | None = None) -> None:
    """`record_attempt_finished` and the mirror's `write_step_and_event` as one statement:
    atomic without a transaction block, one round trip instead of four."""
    from opsconductor.activities.mirror_rows import _event_arrays, _step_arrays

    await conn_or_pool.execute(
        _finish_with_step_sql(), _uuid(execution_id), *_step_arrays([step]),
        *_event_arrays([event]), step_id, attempt, outcome, detail,
        json.dumps(result, default=str) if result is not None else None)


async def unfinished_attempt(conn_or_pool: Executor, execution_id: str | uuid.UUID,
                             step_id: str, *, before_attempt: int | None = None
                             ) -> StepAttempt | None:
    """The latest attempt of the step that started and never finished, if any.

    Pass the current attempt as `before_attempt` to ignore the caller's own row.
    """
    r = await conn_or_pool.fetchrow(
        """SELECT * FROM execution.step_attempts
           WHERE execution_id = $1 AND step_id = $2 AND finished_at IS NULL
             AND ($3::int IS NULL OR attempt < $3)
           ORDER BY attempt DESC LIMIT 1""",
        _uuid(execution_id), step_id, before_attempt)
    return StepAttempt.from_record(r) if r else None


async def resolve_unfinished(conn_or_pool: Executor, execution_id: str | uuid.UUID,
                             step_id: str, action: Literal["retry", "skip", "fail"],
                             actor: str) -> int:
    """Answer for every attempt of the step (in this execution and the runs it is linked to)
    whose effect is unknown, after an operator's `resolve`; returns how many.

    Open attempts close as `resolved_<action>`; closed ones that may have acted keep their
    outcome. Both record who answered, so the guard no longer stops on them.
    """
    tag = await conn_or_pool.execute(
        CHAIN_SQL + """
           UPDATE execution.step_attempts a
           SET finished_at = coalesce(a.finished_at, now()),
               outcome = CASE WHEN a.finished_at IS NULL THEN $3 ELSE a.outcome END,
               detail = CASE WHEN a.finished_at IS NULL THEN $4
                             ELSE coalesce(a.detail || '; ', '') || $4 END,
               resolved_by = $5, resolved_at = now()
           FROM chain c
           WHERE a.execution_id = c.id AND a.step_id = $2 AND a.resolved_by IS NULL
             AND (a.finished_at IS NULL OR a.outcome IN ('cancelled', 'unknown'))""",
        _uuid(execution_id), step_id, f"resolved_{action}", f"resolved by {actor}", actor)
    return int(tag.rsplit(" ", 1)[-1])


async def attempts(conn_or_pool: Executor, execution_id: str | uuid.UUID,
                   step_id: str | None = None) -> list[StepAttempt]:
    """Every recorded attempt of an execution (or one step), oldest first."""
    rows: list[Any] = await conn_or_pool.fetch(
        """SELECT * FROM execution.step_attempts
           WHERE execution_id = $1 AND ($2::text IS NULL OR step_id = $2)
           ORDER BY step_id, attempt""", _uuid(execution_id), step_id)
    return [StepAttempt.from_record(r) for r in rows]


# ------------------------------------------------------------------------ liveness

# What a lost session looks like from asyncpg (killed backend, PostgreSQL restart).
# A session the server ended while it sat idle can instead leave asyncpg's protocol in a state
# that refuses the next statement ("cannot switch to state …"): that session is lost as well.
SESSION_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.InternalClientError, asyncpg.OperatorInterventionError)


def attempt_key(execution_id: str | uuid.UUID, step_id: str, attempt: int) -> int:
    """The advisory-lock key (a signed bigint) of one attempt."""
    digest = hashlib.blake2b(f"opsc-attempt:{execution_id}:{step_id}:{attempt}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lost(conn: Any) -> bool:
    """Whether a pooled session is gone: closed, or already taken back by the pool (asyncpg
    detaches a checked-out connection whose server end closed)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


class AttemptLiveness:
    """A live attempt holds a PostgreSQL advisory lock for as long as it runs.

    Temporal may give up on an attempt that is in fact alive — a server restart or rolling
    upgrade times it out while its heartbeats cannot arrive — and send a retry. The retry
    asks PostgreSQL whether the earlier attempt's lock is still held: held means its worker
    is alive and still running it (wait for its recorded result); free means its worker's
    session is gone (the guard then pauses a non-idempotent step, as before).

    One pooled connection per worker holds every running attempt's lock; it is checked out
    only while at least one attempt runs, so the pool closes normally when idle. The lock
    dies with the worker's session (process killed, host gone: the session's TCP keepalive),
    which no timestamp lease can tell as quickly.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._conn: Any = None
        self._keys: set[int] = set()
        self._lock = asyncio.Lock()

    async def _connection(self) -> Any:
        if self._conn is not None and _lost(self._conn):
            await self._drop(broken=True)
        if self._conn is None:
            self._conn = await self.pool.acquire()
            for key in self._keys:  # a new session after the old one died: hold them again
                await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
        return self._conn

    async def _drop(self, *, broken: bool = False) -> None:
        """Give the session back; a broken one is closed first, so the pool replaces it
        instead of trying to reset it (which a dead protocol never answers)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                if broken and not _lost(conn):
                    conn.terminate()
                await self.pool.release(conn)

    async def _call(self, sql: str, key: int) -> Any:
        """One statement on the holding session; a dead session is replaced once."""
        for last in (False, True):
            try:
                return await (await self._connection()).fetchval(sql, key)
            except SESSION_LOST:
                await self._drop(broken=True)
                if last:
                    raise
        return None

    async def hold(self, key: int) -> bool:
        """Mark an attempt alive; False when it cannot be (then a retry treats it as gone)."""
        async with self._lock:
            try:
                held = bool(await self._call("SELECT pg_try_advisory_lock($1)", key))
            except (*SESSION_LOST, asyncpg.PostgresError):
                return False
            if held:
                self._keys.add(key)
            elif not self._keys:
                await self._drop()
            return held

    async def release(self, key: int) -> None:
        """The attempt ended (its end is recorded, or it is stopped)."""
        async with self._lock:
            if key not in self._keys:
                return
            self._keys.discard(key)
            if self._conn is None:
                return
            if self._keys:
                with contextlib.suppress(*SESSION_LOST, asyncpg.PostgresError):
                    await self._call("SELECT pg_advisory_unlock($1)", key)
            else:  # idle: give the connection back (the pool's reset drops its locks)
                await self._drop()


async def attempt_alive(conn_or_pool: Executor, key: int) -> bool:
    """Whether some session (a live worker) holds the attempt's lock."""
    async def probe(conn: asyncpg.Connection) -> bool:
        async with conn.transaction():  # a transaction lock: gone at commit, never kept
            return not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", key)

    if isinstance(conn_or_pool, asyncpg.Pool):
        async with conn_or_pool.acquire() as conn:
            return await probe(conn)
    return await probe(conn_or_pool)


async def live_open_attempts(conn_or_pool: Executor, execution_id: str | uuid.UUID,
                             step_id: str, *, exclude_attempt: int) -> list[StepAttempt]:
    """This execution's earlier attempts of the step that never closed and whose worker still
    holds them: still running, though Temporal may have given up on them."""
    rows: list[Any] = await conn_or_pool.fetch(
        """SELECT * FROM execution.step_attempts
           WHERE execution_id = $1 AND step_id = $2 AND attempt <> $3
             AND finished_at IS NULL AND resolved_by IS NULL ORDER BY attempt""",
        _uuid(execution_id), step_id, exclude_attempt)
    found = [StepAttempt.from_record(r) for r in rows]
    return [a for a in found
            if await attempt_alive(conn_or_pool, attempt_key(a.execution_id, a.step_id,
                                                             a.attempt))]
