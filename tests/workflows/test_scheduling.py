"""The scheduling rules as pure functions: launch order, blocked steps, the run's outcome."""

from __future__ import annotations

from opsconductor.schema.enums import (
    ActionClass,
    ExecutionStatus,
    FailureHandling,
    StepKind,
    StepStatus,
)
from opsconductor.schema.messages import ResolveRequest
from opsconductor.schema.spec import StepSpec
from opsconductor.workflows.scheduling import launchable, next_blocked, ordered, outcome
from opsconductor.workflows.state import StepState


def spec(sid: str, order: int = 0, deps: list[str] | None = None,
         handling: FailureHandling = FailureHandling.ABORT) -> StepSpec:
    return StepSpec(id=sid, tool="noop", kind=StepKind.NOOP, action_class=ActionClass.READ,
                    inputs={}, order=order, depends_on=deps or [], failure_handling=handling)


def states(*specs: StepSpec, **status: StepStatus) -> dict[str, StepState]:
    out = {s.id: StepState(s) for s in specs}
    for sid, new in status.items():
        if new is StepStatus.COMPLETED:
            out[sid].move(StepStatus.RUNNING)  # the only way the status machine allows
        out[sid].move(new)
    return out


def test_order_is_execution_order_then_plan_position() -> None:
    steps = [spec("c", 2), spec("a", 1), spec("b", 1)]
    assert [s.id for s in ordered(steps)] == ["a", "b", "c"]


def test_launchable_fills_free_slots_with_ready_steps_only() -> None:
    specs = [spec("a"), spec("b"), spec("c", deps=["a"])]
    st = states(*specs)
    assert [s.id for s in launchable(specs, st, [], 1, {})] == ["a"]
    assert [s.id for s in launchable(specs, st, [], 5, {})] == ["a", "b"]
    assert [s.id for s in launchable(specs, st, ["x"], 2, {})] == ["a"]
    st = states(*specs, a=StepStatus.COMPLETED)
    assert [s.id for s in launchable(specs, st, [], 5, {})] == ["b", "c"]


def test_a_failed_dependency_blocks_but_an_operator_skip_does_not() -> None:
    specs = [spec("a"), spec("b", deps=["a"])]
    hit = next_blocked(states(*specs, a=StepStatus.FAILED), {})
    assert hit is not None and (hit[0].spec.id, hit[1]) == ("b", "a")
    skipped = states(*specs, a=StepStatus.SKIPPED)
    assert next_blocked(skipped, {}) is not None
    resolved = {"a": ResolveRequest(actor="ops", action="skip")}
    assert next_blocked(skipped, resolved) is None
    assert [s.id for s in launchable(specs, skipped, [], 5, resolved)] == ["b"]


def test_outcome_names_the_step_that_aborted_not_a_tolerated_one() -> None:
    specs = [spec("tolerated", handling=FailureHandling.CONTINUE), spec("fatal")]
    st = states(*specs, tolerated=StepStatus.FAILED, fatal=StepStatus.FAILED)
    st["tolerated"].error, st["fatal"].error = "exit 3", "exit 4"
    assert outcome(st) == (ExecutionStatus.FAILED, "step fatal failed: exit 4")


def test_outcome_is_partial_when_only_tolerated_steps_failed() -> None:
    specs = [spec("a", handling=FailureHandling.CONTINUE), spec("b")]
    st = states(*specs, a=StepStatus.TIMEOUT, b=StepStatus.COMPLETED)
    assert outcome(st) == (ExecutionStatus.PARTIAL, None)
    assert outcome(states(spec("a"))) == (ExecutionStatus.COMPLETED, None)
