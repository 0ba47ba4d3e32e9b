"""The step activity: one plan step, from permission check to masked result.

Everything that touches the world for a step happens here, in one activity, so a step costs
one Temporal round trip: RBAC, the fencing check and the "started" mirror write (one
transaction), secret resolution, the executor, masking, and the "finished" mirror write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from opsconductor.activities.assets import UnknownAsset, resolve_asset
from opsconductor.activities.checks import result_context, run_checks
from opsconductor.activities.db import get_pool
from opsconductor.activities.executors.base import StepContext, StepOutcome
from opsconductor.activities.executors.registry import executor_for
from opsconductor.activities.mirror import write_step_and_event
from opsconductor.schema.enums import StepStatus
from opsconductor.schema.messages import EventRecord, StepRecord, StepResult, StepRunInput

log = logging.getLogger("opsconductor.step")
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
TIMEOUT_GRACE_SECONDS = 10.0  # the activity's own timeout exceeds the executor's by this much

# Error types the workflow treats specially; all are non-retryable.
LOCK_LOST = "LockLost"
RBAC_DENIED = "RbacDenied"
UNKNOWN_OUTCOME = "UnknownOutcome"
SECRET_NOT_FOUND = "SecretNotFound"
UNKNOWN_ASSET = "UnknownAsset"


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str, error_type: str, *, retryable: bool = False, **details: Any) -> None:
    raise ApplicationError(message, details or None, type=error_type, non_retryable=not retryable)


async def _authorize(inp: StepRunInput, pool: Any) -> Any:
    """Decide now, at the moment of action; the audit row is written with the start record
    (a denial is audited at once)."""
    from opsconductor.safety import rbac

    target = inp.step.target or "localhost"
    policy = await rbac.load_policy(pool)
    decision = policy.evaluate(tenant=inp.tenant, actor=inp.actor, action="execute",
                               environment=inp.environment.value, resource=target,
                               tool=inp.step.tool)
    entry = rbac.AuditEntry(decision, inp.tenant, inp.actor, "execute", inp.environment.value,
                            target, inp.step.tool, inp.execution_id, inp.step.id)
    if not decision.allowed:
        await rbac.audit_many(pool, [entry])
        _fail(f"denied: {inp.actor} may not execute {inp.step.tool} on {target} in "
              f"{inp.environment.value}: {decision.reason}", RBAC_DENIED)
    return entry


async def _record_start(inp: StepRunInput, attempt: int, started: datetime, pool: Any,
                        audit: Any) -> None:
    """Fencing check, unknown-outcome guard, RBAC audit and the 'running' row: one
    transaction, so a step never acts without all of them recorded."""
    from opsconductor.activities.attempts import (
        record_attempt_started,
        resolve_unfinished,
        unfinished_attempt,
    )
    from opsconductor.safety.mutex import LockLost as LockLostError
    from opsconductor.safety.mutex import check_fencing, renew
    from opsconductor.safety.rbac import audit_many

    step = inp.step
    async with pool.acquire() as conn, conn.transaction():
        if inp.fencing_tokens:
            try:
                await renew(conn, inp.tenant, list(inp.fencing_tokens), inp.execution_id,
                            inp.lease_seconds)
            except LockLostError as err:
                _fail(f"{err}; step {step.id} did not act", LOCK_LOST)
        for asset, token in sorted(inp.fencing_tokens.items()):
            if not await check_fencing(conn, inp.tenant, asset, inp.execution_id, token):
                _fail(f"lock lost: execution {inp.execution_id} no longer holds asset {asset!r} "
                      f"(fencing token {token}); step {step.id} did not act", LOCK_LOST)
        if not step.idempotent:
            if inp.override_unknown_outcome:
                await resolve_unfinished(conn, inp.execution_id, step.id, "retry", inp.actor)
            stale = await unfinished_attempt(conn, inp.execution_id, step.id,
                                             before_attempt=attempt)
            if stale is not None:
                _fail(f"step {step.id} attempt {stale.attempt} started on {stale.worker} at "
                      f"{stale.started_at:%H:%M:%S} and never finished; its outcome is unknown "
                      f"and the step is not idempotent, so it is not run again until an "
                      f"operator resolves it (retry, skip or fail)",
                      UNKNOWN_OUTCOME, stale_attempt=stale.attempt, attempt=attempt)
            await record_attempt_started(conn, inp.execution_id, step.id, attempt, WORKER_ID)
        if audit is not None:
            await audit_many(conn, [audit])
        await write_step_and_event(
            conn, inp.execution_id,
            StepRecord(step_id=step.id, status=StepStatus.RUNNING, attempts=attempt,
                       started_at=started),
            EventRecord(key=f"step:{step.id}:running:{attempt}", type="step.status",
                        step_id=step.id, from_status="pending" if attempt == 1 else "running",
                        to_status="running", message=f"attempt {attempt} started on {WORKER_ID}",
                        at=started, data={"attempt": attempt, "worker": WORKER_ID}))


async def _record_end(inp: StepRunInput, attempt: int, result: StepResult, final: bool,
                      pool: Any) -> None:
    from opsconductor.activities.attempts import record_attempt_finished

    step = inp.step
    status = result.status if final or result.status is StepStatus.COMPLETED \
        else StepStatus.RUNNING
    record = StepRecord(
        step_id=step.id, status=status, attempts=attempt,
        completed_at=result.completed_at if status is not StepStatus.RUNNING else None,
        exit_code=result.exit_code, output=_mirror_output(result), error=result.error)
    event = EventRecord(
        key=f"step:{step.id}:{result.status.value}:{attempt}",
        type="step.status" if status is not StepStatus.RUNNING else "step.attempt_failed",
        step_id=step.id, from_status="running", to_status=status.value,
        message=result.error or f"attempt {attempt} {result.status.value}",
        at=result.completed_at, data={"attempt": attempt, "exit_code": result.exit_code,
                                      "duration_ms": result.duration_ms})
    if step.idempotent:  # one statement: no transaction needed
        await write_step_and_event(pool, inp.execution_id, record, event)
        return
    outcome = {StepStatus.COMPLETED: "succeeded", StepStatus.TIMEOUT: "timeout"}.get(
        result.status, "failed")
    async with pool.acquire() as conn, conn.transaction():
        await record_attempt_finished(conn, inp.execution_id, step.id, attempt, outcome)
        await write_step_and_event(conn, inp.execution_id, record, event)


def _mirror_output(result: StepResult) -> dict[str, Any]:
    return {"stdout": result.stdout, "stderr": result.stderr, "output": result.output,
            "duration_ms": result.duration_ms}


@contextlib.asynccontextmanager
async def _leases_renewed(inp: StepRunInput, pool: Any) -> AsyncIterator[asyncio.Event | None]:
    """While a step runs on locked assets, keep their leases alive."""
    if not inp.fencing_tokens:
        yield None
        return
    from opsconductor.safety.mutex import keep_renewed

    async with keep_renewed(pool, inp.tenant, list(inp.fencing_tokens), inp.execution_id,
                            inp.lease_seconds) as lost:
        yield lost


async def _heartbeat_forever(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        activity.heartbeat()


@activity.defn(name="run_step")
async def run_step(inp: StepRunInput) -> StepResult:
    # Heartbeat from the first instant: waiting for a pool connection under load must not
    # look like a dead worker.
    beat = asyncio.create_task(_heartbeat_forever(
        max(0.2, inp.policy.heartbeat_timeout_seconds / 4)))
    try:
        return await _run_step(inp)
    finally:
        beat.cancel()


async def _run_step(inp: StepRunInput) -> StepResult:
    from opsconductor.safety.masking import Masker, forget_secret_values, register_secret_values
    from opsconductor.safety.secrets import SecretError, resolver_from_env

    # Attempt numbers run on across activity invocations: after an operator's retry, the new
    # invocation's first attempt continues the step's count instead of reusing number 1.
    local_attempt = activity.info().attempt
    attempt = inp.attempt_offset + local_attempt
    step = inp.step
    pool = await get_pool()
    audit = await _authorize(inp, pool) if inp.rbac_required else None

    try:
        asset = await resolve_asset(step.target)
    except UnknownAsset as err:
        _fail(str(err), UNKNOWN_ASSET)

    try:
        inputs, secret_values = await resolver_from_env().resolve(step.inputs)
    except SecretError as err:
        from opsconductor.activities.assets import secret_failure

        error_type, retryable = secret_failure(err)
        _fail(f"step {step.id}: {err}", error_type, retryable=retryable)
    masker = Masker().with_secrets(secret_values)
    register_secret_values(secret_values)
    checks: list[dict[str, Any]] = []
    if step.preconditions:
        results = await run_checks(step.preconditions, context={"steps": inp.prior_outputs},
                                   asset=asset)
        checks += [{"kind": "precondition", **r.to_dict()} for r in results]
        failed = [r for r in results if not r.passed]
        if failed:
            forget_secret_values(secret_values)
            _fail(masker.mask_text(f"step {step.id} precondition failed: {failed[0].expr}: "
                                   f"{failed[0].detail}"), "PreconditionFailed")

    started = _now()
    await _record_start(inp, attempt, started, pool, audit)
    timeout = min(step.timeout_seconds or inp.policy.step_timeout_seconds,
                  inp.policy.step_timeout_seconds)
    ctx = StepContext(
        execution_id=inp.execution_id, workflow_id=inp.workflow_id, tenant=inp.tenant,
        environment=inp.environment.value, step=step, inputs=inputs, timeout=timeout,
        asset=asset, prior_outputs=inp.prior_outputs, attempt=attempt,
        heartbeat=activity.heartbeat)
    try:
        async with _leases_renewed(inp, pool) as lost:
            outcome = await executor_for(step.kind).run(ctx)
        if lost is not None and lost.is_set():
            outcome = StepOutcome(ok=False, error="lock lost while the step ran: another "
                                  "execution may now hold the asset", error_type=LOCK_LOST,
                                  retryable=False, exit_code=outcome.exit_code,
                                  stdout=outcome.stdout, stderr=outcome.stderr)
    except asyncio.CancelledError:
        await _record_cancelled(inp, attempt, pool)
        raise
    except Exception as err:  # an executor bug must still produce an honest, masked failure
        outcome = StepOutcome(ok=False, error=f"{type(err).__name__}: {err}",
                              error_type="ExecutorError")
    finally:
        forget_secret_values(secret_values)

    if outcome.ok and step.success_criteria:
        context = {**result_context(outcome), "steps": inp.prior_outputs}
        results = await run_checks(step.success_criteria, context=context, asset=asset)
        checks += [{"kind": "success_criterion", **r.to_dict()} for r in results]
        failed = [r for r in results if not r.passed]
        if failed:
            outcome.ok = False
            outcome.error = f"success criterion failed: {failed[0].expr}: {failed[0].detail}"
            outcome.error_type = "SuccessCriterionFailed"
            outcome.retryable = step.idempotent
    if checks:
        outcome.output = {"result": outcome.output, "checks": checks}
    completed = _now()
    result = StepResult(
        step_id=step.id,
        status=StepStatus.COMPLETED if outcome.ok else (
            StepStatus.TIMEOUT if outcome.error_type == "StepTimeout" else StepStatus.FAILED),
        attempts=attempt, exit_code=outcome.exit_code,
        stdout=masker.mask_text(outcome.stdout), stderr=masker.mask_text(outcome.stderr),
        output=masker.mask(outcome.output),
        error=masker.mask_text(outcome.error) if outcome.error else None,
        error_type=outcome.error_type, started_at=started, completed_at=completed,
        duration_ms=(completed - started).total_seconds() * 1000)
    final = outcome.ok or not outcome.retryable or local_attempt >= inp.policy.max_attempts
    await _record_end(inp, attempt, result, final, pool)
    if not outcome.ok:
        log.warning("step %s attempt %d failed: %s", step.id, attempt, result.error)
        raise ApplicationError(result.error or "step failed", result,
                               type=outcome.error_type or "StepFailed",
                               non_retryable=not outcome.retryable)
    return result


async def _record_cancelled(inp: StepRunInput, attempt: int, pool: Any) -> None:
    """Best effort: the workflow writes the final state too, so a failure here is harmless."""
    from opsconductor.activities.attempts import record_attempt_finished

    now = _now()
    with contextlib.suppress(Exception):
        async with pool.acquire() as conn, conn.transaction():
            if not inp.step.idempotent:
                await record_attempt_finished(conn, inp.execution_id, inp.step.id, attempt,
                                              "cancelled")
            await write_step_and_event(
                conn, inp.execution_id,
                StepRecord(step_id=inp.step.id, status=StepStatus.CANCELLED, attempts=attempt,
                           completed_at=now, error="cancelled"),
                EventRecord(key=f"step:{inp.step.id}:cancelled:{attempt}", type="step.status",
                            step_id=inp.step.id, from_status="running", to_status="cancelled",
                            at=now, message="step cancelled; its processes were stopped"))
