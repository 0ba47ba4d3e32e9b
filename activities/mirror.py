"""Mirror writes: the workflow's view of an execution, copied into Postgres.

Each call is one transaction and idempotent: rows are upserted, events carry a key that is
unique per execution, so a retried activity never duplicates anything. Status changes are
checked against the status machine here too, so the mirror can never record an illegal move.
"""

from __future__ import annotations

import json

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from opsconductor.activities.mirror_rows import (
    EVENT_INSERT,
    STEP_AND_EVENT,
    STEP_UPSERT,
    _event_arrays,
    _json,
    _step_arrays,
)
from opsconductor.schema.enums import ApprovalState, ExecutionStatus
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.fsm import IllegalTransition, check_transition
from opsconductor.schema.messages import (
    ApprovalRecord,
    EventRecord,
    MirrorWrite,
    MirrorWriteResult,
    StepRecord,
)
from opsconductor.schema.outputs import escape_text
from opsconductor.schema.spec import ExecutionSpec


async def write_events(conn: asyncpg.Connection | asyncpg.Pool, execution_id: str,
                       events: list[EventRecord]) -> None:
    if events:
        await conn.execute(EVENT_INSERT, execution_id, *_event_arrays(events))


async def write_steps(conn: asyncpg.Connection, execution_id: str,
                      steps: list[StepRecord]) -> None:
    if steps:
        await conn.execute(STEP_UPSERT, execution_id, *_step_arrays(steps))


async def write_step_and_event(conn: asyncpg.Connection | asyncpg.Pool, execution_id: str,
                               step: StepRecord, event: EventRecord) -> None:
    """A step's row and its event in one statement: atomic, and one round trip."""
    await conn.execute(STEP_AND_EVENT, execution_id, *_step_arrays([step]),
                       *_event_arrays([event]))


async def _create(conn: asyncpg.Connection, spec: ExecutionSpec, run_id: str | None) -> None:
    await conn.execute(
        """
        INSERT INTO execution.executions
          (execution_id, workflow_id, run_id, tenant, actor, environment, title, status, mode,
           sla_class, approval_level, idempotency_key, plan_hash, step_count, assets, tags,
           metadata, trace_id, spec, previous_execution_id, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11, $12, $13, $14, $15,
                $16::jsonb, $17, $18::jsonb, $19, coalesce($20, now()))
        ON CONFLICT (execution_id) DO NOTHING
        """,
        spec.execution_id, spec.workflow_id, run_id, spec.tenant, spec.actor,
        spec.environment.value, spec.title, spec.mode.value, spec.sla_class.value,
        spec.approval_level, spec.idempotency_key, spec.plan_hash, len(spec.steps), spec.assets,
        spec.tags, json.dumps(spec.metadata, default=str), spec.trace_id,
        spec.model_dump_json(), spec.previous_execution_id, spec.submitted_at)
    steps = spec.steps
    await conn.execute(
        """
        INSERT INTO execution.step_runs
          (execution_id, step_id, position, tool, kind, action_class, description, target)
        SELECT $1, u.* FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                                   $7::text[], $8::text[]) AS u
        ON CONFLICT (execution_id, step_id) DO NOTHING
        """,
        spec.execution_id, [s.id for s in steps], list(range(len(steps))),
        [s.tool for s in steps], [s.kind.value for s in steps],
        [s.action_class.value for s in steps], [s.description for s in steps],
        [s.target for s in steps])


def check_status_events(current: str, w: MirrorWrite) -> None:
    """The batch's status events must chain, legally, from the mirror's current status.

    A batch the mirror already applied (a local activity retried after its commit) is
    recognised by ending where the mirror already is.
    """
    moves = [(e.from_status, e.to_status) for e in w.events if e.type == "execution.status"]
    target = w.status.value if w.status is not None else current
    if moves and moves[-1][1] != target:
        raise IllegalTransition(f"batch ends at {moves[-1][1]} but claims status {target}")
    if current == target and (not moves or moves[0][0] != current):
        return  # nothing to do, or a replay of a batch already applied
    status = current
    for src, dst in moves:
        if src != status:
            raise IllegalTransition(f"status event {src} -> {dst} does not follow the "
                                    f"mirror's status {status}")
        check_transition(ExecutionStatus(src), ExecutionStatus(dst or ""))
        status = dst or ""
    if status != target:
        raise IllegalTransition(f"execution status {current} -> {target} without a status event")


