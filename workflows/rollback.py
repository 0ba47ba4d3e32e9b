"""Rollback: the plan's rollback entries for completed steps, newest completion first.

Used when a failed step asks for rollback and when a run is cancelled; each entry runs as a
`run_cleanup` activity with its own timeout, and a failed entry does not stop the others.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from opsconductor.schema.enums import ActionClass, StepStatus
from opsconductor.schema.messages import CleanupInput, StepResult, TimeoutPolicy
from opsconductor.schema.request import RollbackEntry
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.workflows.leases import failure_text
from opsconductor.workflows.options import (
    CLEANUP_RETRY,
    STEP_TIMEOUT_GRACE,
    cleanup_seconds,
    heartbeat_timeout,
)
from opsconductor.workflows.recording import Recorder
from opsconductor.workflows.state import RunState, StepState


def acted_targets(step: StepState) -> list[str | None]:
    """Where a step acted: its target, or each target of a fleet step that succeeded there."""
    if step.spec.fleet is None:
        return [step.spec.target]
    output = step.result.output if step.result is not None else None
    variants = output.get("variants") if isinstance(output, dict) else None
    return [v.get("target") for v in variants or []
            if isinstance(v, dict) and v.get("ok") and v.get("target")]


def _acted(step: StepState) -> bool:
    """Completed, or a fleet step that failed after acting on some targets."""
    return step.status is StepStatus.COMPLETED or (
        step.spec.fleet is not None and step.status is StepStatus.FAILED
        and bool(acted_targets(step)))


def rollback_entries(spec: ExecutionSpec, state: RunState) -> list[tuple[StepState, RollbackEntry]]:
    """(step, entry) pairs to run: completed steps newest first, each step's entries reversed."""
    done = sorted((s for s in state.steps.values() if _acted(s)),
                  key=lambda s: (s.completed_at or workflow.now(), s.spec.order), reverse=True)
    by_step: dict[str, list[RollbackEntry]] = {}
    for entry in spec.rollback_plan:
        by_step.setdefault(entry.step_id, []).append(entry)
    return [(s, e) for s in done for e in reversed(by_step.get(s.spec.id, []))]


async def rollback(spec: ExecutionSpec, state: RunState, recorder: Recorder,
                   policies: dict[str, TimeoutPolicy], why: str) -> bool:
    """Run the rollback entries; True when every one succeeded (or there were none)."""
    entries = rollback_entries(spec, state)
    if not entries:
        return True
    journal = state.journal
    journal.emit("rollback.started", message=why,
                 data={"entries": [s.spec.id for s, _ in entries]})
    await recorder.flush()
    ok = True
    policy = policies[ActionClass.MODIFY.value]
    for step, entry in entries:
        seconds = cleanup_seconds(entry, policy)
        fleet = step.spec.fleet
        targets = acted_targets(step)
        gate = asyncio.Semaphore(fleet.concurrency(len(targets)) if fleet else 1)

        async def undo(target: str | None, step: StepState = step, entry: RollbackEntry = entry,
                       seconds: float = seconds, gate: asyncio.Semaphore = gate) -> bool:
            """One rollback entry on one target (a fleet's targets, as many at once as the
            step ran)."""
            data = {"target": target} if step.spec.fleet is not None else {}
            async with gate:
                try:
                    await workflow.execute_activity(
                        "run_cleanup",
                        CleanupInput(execution_id=spec.execution_id,
                                     workflow_id=spec.workflow_id, tenant=spec.tenant,
                                     environment=spec.environment, step_id=step.spec.id,
                                     target=target, command=entry.rollback_action,
                                     timeout_seconds=seconds, actor=spec.actor),
                        result_type=StepResult,
                        start_to_close_timeout=timedelta(seconds=seconds) + STEP_TIMEOUT_GRACE,
                        heartbeat_timeout=heartbeat_timeout(policy),
                        retry_policy=CLEANUP_RETRY, summary=f"rollback of {step.spec.id}")
                except ActivityError as err:
                    journal.emit("rollback.step_failed", step_id=step.spec.id,
                                 message=failure_text(err), data=data)
                    return False
            journal.emit("rollback.step_completed", step_id=step.spec.id,
                         message=entry.rollback_action, data=data)
            return True

        if fleet is None:
            ok = await undo(step.spec.target) and ok
        else:
            ok = all(await asyncio.gather(*(undo(t) for t in targets))) and ok
    journal.emit("rollback.completed" if ok else "rollback.failed",
                 message="rollback succeeded" if ok else "rollback had failures")
    await recorder.flush()
    return ok
