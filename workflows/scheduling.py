"""Which step runs next, which can never run, and what the steps add up to. Pure functions.

Steps run in dependency order (`depends_on`, then `execution_order`, then plan position), up
to `max_parallel` at once. A step whose dependency failed, was cancelled or was skipped is
skipped too, unless an operator chose `skip` for that dependency's unknown outcome.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from opsconductor.schema.enums import ExecutionStatus, FailureHandling, StepStatus
from opsconductor.schema.messages import ResolveRequest, TimeoutPolicy
from opsconductor.schema.spec import StepSpec
from opsconductor.workflows.state import FAILED_STEP, StepState

Steps = Mapping[str, StepState]
Resolutions = Mapping[str, ResolveRequest]


def ordered(steps: list[StepSpec]) -> list[StepSpec]:
    """Launch order: `execution_order`, then position in the plan."""
    index = {s.id: i for i, s in enumerate(steps)}
    return sorted(steps, key=lambda s: (s.order, index[s.id]))


def skipped_ok(step_id: str, steps: Steps, resolutions: Resolutions) -> bool:
    """An operator's `skip` of an unknown outcome lets dependents go on."""
    res = resolutions.get(step_id)
    return (steps[step_id].status is StepStatus.SKIPPED and res is not None
            and res.action == "skip")


def launchable(order: list[StepSpec], steps: Steps, running: Collection[str],
               max_parallel: int, resolutions: Resolutions) -> list[StepSpec]:
    """Pending steps whose dependencies are done, in order, filling the free slots."""
    out: list[StepSpec] = []
    for step in order:
        if len(running) + len(out) >= max_parallel:
            break
        if (steps[step.id].status is StepStatus.PENDING and step.id not in running
                and all(steps[d].status is StepStatus.COMPLETED
                        or skipped_ok(d, steps, resolutions) for d in step.depends_on)):
            out.append(step)
    return out


def next_blocked(steps: Steps, resolutions: Resolutions) -> tuple[StepState, str] | None:
    """A pending step that can never run, with the dependency that blocks it."""
    for state in steps.values():
        if state.status is not StepStatus.PENDING:
            continue
        for dep in state.spec.depends_on:
            status = steps[dep].status
            if status in (*FAILED_STEP, StepStatus.CANCELLED) or (
                    status is StepStatus.SKIPPED and not skipped_ok(dep, steps, resolutions)):
                return state, dep
    return None


def stops_launching(handling: FailureHandling) -> bool:
    """Every failure handling but `continue` stops launching new steps."""
    return handling is not FailureHandling.CONTINUE


def outcome(steps: Steps) -> tuple[ExecutionStatus, str | None]:
    """The run's status from its steps, and the error naming the step that aborted it."""
    failed = [s for s in steps.values() if s.status in FAILED_STEP]
    if not failed:
        return ExecutionStatus.COMPLETED, None
    aborting = [s for s in failed if stops_launching(s.spec.failure_handling)]
    if aborting:
        first = aborting[0]
        return ExecutionStatus.FAILED, f"step {first.spec.id} failed: {first.error}"
    return ExecutionStatus.PARTIAL, None


def policy_max(policies: Mapping[str, TimeoutPolicy], steps: list[StepSpec],
               field: str) -> float:
    """The largest value of `field` over the policies of the plan's action classes."""
    classes = {s.action_class.value for s in steps}
    return max(float(getattr(policies[c], field)) for c in classes)