async def _update_execution(conn: asyncpg.Connection, w: MirrorWrite) -> None:
    if w.status is not None:
        current = await conn.fetchval(
            "SELECT status::text FROM execution.executions WHERE execution_id = $1 FOR UPDATE",
            w.execution_id)
        if current is None:
            raise LookupError(f"execution {w.execution_id} has no mirror row")
        check_status_events(current, w)
    approval = (None if w.approval_state in (None, ApprovalState.NOT_REQUIRED)
                else w.approval_state.value)
    await conn.execute(
        """
        UPDATE execution.executions SET
          status = coalesce($2::execution.execution_status, status),
          approval_state = coalesce($3::execution.approval_state, approval_state),
          result = coalesce($4::jsonb, result),
          error = coalesce($5, error),
          cancel_actor = coalesce($6, cancel_actor),
          cancel_reason = coalesce($7, cancel_reason),
          started_at = coalesce(started_at, $8),
          completed_at = coalesce($9, completed_at),
          deadline_at = coalesce($10, deadline_at),
          run_id = coalesce($11, run_id),  -- the newest run (continue-as-new)
          steps_completed = (SELECT count(*) FROM execution.step_runs
                             WHERE execution_id = $1 AND status = 'completed'),
          steps_failed = (SELECT count(*) FROM execution.step_runs
                          WHERE execution_id = $1 AND status IN ('failed', 'timeout')),
          updated_at = now()
        WHERE execution_id = $1
        """,
        w.execution_id, w.status.value if w.status else None, approval,
        _json(w.result), w.error, w.cancel_actor, w.cancel_reason, w.started_at,
        w.completed_at, w.deadline_at, w.run_id)


async def write_approvals(conn: asyncpg.Connection, execution_id: str,
                          approvals: list[ApprovalRecord]) -> None:
    for a in approvals:
        await conn.execute(
            """
            INSERT INTO execution.approvals
              (execution_id, gate, plan_hash, state, required_approvals, required_role,
               senior_role, requested_at, expires_at, decided_at, decisions)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
            ON CONFLICT (execution_id, gate) DO UPDATE SET
              state = excluded.state, decided_at = excluded.decided_at,
              decisions = excluded.decisions, expires_at = excluded.expires_at,
              updated_at = now()
            """,
            execution_id, a.gate, a.plan_hash, a.state.value, a.required_approvals,
            a.required_role, a.senior_role, a.requested_at, a.expires_at, a.decided_at,
            json.dumps(a.decisions, default=str))


# A batch waits this long for a row lock, then fails retryably (retried with backoff, shown
# by `health` once it persists) rather than hanging on whoever holds it.
MIRROR_LOCK_TIMEOUT = "2s"


async def apply_mirror_write(conn: asyncpg.Connection, w: MirrorWrite) -> None:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{MIRROR_LOCK_TIMEOUT}'")
        if w.spec is not None:
            await _create(conn, w.spec, w.run_id)
        await write_steps(conn, w.execution_id, w.steps)
        await write_approvals(conn, w.execution_id, w.approvals)
        if (w.status or w.approval_state or w.result is not None or w.error or w.completed_at
                or w.started_at or w.cancel_reason is not None or w.deadline_at or w.steps
                or w.run_id):
            await _update_execution(conn, w)
        await write_events(conn, w.execution_id, w.events)
        for res in w.resolutions:
            from opsconductor.activities.attempts import resolve_unfinished

            assert res.step_id is not None
            await resolve_unfinished(conn, w.execution_id, res.step_id, res.action, res.actor)
        if w.dead_letters:
            await conn.executemany(
                "INSERT INTO execution.execution_dlq (execution_id, workflow_id, step_id, reason,"
                " error_type) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (execution_id, step_id) DO NOTHING",
                [(w.execution_id, w.workflow_id, d.step_id, d.reason, d.error_type)
                 for d in w.dead_letters])


# Errors about the data itself; connection trouble stays retryable (backoff, `health`).
REFUSED_DATA = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                asyncpg.ProgramLimitExceededError)


async def _record_refusal(conn: asyncpg.Connection, w: MirrorWrite, message: str) -> None:
    """Best effort: an event saying which batch PostgreSQL refused (the execution's row may
    itself be what could not be written)."""
    event = EventRecord(key=f"mirror.refused:{len(w.events)}:{hash(message) & 0xffffffff:x}",
                        type="mirror.write_refused", message=message,
                        data={"events": [e.key for e in w.events][:20],
                              "steps": [s.step_id for s in w.steps][:20]})
    try:
        await write_events(conn, w.execution_id, [event])
    except (asyncpg.PostgresError, OSError):
        pass


class MirrorActivities:
    """`mirror_write`, on the worker's pool."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @activity.defn(name="mirror_write")
    async def mirror_write(self, w: MirrorWrite) -> MirrorWriteResult:
        """Apply one batch to the mirror; on the first call also return the timeout
        policies."""
        from opsconductor.safety.timeouts import apply_overrides, load_policies

        async with self.pool.acquire() as conn:
            try:
                await apply_mirror_write(conn, w)
            except IllegalTransition as err:  # a bug, never fixed by retrying: fail loudly
                raise ApplicationError(str(err), type=ErrorType.ILLEGAL_TRANSITION,
                                       non_retryable=True) from err
            except REFUSED_DATA as err:  # retrying the same batch fails the same way
                message = escape_text(f"mirror write refused by PostgreSQL "
                                      f"({type(err).__name__}): {err}")
                await _record_refusal(conn, w, message)
                raise ApplicationError(message, type=ErrorType.MIRROR_WRITE_REFUSED,
                                       non_retryable=True) from err
            if not w.load_policies or w.spec is None:
                return MirrorWriteResult()
            policies = await load_policies(conn)
        sla = w.spec.sla_class
        return MirrorWriteResult(policies={
            action: apply_overrides(policy, w.spec.timeouts)
            for (s, action), policy in policies.items() if s == sla
        })
