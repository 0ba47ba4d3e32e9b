"""Pure logic: status machine, request validation, SLA / action class / mode derivation."""

from __future__ import annotations

import json

import pytest

from opsconductor.schema.enums import (
    ActionClass,
    ExecutionMode,
    ExecutionStatus,
    SlaClass,
    StepKind,
)
from opsconductor.schema.fsm import IllegalTransition, can_transition, check_transition
from opsconductor.schema.spec import build_spec, mode_for, sla_class_for
from opsconductor.schema.tools import lookup
from opsconductor.schema.validation import RequestValidationError, find_cycle, validate_request
from tests.helpers import DATA, request, shell, step


@pytest.mark.parametrize(("a", "b"), [
    ("queued", "running"), ("queued", "pending_approval"), ("pending_approval", "approved"),
    ("approved", "running"), ("running", "completed"), ("running", "partial"),
    ("running", "pending_approval"), ("pending_approval", "timeout"), ("running", "cancelled"),
])
def test_legal_transitions(a: str, b: str) -> None:
    check_transition(ExecutionStatus(a), ExecutionStatus(b))


@pytest.mark.parametrize(("a", "b"), [
    ("completed", "running"), ("failed", "completed"), ("queued", "approved"),
    ("pending_approval", "running"), ("cancelled", "queued"), ("running", "queued"),
])
def test_illegal_transitions(a: str, b: str) -> None:
    assert not can_transition(ExecutionStatus(a), ExecutionStatus(b))
    with pytest.raises(IllegalTransition):
        check_transition(ExecutionStatus(a), ExecutionStatus(b))


def test_terminal_statuses_have_no_way_out() -> None:
    for status in ("completed", "failed", "cancelled", "timeout", "partial", "rejected"):
        assert not any(can_transition(ExecutionStatus(status), s) for s in ExecutionStatus)


@pytest.mark.parametrize(("durations", "sla"), [
    ([1, 2, 3], SlaClass.FAST), ([9.9], SlaClass.FAST), ([10], SlaClass.MEDIUM),
    ([20, 10], SlaClass.MEDIUM), ([31], SlaClass.LONG), ([None, None], SlaClass.MEDIUM),
])
def test_sla_class_from_estimated_durations(durations: list, sla: SlaClass) -> None:
    assert sla_class_for(durations) is sla


def test_mode_follows_sla() -> None:
    assert mode_for(SlaClass.FAST) is ExecutionMode.IMMEDIATE
    assert mode_for(SlaClass.MEDIUM) is ExecutionMode.BACKGROUND
    assert mode_for(SlaClass.LONG) is ExecutionMode.BACKGROUND


def test_request_overrides_sla_and_mode() -> None:
    req = validate_request(request([step("a", estimated_duration=1)], sla_class="long",
                                   mode="immediate"))
    spec = build_spec(req, execution_id="e", workflow_id="w", idempotency_key="k")
    assert spec.sla_class is SlaClass.LONG and spec.mode is ExecutionMode.IMMEDIATE


@pytest.mark.parametrize(("tool", "inputs", "action", "kind"), [
    ("systemctl", {"action": "status", "unit": "nginx"}, ActionClass.READ, StepKind.COMMAND),
    ("systemctl", {"action": "restart", "unit": "nginx"}, ActionClass.MODIFY, StepKind.COMMAND),
    ("df", {"args": "-h"}, ActionClass.READ, StepKind.COMMAND),
    ("shell", {"command": "rm -rf /tmp/x"}, ActionClass.MODIFY, StepKind.COMMAND),
    ("http_request", {"url": "http://x", "method": "get"}, ActionClass.READ, StepKind.HTTP),
    ("http_request", {"url": "http://x", "method": "POST"}, ActionClass.MODIFY, StepKind.HTTP),
    ("sql_query", {"query": "SELECT 1"}, ActionClass.READ, StepKind.SQL),
    ("sql_query", {"query": "UPDATE t SET a=1"}, ActionClass.MODIFY, StepKind.SQL),
    ("sql_query", {"query": "ALTER TABLE t ADD c int"}, ActionClass.DEPLOY, StepKind.SQL),
    ("file_transfer", {"direction": "upload", "source": "a", "destination": "b"},
     ActionClass.MODIFY, StepKind.FILE_TRANSFER),
    ("noop", {}, ActionClass.READ, StepKind.NOOP),
])
def test_action_class_and_kind_from_the_registry(tool: str, inputs: dict, action: ActionClass,
                                                 kind: StepKind) -> None:
    spec = lookup(tool)
    assert spec is not None
    model = spec.inputs.model_validate(inputs)
    assert spec.action_class(model) is action and spec.kind is kind


