"""Running the plan's steps: launch in dependency order, one activity per step, react to its end.

A step's activity writes its own running/completed/failed transitions to the mirror (with its
attempt record), so the workflow checks those transitions without announcing them again. An
unknown outcome (an attempt that started and never finished) waits for an operator's
`resolve`: retry, skip or fail.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

from opsconductor.schema.enums import FailureHandling, StepKind, StepStatus
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import (
    ResolveRequest,
    StepResult,
    StepRunInput,
    TimeoutPolicy,
    WaitKind,
)
from opsconductor.schema.spec import CarriedStep, ExecutionSpec, StepSpec
from opsconductor.workflows.approvals import rule_for_point
from opsconductor.workflows.gates import Gates
from opsconductor.workflows.handoff import handoff_due
from opsconductor.workflows.leases import Leases
from opsconductor.workflows.options import (
    LEASE_SECONDS,
    heartbeat_timeout,
    step_retry,
    step_start_to_close,
)
from opsconductor.workflows.recording import Recorder
from opsconductor.workflows.safety_checks import run_safety_checks
from opsconductor.workflows.scheduling import (
    launchable,
    next_blocked,
    ordered,
    policy_max,
    stops_launching,
)
from opsconductor.workflows.state import FAILED_STEP, RunState, StepState, Wait
from opsconductor.workflows.windows import WindowGate

# Histories started before an operator's retry was recorded by the workflow replay as before.
RETRY_RECORDED_PATCH = "retry-resolution-recorded-first"

class StepEnd(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the outcome of an earlier attempt is unknown: ask an operator


async def cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel tasks and wait until each has stopped (their activities acknowledged)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except (asyncio.CancelledError, CancelledError):
            pass


class StepRunner:
    """The steps part of a run; says whether it stopped early and why."""

    def __init__(self, spec: ExecutionSpec, state: RunState, recorder: Recorder,
                 leases: Leases, gates: Gates, policies: dict[str, TimeoutPolicy]) -> None:
        self.spec = spec
        self.state = state
        self.recorder = recorder
        self.leases = leases
        self.gates = gates
        self.policies = policies
        self.resolutions: dict[str, ResolveRequest] = {}
        self.retry_recorded = False  # the last retry's resolution reached the mirror first
        self.resolution_proofs: dict[str, dict[str, object]] = {}  # signed?, key, signature
        self.stop_launching = False
        self.rollback_requested = False
        self.abort_error: str | None = None  # a `during` safety check said abort
        self.handing_off = False  # draining: the next run of this execution goes on
        self.window: WindowGate | None = None  # the change-window gate, once patched in

    async def run_all(self) -> None:
        """Launch ready steps up to `max_parallel`, until none is left to launch."""
        running: dict[str, asyncio.Task[None]] = {}
        order = ordered(self.spec.steps)
        try:
            while True:
                self.skip_blocked()
                if not (self.stop_launching or self.handing_off):
                    for step in launchable(order, self.state.steps, running,
                                           self.spec.max_parallel, self.resolutions):
                        running[step.id] = asyncio.create_task(self.run_one(step))
                if not running:
                    break
                await workflow.wait_condition(lambda: any(t.done() for t in running.values()))
                finished = False
                for sid, task in list(running.items()):
                    if task.done():
                        running.pop(sid)
                        task.result()
                        finished = True
                if finished and not self.stop_launching:
                    error = await run_safety_checks(self.spec, self.state, self.recorder,
                                                    "during",
                                                    windows_gated=self.window is not None)
                    if error is not None:
                        self.abort_error = error
                        self.stop_launching = True
                if finished and not (self.stop_launching or self.handing_off):
                    self.handing_off = handoff_due(self.state)
            if self.handing_off:
                return  # the steps left go to the next run, still pending
            self.state.mark_unfinished(StepStatus.SKIPPED, StepStatus.SKIPPED)
        except asyncio.CancelledError:
            await cancel_and_wait(list(running.values()))
            raise

    def skip_blocked(self) -> None:
        """Skip every pending step a failed, cancelled or skipped dependency blocks."""
        while (hit := next_blocked(self.state.steps, self.resolutions)) is not None:
            state, dep = hit
            self.state.set_step_status(state, StepStatus.SKIPPED,
                                       f"dependency {dep} did not complete")

    def after_failure(self, step: StepSpec) -> None:
        if stops_launching(step.failure_handling):
            self.stop_launching = True
            self.rollback_requested |= step.failure_handling is FailureHandling.ROLLBACK

    async def run_one(self, step: StepSpec) -> None:
        """One step: its approval point if any, then the activity, then any resolution."""
        state = self.state.steps[step.id]
        carried = next((c for c in self.spec.carried if c.step_id == step.id), None)
        if carried is not None:
            self.carry_over(state, carried)
            return
        point = next((p for p in self.spec.approval_points if p.step_id == step.id), None)
        if point is not None:
            self.state.set_step_status(state, StepStatus.WAITING,
                                       f"waiting for approval: {point.reason}")
            window = policy_max(self.policies, self.spec.steps, "approval_timeout_seconds")
            if not await self.gates.wait(step.id, rule_for_point(point), point.reason, window):
                self.stop_launching = True
                self.state.set_step_status(state, StepStatus.SKIPPED, "approval not granted")
                return
        if self.window is not None and (closed := self.window.step_may_start(step.id)):
            self.stop_launching = True
            self.abort_error = self.abort_error or closed
            self.state.set_step_status(state, StepStatus.SKIPPED, "change window closed")
            return
        override = False
        while await self.execute(step, override) is StepEnd.UNKNOWN:
            action = await self.await_resolution(step)
            if action == "retry":
                # Recorded by the workflow: each later attempt applies the guard again, so a
                # retry that crashes too pauses again instead of running a third time.
                override = not self.retry_recorded
                state.attempt_offset = state.attempts
                continue
            if action == "skip":
                self.state.set_step_status(state, StepStatus.SKIPPED, "skipped by operator")
            else:
                self.state.set_step_status(state, StepStatus.FAILED, "failed by operator")
                self.after_failure(step)
            return

    def carry_over(self, state: StepState, carried: CarriedStep) -> None:
        """A step the earlier run completed: its result is taken over, nothing runs."""
        where = f"completed in execution {carried.from_execution_id}"
        self.state.set_step_status(state, StepStatus.RUNNING, f"{where}: taking its result over")
        state.result = StepResult(step_id=state.spec.id, status=StepStatus.COMPLETED,
                                  attempts=0, exit_code=carried.exit_code,
                                  output=carried.output, completed_at=carried.completed_at)
        self.state.set_step_status(state, StepStatus.COMPLETED, f"{where}; not run again")

    async def execute(self, step: StepSpec, override: bool) -> StepEnd:
        state = self.state.steps[step.id]
        policy = self.policies[step.action_class.value]
        state.move(StepStatus.RUNNING)  # the activity writes this transition and its event
        state.started_at = state.started_at or workflow.now()
        self.recorder.show_where()
        prior = self.state.prior_outputs() if (step.kind is StepKind.VALIDATE
                                               or step.preconditions
                                               or step.success_criteria
                                               or step.templated) else {}
        try:
            result = await workflow.execute_activity(
                "run_step",
                StepRunInput(execution_id=self.spec.execution_id,
                             workflow_id=self.spec.workflow_id, tenant=self.spec.tenant,
                             actor=self.spec.actor, environment=self.spec.environment,
                             step=step, policy=policy, fencing_tokens=self.leases.fencing,
                             lease_seconds=LEASE_SECONDS, prior_outputs=prior,
                             override_unknown_outcome=override,
                             attempt_offset=state.attempt_offset),
                result_type=StepResult,
                start_to_close_timeout=step_start_to_close(step, policy),
                heartbeat_timeout=heartbeat_timeout(policy),
                retry_policy=step_retry(policy),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=step.summary[:200],
            )
        except ActivityError as err:
            return self.failed(state, err)
        self.state.accept_step_result(state, result)  # the activity counts from attempt_offset
        return StepEnd.COMPLETED

    def failed(self, state: StepState, err: ActivityError) -> StepEnd:
        """Record how a step's activity ended without a result."""
        cause = err.cause
        if err.started_event_id:
            state.attempted()
        if isinstance(cause, CancelledError):
            state.error = "cancelled"
            self.state.set_step_status(state, StepStatus.CANCELLED,
                                       "cancelled; its processes stopped")
            raise asyncio.CancelledError()
        status = StepStatus.FAILED
        if isinstance(cause, ApplicationError):
            details = cause.details[0] if cause.details else None
            reported = (StepResult.model_validate(details)
                        if isinstance(details, dict) and "step_id" in details else None)
            state.error = cause.message
            if reported is not None and reported.status in FAILED_STEP \
                    and cause.type != ErrorType.UNKNOWN_OUTCOME:
                self.state.accept_step_result(state, reported)  # the activity wrote it
                self.after_failure(state.spec)
                return StepEnd.FAILED
            if reported is not None:
                state.result = reported
                state.attempts = reported.attempts
                state.started_at = reported.started_at or state.started_at
            if cause.type == ErrorType.UNKNOWN_OUTCOME:
                if isinstance(details, dict):
                    state.attempts = int(details.get("attempt") or state.attempts)
                return StepEnd.UNKNOWN
        elif isinstance(cause, ActivityTimeoutError):
            status = StepStatus.TIMEOUT
            state.error = f"step activity timed out ({cause.type.name if cause.type else ''})"
        else:
            state.error = str(cause or err)
        state.attempts = max(state.attempts, 1)
        self.state.set_step_status(state, status, state.error)
        self.after_failure(state.spec)
        return StepEnd.FAILED

    async def await_resolution(self, step: StepSpec) -> str:
        """Pause the step until an operator chooses retry, skip or fail."""
        state = self.state.steps[step.id]
        state.awaiting_resolution = True
        self.state.set_step_status(state, StepStatus.WAITING, state.error)
        self.state.wait = Wait(WaitKind.RESOLUTION,
                               f"operator resolution of step {step.id} (unknown outcome)")
        self.state.journal.emit(
            "step.unknown_outcome", step_id=step.id, message=state.error,
            data={"resolve_signal": "resolve", "actions": ["retry", "skip", "fail"]})
        await self.recorder.flush()
        await workflow.wait_condition(lambda: step.id in self.resolutions)
        state.awaiting_resolution = False
        self.state.wait = None
        res = self.resolutions[step.id]
        self.state.journal.emit("step.resolved", step_id=step.id, actor=res.actor,
                                message=f"{res.actor} chose {res.action}" + (
                                    f": {res.comment}" if res.comment else ""),
                                data=self.resolution_proofs.get(step.id, {}))
        if res.action != "retry":  # a retry closes the crashed attempt as it starts
            await self.recorder.flush(resolutions=[res.model_copy(update={"step_id": step.id})])
        else:
            self.state.set_step_status(state, StepStatus.RUNNING, "retry requested by operator")
            self.retry_recorded = workflow.patched(RETRY_RECORDED_PATCH)
            if self.retry_recorded:
                # The mirror closes the crashed attempts in the operator's name before the
                # retry writes anything (events stay in order), and a later pause of this step
                # waits for a new answer instead of reusing this one.
                await self.recorder.flush(
                    resolutions=[res.model_copy(update={"step_id": step.id})])
                del self.resolutions[step.id]
        return res.action

    def waiting_for_resolution(self) -> list[str]:
        """Steps paused on an unknown outcome that no operator has answered yet."""
        return [sid for sid, s in self.state.steps.items()
                if s.status is StepStatus.WAITING and s.awaiting_resolution
                and sid not in self.resolutions]
