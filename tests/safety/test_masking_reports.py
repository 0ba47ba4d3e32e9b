"""Check reports survive masking: `PASS: expr` is a verdict, not a `pass: value` secret; real
secrets next to it are still masked."""

from __future__ import annotations

import logging

import pytest

from opsconductor.activities.executors.base import StepContext
from opsconductor.activities.executors.validate import ValidateExecutor
from opsconductor.safety.masking import MASK, Masker, MaskingLogFilter
from opsconductor.schema.enums import ActionClass, FailureHandling, StepKind
from opsconductor.schema.spec import StepSpec


def _validate_ctx(checks: list[str], prior: dict[str, dict[str, object]]) -> StepContext:
    step = StepSpec(id="verify", tool="validate", kind=StepKind.VALIDATE,
                    action_class=ActionClass.READ, inputs={"checks": checks}, order=1,
                    failure_handling=FailureHandling.ABORT, idempotent=True)
    return StepContext(execution_id="e", workflow_id="w", tenant="t", environment="dev",
                       step=step, inputs={"checks": checks}, timeout=10, prior_outputs=prior)


@pytest.mark.parametrize("line", [
    "PASS: x.exit_code == 0",
    "PASS: step_001.exit_code == 0 -- exit_code 0 == 0",
    "PASS (info): host reachable -- informational",
    "NOT CHECKED: host reachable -- informational: not a check expression",
    "FAIL: rows >= 1 -- rows 0 >= 1",
])
def test_a_report_line_is_left_alone(line: str) -> None:
    assert Masker(use_env=False).mask_text(line) == line


@pytest.mark.parametrize(("text", "secret"), [
    ("password: hunter2", "hunter2"),
    ("token=tok-abc-999", "tok-abc-999"),
    ("pass: hunter2", "hunter2"),
    ("DB_PASS: hunter2", "hunter2"),
    ("PASS=hunter2", "hunter2"),
    ("login ok, PASS: hunter2", "hunter2"),
    ("PASS: stdout contains 'ok' -- token=tok-abc-999", "tok-abc-999"),
])
def test_secrets_beside_or_inside_reports_are_still_masked(text: str, secret: str) -> None:
    masked = Masker(use_env=False).mask_text(text)
    assert secret not in masked and MASK in masked


@pytest.mark.asyncio(loop_scope="session")
async def test_the_validate_tools_report_survives_the_step_masker() -> None:
    prior = {"step_001": {"exit_code": 0, "stdout": "active", "stderr": "", "output": None}}
    outcome = await ValidateExecutor().run(_validate_ctx(
        ["step_001.exit_code == 0", "stdout contains 'active'"], prior))
    assert outcome.ok
    report = outcome.stdout.splitlines()
    assert [line.split(" -- ")[0] for line in report] == [
        "PASS: step_001.exit_code == 0", "PASS: stdout contains 'active'"]
    masker = Masker(use_env=False).with_secrets(["hunter2-secret"])
    assert masker.mask_text(outcome.stdout) == outcome.stdout


def test_a_logged_report_keeps_its_verdict() -> None:
    filt = MaskingLogFilter(Masker(use_env=False))
    rec = logging.LogRecord("x", 20, "f", 1, "%s", ("PASS: x.exit_code == 0\npass: hunter2",),
                            None)
    filt.filter(rec)
    assert rec.getMessage() == "PASS: x.exit_code == 0\npass: ***"
