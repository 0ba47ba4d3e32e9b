"""Storage of the unknown-outcome guard (table `execution.step_attempts`, migration 003).

Activities run at least once. Before a step that is not declared idempotent acts, the step
activity records "attempt started" — in the same transaction as its "running" mirror write,
so either both exist or neither — and closes the attempt when the step ends. If a later
attempt finds an earlier one that started and never finished, that worker died mid-step and
the step's effect is unknown: the step must not act again until an operator resolves it
(`resolve_unfinished` with retry / skip / fail).

Every function takes an asyncpg Connection or Pool (`conn_or_pool`).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

Executor = asyncpg.Connection | asyncpg.Pool
Outcome = Literal["succeeded", "failed", "cancelled", "timeout", "resolved_retry",
                  "resolved_skip", "resolved_fail"]


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

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> StepAttempt:
        return cls(execution_id=str(r["execution_id"]), step_id=r["step_id"],
                   attempt=r["attempt"], worker=r["worker"], started_at=r["started_at"],
                   finished_at=r["finished_at"], outcome=r["outcome"], detail=r["detail"])


def worker_identity() -> str:
    """host:pid — enough for an operator to know which worker vanished."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _uuid(execution_id: str | uuid.UUID) -> uuid.UUID:
    return execution_id if isinstance(execution_id, uuid.UUID) else uuid.UUID(str(execution_id))


async def record_attempt_started(conn: asyncpg.Connection, execution_id: str | uuid.UUID,
                                 step_id: str, attempt: int, worker: str | None = None) -> None:
    """Call inside the step-start mirror transaction, before the step acts.

    Re-recording the same attempt (a redelivered activity task) restarts it.
    """
    await conn.execute(
        """INSERT INTO execution.step_attempts (execution_id, step_id, attempt, worker)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (execution_id, step_id, attempt) DO UPDATE
             SET worker = EXCLUDED.worker, started_at = now(), finished_at = NULL,
                 outcome = NULL, detail = NULL""",
        _uuid(execution_id), step_id, attempt, worker or worker_identity())


async def record_attempt_finished(conn_or_pool: Executor, execution_id: str | uuid.UUID,
                                  step_id: str, attempt: int, outcome: str,
                                  detail: str | None = None) -> bool:
    """Close an attempt; False when it was not open (already closed or never recorded)."""
    tag = await conn_or_pool.execute(
        """UPDATE execution.step_attempts SET finished_at = now(), outcome = $4, detail = $5
           WHERE execution_id = $1 AND step_id = $2 AND attempt = $3
             AND finished_at IS NULL""",
        _uuid(execution_id), step_id, attempt, outcome, detail)
    return tag.endswith(" 1")


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
    """Close every open attempt of the step after an operator's `resolve`; returns how many."""
    tag = await conn_or_pool.execute(
        """UPDATE execution.step_attempts
           SET finished_at = now(), outcome = $3, detail = $4
           WHERE execution_id = $1 AND step_id = $2 AND finished_at IS NULL""",
        _uuid(execution_id), step_id, f"resolved_{action}", f"resolved by {actor}")
    return int(tag.rsplit(" ", 1)[-1])


async def attempts(conn_or_pool: Executor, execution_id: str | uuid.UUID,
                   step_id: str | None = None) -> list[StepAttempt]:
    """Every recorded attempt of an execution (or one step), oldest first."""
    rows: list[Any] = await conn_or_pool.fetch(
        """SELECT * FROM execution.step_attempts
           WHERE execution_id = $1 AND ($2::text IS NULL OR step_id = $2)
           ORDER BY step_id, attempt""", _uuid(execution_id), step_id)
    return [StepAttempt.from_record(r) for r in rows]