def test_cli_tools_build_their_command_lines() -> None:
    req = validate_request(request([
        step("a", "systemctl", action="status", unit="nginx; rm -rf /"),
        step("b", "journalctl", unit="sshd", lines=5),
        step("c", "df", args=["-h", "/var"]),
    ]))
    spec = build_spec(req, execution_id="e", workflow_id="w", idempotency_key="k")
    cmds = {s.id: s.command for s in spec.steps}
    assert cmds["a"] == "systemctl status --no-pager 'nginx; rm -rf /'"  # quoted, not injected
    assert cmds["b"] == "journalctl --no-pager -n 5 -u sshd"
    assert cmds["c"] == "df -h /var"


def test_every_problem_is_reported_with_its_path() -> None:
    raw = request([
        shell("a", "true", deps=["b"]),
        shell("b", "true", deps=["a"]),
        {"id": "a", "tool": "nope", "inputs": {}},
        {"id": "c", "tool": "shell", "inputs": {"command": ""}},
        {"id": "d", "tool": "http_request", "inputs": {"url": "http://x", "bogus": 1}},
    ], environment="mars", approval_level=9)
    with pytest.raises(RequestValidationError) as info:
        validate_request(raw)
    paths = {p.path for p in info.value.problems}
    assert {"environment", "approval_level", "plan.plan.steps[2].id",
            "plan.plan.steps[2].tool", "plan.plan.steps[3].inputs.command",
            "plan.plan.steps[4].inputs.bogus", "plan.plan.steps"} <= paths


def test_approval_points_and_rollback_must_name_real_steps() -> None:
    raw = request([shell("a", "true")],
                  approval_points=[{"step_id": "zz", "reason": "x"}],
                  plan_extra={"rollback_plan": [{"step_id": "yy", "rollback_action": "true"}]})
    with pytest.raises(RequestValidationError) as info:
        validate_request(raw)
    paths = {p.path for p in info.value.problems}
    assert paths == {"approval_points[0].step_id", "plan.plan.rollback_plan[0].step_id"}


def test_non_object_request_is_refused() -> None:
    with pytest.raises(RequestValidationError, match="JSON object"):
        validate_request([1, 2])


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": [], "b": ["a"]}) is None


def test_bare_plan_object_is_accepted() -> None:
    raw = request([shell("a", "true")])
    raw["plan"] = raw["plan"]["plan"]  # just the plan object
    req = validate_request(raw)
    assert req.steps[0].id == "a"


def test_example_request_is_valid() -> None:
    """The design's full example envelope (a copy kept in tests/data) validates as sent."""
    doc = json.loads((DATA / "request_restart_service.json").read_text())
    req = validate_request(doc)
    spec = build_spec(req, execution_id="e", workflow_id="w", idempotency_key="k")
    assert spec.assets == ["web-1"]
    assert spec.sla_class is SlaClass.MEDIUM  # 17 s estimated
    assert [s.action_class for s in spec.steps] == [
        ActionClass.READ, ActionClass.MODIFY, ActionClass.MODIFY, ActionClass.READ]
    assert spec.steps[3].inputs["headers"]["Authorization"] == {
        "type": "secret", "path": "web/health-token"}
