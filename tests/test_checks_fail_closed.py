"""Checks fail closed: a misspelt or unreadable check is refused at submission with its field
path, prose is recorded as "not checked", and `validate` reads a checked step's own result."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from opsconductor.activities.checks import evaluate, expression_problems
from opsconductor.schema.spec import build_spec
from opsconductor.schema.validation import RequestValidationError, validate_request
from opsconductor.starter.dry_run import dry_run
from tests.helpers import request, shell, step


def problems_of(steps: list[dict[str, Any]], **plan: Any) -> list[tuple[str, str]]:
    spec = build_spec(validate_request(request(steps, plan_extra=plan)), execution_id="x",
                      workflow_id="x", idempotency_key="x")
    return expression_problems(spec)


def test_a_misspelt_field_is_refused_with_its_path() -> None:
    found = problems_of([{**shell("a", "exit 1"), "success_criteria": ["exit_cod == 0"]}])
    assert found == [("plan.plan.steps[0].success_criteria[0]",
                      found[0][1])] and "unknown check field 'exit_cod'" in found[0][1]


def test_a_misspelt_field_never_passes_at_run_time() -> None:
    result = evaluate("exit_cod == 0", {"exit_code": 1})
    assert not result.passed and not result.informational


@pytest.mark.parametrize(("checks", "deps", "expected"), [
    (["ghost.exit_code == 0"], ["a"], "neither a check field nor a step"),
    (["b.exit_code == 0"], ["a"], "step 'b' may not have run"),
    ([{"step": "nope", "expr": "exit_code == 0"}], ["a"], "no step 'nope'"),
    (["a.json $.ok == true", "a.exit_code == 0", "a.stdout matches 'x'"], ["a"], None),
])
def test_validate_checks_name_only_steps_they_can_read(checks: list[Any], deps: list[str],
                                                        expected: str | None) -> None:
    found = problems_of([shell("a", "true"), step("v", "validate", deps, checks=checks),
                         shell("b", "true", ["v"])])
    if expected is None:
        assert found == []
    else:
        assert found and found[0][0] == "plan.plan.steps[1].inputs.checks[0]"
        assert expected in found[0][1]


def test_prose_stays_informational_and_is_not_a_pass() -> None:
    assert problems_of([{**shell("a", "true"),
                         "success_criteria": ["host is reachable",
                                              "Root filesystem has more than 10% free"]}]) == []
    r = evaluate("host is reachable", {})
    assert r.informational


async def test_submission_and_dry_run_refuse_it(engine: Any) -> None:
    doc = request([{**shell("a", "exit 1"), "success_criteria": ["exit_cod == 0"]}],
                  tenant=f"fc-{uuid.uuid4().hex[:8]}")
    with pytest.raises(RequestValidationError) as err:
        await engine.execute(doc, wait=False)
    assert any(p.path == "plan.plan.steps[0].success_criteria[0]" for p in err.value.problems)
    report = await dry_run(doc)
    assert not report.would_run and any("exit_cod" in p.message for p in report.problems)


async def test_validate_reads_a_checked_step_s_own_result(engine: Any) -> None:
    """An HTTP-like step with its own success criteria: validate sees its exit code and
    stdout, not the wrapper that carries the criteria's verdicts."""
    tenant = f"fc-{uuid.uuid4().hex[:8]}"
    doc = request([{**shell("a", "echo hello", idempotent=True),
                    "success_criteria": ["exit_code == 0"]},
                   step("v", "validate", ["a"], checks=["a.stdout matches 'hello'",
                                                        "a.exit_code == 0"])], tenant=tenant)
    res = await engine.execute(doc, wait=True)
    assert res.status.value == "completed", res
    lines = await engine.pool.fetchval(
        "SELECT output::text FROM execution.step_runs WHERE execution_id = $1"
        " AND step_id = 'v'", uuid.UUID(res.execution_id))
    assert "NOT CHECKED" not in (lines or "")
