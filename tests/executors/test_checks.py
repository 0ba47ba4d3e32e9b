"""Check expressions, command checks, safety checks and the validate executor."""

from __future__ import annotations

from typing import Any

import pytest

from opsconductor.activities.authorization import ActionGate
from opsconductor.activities.checks import (
    evaluate,
    json_path,
    result_context,
    run_check,
    run_safety_checks,
    should_abort,
)
from opsconductor.activities.executors.base import StepOutcome
from opsconductor.activities.executors.validate import ValidateExecutor
from opsconductor.safety.rbac import RbacEngine
from opsconductor.schema.assets import Asset
from opsconductor.schema.enums import StepKind
from opsconductor.schema.request import SafetyCheck
from tests.executors.conftest import SshServer
from tests.executors.helpers import make_ctx

CMD = result_context(StepOutcome(ok=True, exit_code=0, stdout="nginx.service\n"
                                 "   Active: active (running) since Mon\n", stderr=""))
HTTP = result_context({"exit_code": None, "stdout": "", "output": {
    "status": 200, "body": {"ok": True, "status": "ok", "items": [{"id": 1}, {"id": 2}]},
    "elapsed_ms": 12.5, "headers": {}}})
SQL = result_context({"output": {"rows": [{"n": 1}], "row_count": 1, "truncated": False}})


@pytest.mark.parametrize(("expr", "ctx", "passed"), [
    ("exit_code == 0", CMD, True),
    ("exit_code != 0", CMD, False),
    ("exit_code==0", CMD, True),
    ("exit code 0", CMD, True),
    ("exit code is 1", CMD, False),
    ("stdout matches 'active \\(running\\)'", CMD, True),
    ("stdout matches '^\\s+Active: active'", CMD, True),
    ("stdout not matches 'failed'", CMD, True),
    ("stdout contains \"nginx\"", CMD, True),
    ("stderr not contains error", CMD, True),
    ("status == 200", HTTP, True),
    ("status code 200", HTTP, True),
    ("status >= 500", HTTP, False),
    ("json $.ok == true", HTTP, True),
    ("json $.status == 'ok'", HTTP, True),
    ("json $.items[1].id == 2", HTTP, True),
    ("json $.items[-1].id > 1", HTTP, True),
    ("json $['status'] == \"ok\"", HTTP, True),
    ("json $.missing exists", HTTP, False),
    ("json $.missing not exists", HTTP, True),
    ("elapsed_ms < 1000", HTTP, True),
    ("rows >= 1", SQL, True),
    ("rows == 0", SQL, False),
    ("row_count > 5", SQL, False),
    ("output.truncated == false", SQL, True),
    ("exit_code == 0", HTTP, False),  # no exit code for an HTTP result: fails, never passes
])
def test_expressions(expr: str, ctx: dict, passed: bool) -> None:
    r = evaluate(expr, ctx)
    assert r.passed is passed, r
    assert not r.informational


@pytest.mark.parametrize("text", ["host reachable", "Root filesystem has more than 10% free",
                                  "service is healthy", "nginx contains no errors"])
def test_free_text_is_informational(text: str) -> None:
    r = evaluate(text, CMD)
    assert r.passed and r.informational and "informational" in r.detail


@pytest.mark.parametrize("text", ["uptime > 1 day", "cpu < 90", "exit_cod == 0",
                                  "service_state contains running"])
def test_expressions_over_unknown_fields_fail_closed(text: str) -> None:
    r = evaluate(text, CMD)
    assert not r.passed and not r.informational and "unknown check field" in r.detail


def test_bad_regex_and_path_fail_cleanly() -> None:
    assert not evaluate("stdout matches '('", CMD).passed
    assert not evaluate("json $..x == 1", HTTP).passed
    assert evaluate({"path": "$.items[0].id", "equals": 1}, HTTP).passed
    assert not evaluate({"path": "$.items[5].id", "exists": True}, HTTP).passed
    with pytest.raises(KeyError):
        json_path({"a": [1]}, "$.a[3]")


@pytest.fixture
def gate(db_pool: Any) -> ActionGate:
    """The built-in policy: anyone may execute in dev (every decision still audited)."""
    return ActionGate(engine=RbacEngine(None), pool=db_pool, tenant="checks", actor="alice",
                      environment="dev", execution_id="checks-exec")


async def test_command_checks_local_and_over_ssh(sshd: SshServer, gate: ActionGate) -> None:
    r = await run_check("command: test -d /tmp", gate=gate)
    assert r.passed and r.detail.startswith("exit 0")
    r = await run_check({"command": "echo nope; exit 2"}, gate=gate)
    assert not r.passed and "exit 2" in r.detail and "nope" in r.detail
    asset = Asset.model_validate(sshd.asset(id="ssh-check"))
    r = await run_check("command: test -f /etc/hostname && hostname", asset=asset, gate=gate)
    assert r.passed, r
    bad = Asset.model_validate(sshd.asset(id="ssh-check-bad",
                                          known_hosts=str(sshd.empty_known_hosts)))
    r = await run_check("command: true", asset=bad, gate=gate)
    assert not r.passed and "host key" in r.detail


async def test_command_checks_fail_closed_without_a_gate(tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    r = await run_check(f"command: touch {marker}")
    assert not r.passed and "authorization gate" in r.detail and not marker.exists()


async def test_safety_checks_by_stage(gate: ActionGate) -> None:
    checks = [SafetyCheck(check="command: true", stage="before"),
              SafetyCheck(check="Root filesystem has more than 10% free", stage="before"),
              SafetyCheck(check="command: exit 1", stage="before", failure_action="warn"),
              SafetyCheck(check="command: exit 1", stage="after", failure_action="abort")]
    before = await run_safety_checks(checks, "before", gate=gate)
    assert [o.action for o in before] == ["ok", "ok", "warn"]
    assert before[1].result.informational and not should_abort(before)
    after = await run_safety_checks(checks, "after", gate=gate)
    assert should_abort(after) and after[0].to_dict()["action"] == "abort"
    unknown = await run_safety_checks([SafetyCheck(check="command: true", target="ghost-host")],
                                      "before", gate=gate)
    assert unknown[0].action == "abort" and "ghost-host" in unknown[0].result.detail


async def test_validate_executor() -> None:
    prior = {
        "step_001": {"status": "completed", "exit_code": 0, "stdout": "active (running)",
                     "stderr": "", "output": {"pid": 1}},
        "step_002.http": {"status": "completed", "exit_code": None, "stdout": "",
                          "output": {"status": 200, "body": {"ok": True}}},
    }
    checks = ["step_001.exit_code == 0", "step_001.stdout matches 'running'",
              {"step": "step_002.http", "expr": "json $.ok == true"},
              "step_002.http.status == 200", "step_002.http.json $.ok == true",
              "status == 200", "service looks fine"]
    ctx = make_ctx(StepKind.VALIDATE, {"checks": checks}, prior_outputs=prior)
    out = await ValidateExecutor().run(ctx)
    assert out.ok, out.error
    assert out.output["passed"] == 6 and out.output["failed"] == 0
    assert out.output["not_checked"] == 1 and "NOT CHECKED: service looks fine" in out.stdout
    ctx = make_ctx(StepKind.VALIDATE, {"checks": ["step_001.exit_code == 1",
                                                  "step_999.exit_code == 0",
                                                  {"step": "nope", "expr": "exit_code == 0"}]},
                   prior_outputs=prior)
    out = await ValidateExecutor().run(ctx)
    assert not out.ok and out.output["failed"] == 3 and not out.retryable
    assert out.error_type == "ValidationFailed" and "step_999" in (out.error or "")
