"""Continuing a long run as new: when, what is carried, and how the next run takes it back.

The hand-over happens only at a quiet point: the step runner stops launching once Temporal
suggests it (or the history passes our own bound), waits for the running steps, and the run
hands over only if no cancel and no handler is in flight. Execution id, workflow id, mirror
rows, locks and search attributes stay; the next run restores state without re-asking the
approval gate, re-taking locks or re-running the `before` checks.
"""

from __future__ import annotations

from typing import Any, NoReturn

from temporalio import workflow

from opsconductor.schema.continuation import CarriedStepState, Continuation
from opsconductor.schema.messages import ResolveRequest, TimeoutPolicy
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.workflows.metrics import Waits
from opsconductor.workflows.recording import Recorder
from opsconductor.workflows.state import ENDED_STEP, UNFINISHED_STEP, RunState

HANDOFF_PATCH = "continue-as-new"
# Our own bound, in case the server's suggestion (history count or size) never comes.
HANDOFF_EVENTS = 20_000


def handoff_due(state: RunState) -> bool:
    """The history is big enough to start the next run, and there is work left for it."""
    info = workflow.info()
    if not (info.is_continue_as_new_suggested()
            or info.get_current_history_length() > HANDOFF_EVENTS):
        return False
    if not any(s.status in UNFINISHED_STEP for s in state.steps.values()):
        return False
    return workflow.patched(HANDOFF_PATCH)


def input_models(spec: Any, continued: Any) -> tuple[ExecutionSpec, Continuation | None]:
    """The workflow's arguments as models: a run started with the spec alone (the client, the
    plain CLI, every history before hand-overs existed) arrives as plain JSON."""
    return (ExecutionSpec.model_validate(spec),
            None if continued is None else Continuation.model_validate(continued))


def hand_over(spec: ExecutionSpec, state: RunState, before: Continuation | None, *,
              execution_seconds: float, fencing: dict[str, int],
              policies: dict[str, TimeoutPolicy], waits: Waits,
              resolutions: dict[str, ResolveRequest]) -> NoReturn:
    """Start the next run of this execution with the state it must not lose."""
    assert state.started_at is not None and state.deadline is not None
    carried = Continuation(
        run=before.run + 1 if before else 1, status=state.status,
        approval_state=state.approval_state, started_at=state.started_at,
        deadline=state.deadline, execution_seconds=execution_seconds,
        journal_seq=state.journal.seq, fencing=dict(fencing), policies=dict(policies),
        approval_seconds=waits.approval_seconds, lock_seconds=waits.lock_seconds,
        steps=[CarriedStepState(step_id=s.spec.id, status=s.status, attempts=s.attempts,
                                started_at=s.started_at, completed_at=s.completed_at,
                                error=s.error, result=s.result)
               for s in state.steps.values() if s.status in ENDED_STEP],
        resolutions=dict(resolutions))
    workflow.continue_as_new(args=[spec, carried],
                             search_attributes=workflow.info().typed_search_attributes)


def restore(state: RunState, carried: Continuation, waits: Waits, *,
            fencing: dict[str, int], policies: dict[str, TimeoutPolicy],
            resolutions: dict[str, ResolveRequest]) -> None:
    """Put the earlier run's state back, as it was (not as new transitions)."""
    state.status = carried.status
    state.approval_state = carried.approval_state
    state.started_at = carried.started_at
    state.deadline = carried.deadline
    state.journal.seq = carried.journal_seq
    waits.approval_seconds = carried.approval_seconds
    waits.lock_seconds = carried.lock_seconds
    fencing.update(carried.fencing)
    policies.update(carried.policies)
    resolutions.update(carried.resolutions)
    for c in carried.steps:
        step = state.steps[c.step_id]
        step.status, step.attempts, step.error, step.result = (c.status, c.attempts, c.error,
                                                               c.result)
        step.started_at, step.completed_at = c.started_at, c.completed_at


async def announce(state: RunState, recorder: Recorder, carried: Continuation) -> None:
    """The mirror learns of the new run (its run id, for links) and what it takes over."""
    state.journal.emit("execution.continued", message=f"run {carried.run + 1} of this "
                       f"execution: {len(carried.steps)} step(s) already ended",
                       data={"run": carried.run + 1})
    await recorder.flush(run_id=workflow.info().run_id)
