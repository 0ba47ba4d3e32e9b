"""The run's state, and the one place where an execution's or a step's status changes.

Every change goes through the status machine in `opsconductor.schema.fsm`, including the
transitions a step's activity already wrote to the mirror (checked here, not re-announced).
The run's ending is decided once, by `end`: the first decision wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

from opsconductor.schema.enums import ApprovalState, ExecutionStatus, StepStatus
from opsconductor.schema.fsm import check_step_transition, check_transition
from opsconductor.schema.messages import (
    ExecutionResult,
    Progress,
    StepProgress,
    StepRecord,
    StepResult,
    WaitKind,
)
from opsconductor.schema.outputs import bound_results
from opsconductor.schema.spec import ExecutionSpec, StepSpec
from opsconductor.workflows.journal import Journal

FAILED_STEP = (StepStatus.FAILED, StepStatus.TIMEOUT)
UNFINISHED_STEP = (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING)
ENDED_STEP = (StepStatus.COMPLETED, *FAILED_STEP, StepStatus.SKIPPED, StepStatus.CANCELLED)


@dataclass(frozen=True)
class Wait:
    """What the run is blocked on, as state, with the text the progress query shows."""

    kind: WaitKind
    text: str


class StepState:
    """One step as the workflow knows it: status, attempts, times and its last result."""

    def __init__(self, spec: StepSpec) -> None:
        self.spec = spec
        self.status = StepStatus.PENDING
        self.attempts = 0
        self.attempt_offset = 0  # attempts used by earlier activity invocations of this step
        self.started_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.result: StepResult | None = None
        self.error: str | None = None
        self.awaiting_resolution = False  # an unknown outcome waits for an operator

    def move(self, new: StepStatus) -> None:
        """Change status through the step status machine (no event: see RunState)."""
        if new != self.status:
            check_step_transition(self.status, new)
            self.status = new

    def attempted(self) -> None:
        """A step whose activity started made at least one attempt in this invocation."""
        self.attempts = max(self.attempts, self.attempt_offset + 1)

    def progress(self) -> StepProgress:
        return StepProgress(id=self.spec.id, description=self.spec.description,
                            status=self.status, attempts=self.attempts,
                            started_at=self.started_at, completed_at=self.completed_at,
                            error=self.error)

    def record(self) -> StepRecord:
        """The step's row without its output: the step's activity wrote that with its end
        record, and carrying every step's excerpts here would make the final mirror batch
        grow with the plan (the mirror keeps the output it has when this one is empty)."""
        r = self.result
        return StepRecord(step_id=self.spec.id, status=self.status, attempts=self.attempts,
                          started_at=self.started_at, completed_at=self.completed_at,
                          exit_code=r.exit_code if r else None, error=self.error)

    def final_result(self) -> StepResult:
        if self.result is not None:
            return self.result.model_copy(update={
                "status": self.status, "attempts": max(self.attempts, self.result.attempts),
                "error": self.error or self.result.error})
        return StepResult(step_id=self.spec.id, status=self.status, attempts=self.attempts,
                          error=self.error, started_at=self.started_at,
                          completed_at=self.completed_at)


class RunState:
    """Execution status, approval state, steps, what the run waits on, and its ending."""

    def __init__(self, spec: ExecutionSpec) -> None:
        self.spec = spec
        self.journal = Journal()
        self.status = ExecutionStatus.QUEUED
        self.approval_state = (ApprovalState.PENDING if spec.approval_level > 0
                               else ApprovalState.NOT_REQUIRED)
        self.steps = {s.id: StepState(s) for s in spec.steps}
        self.wait: Wait | None = None
        self.search_attributes_stale = False
        self.started_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.deadline: datetime | None = None
        self.final_status: ExecutionStatus | None = None
        self.error: str | None = None

    # ------------------------------------------------------------------ the ending

    def end(self, status: ExecutionStatus, error: str | None = None, *,
            override: bool = False) -> bool:
        """Decide how the run ends; the first decision wins (False for a later one) unless
        `override`: a cancel, which ends the run whatever it was doing, or an internal error."""
        if self.final_status is not None and not override:
            return False
        self.final_status, self.error = status, error
        return True

    def seconds_left(self) -> float:
        """Until the execution deadline (a run that continued as new waits only this long)."""
        assert self.deadline is not None
        return max(0.001, (self.deadline - workflow.now()).total_seconds())

    @property
    def ending(self) -> bool:
        return self.final_status is not None

    # ------------------------------------------------------------------ status changes

    def set_status(self, new: ExecutionStatus, message: str | None = None) -> None:
        old = self.status
        if old == new:
            return
        check_transition(old, new)
        self.status = new
        self.journal.emit("execution.status", from_status=old.value, to_status=new.value,
                          message=message)
        self.search_attributes_stale = True

    def set_step_status(self, state: StepState, new: StepStatus,
                        message: str | None = None) -> None:
        """A transition the workflow decides: checked, timestamped and announced."""
        old = state.status
        if old == new:
            return
        state.move(new)
        if new in (StepStatus.SKIPPED, StepStatus.CANCELLED, *FAILED_STEP) and state.error is None:
            state.error = message
        if new in ENDED_STEP:
            state.completed_at = state.completed_at or workflow.now()
        self.journal.emit("step.status", step_id=state.spec.id, from_status=old.value,
                          to_status=new.value, message=message)

    def accept_step_result(self, state: StepState, result: StepResult) -> None:
        """A final result the step's activity reported and already wrote to the mirror."""
        state.result = result
        state.attempts = max(state.attempts, result.attempts)
        state.started_at = result.started_at or state.started_at
        state.move(result.status)
        state.completed_at = result.completed_at or state.completed_at or workflow.now()
        if result.status is StepStatus.COMPLETED:
            state.error = None  # an earlier unknown outcome, now resolved by this success

    def mark_unfinished(self, running_to: StepStatus, pending_to: StepStatus) -> None:
        """End every step still running, waiting or pending."""
        for state in self.steps.values():
            if state.status in (StepStatus.RUNNING, StepStatus.WAITING):
                self.set_step_status(state, running_to, self.error or running_to.value)
            elif state.status is StepStatus.PENDING:
                self.set_step_status(state, pending_to, "not started")

    # ------------------------------------------------------------------ views

    def prior_outputs(self) -> dict[str, Any]:
        """Completed steps' results, for checks and `validate` steps that read them."""
        return {sid: s.result.model_dump(mode="json") for sid, s in self.steps.items()
                if s.result is not None and s.status is StepStatus.COMPLETED}

    def result(self, cancel_actor: str | None, cancel_reason: str | None) -> ExecutionResult:
        """The run's result, bounded whatever the plan (see `schema.outputs.bound_results`)."""
        steps, omitted = bound_results([s.final_result() for s in self.steps.values()])
        return ExecutionResult(
            execution_id=self.spec.execution_id, workflow_id=self.spec.workflow_id,
            status=self.status, approval_state=self.approval_state, error=self.error,
            cancel_actor=cancel_actor, cancel_reason=cancel_reason,
            started_at=self.started_at, completed_at=self.completed_at,
            steps=steps, steps_total=len(self.steps), steps_omitted=omitted)

    def progress(self) -> Progress:
        states = list(self.steps.values())
        total = len(states)
        running = [s for s in states if s.status is StepStatus.RUNNING]
        remaining = sum((s.spec.estimated_duration or 5.0) for s in states
                        if s.status in UNFINISHED_STEP)
        estimate = self.completed_at
        if self.status is not ExecutionStatus.PENDING_APPROVAL and self.completed_at is None:
            estimate = workflow.now() + timedelta(seconds=remaining)
        finished = sum(s.status not in UNFINISHED_STEP for s in states)
        return Progress(
            execution_id=self.spec.execution_id, workflow_id=self.spec.workflow_id,
            status=self.status, approval_state=self.approval_state, steps_total=total,
            steps_completed=sum(s.status is StepStatus.COMPLETED for s in states),
            steps_failed=sum(s.status in FAILED_STEP for s in states),
            steps_running=len(running),
            percent=round(100.0 * finished / total, 1) if total else 100.0,
            current_step=running[0].spec.id if running else None,
            waiting_on=self.wait.text if self.wait else None,
            waiting_kind=self.wait.kind if self.wait else None, estimated_completion=estimate,
            started_at=self.started_at, deadline=self.deadline,
            steps=[s.progress() for s in states])
