"""The workflow result's bound and the escaping of output text: pure functions, no servers."""

from __future__ import annotations

import json

from opsconductor.schema.enums import StepStatus
from opsconductor.schema.limits import MAX_DEPTH, limit_problems
from opsconductor.schema.messages import ExecutionResult, StepResult
from opsconductor.schema.outputs import (
    RESULT_MAX_STEPS,
    bound_results,
    escape_text,
    excerpt,
    safe_json_text,
)


def test_result_stays_bounded_whatever_the_plan() -> None:
    results = [StepResult(step_id=f"s{i}", status=StepStatus.COMPLETED, stdout="o" * 4096,
                          stderr="e" * 4096, error=None) for i in range(10_000)]
    results[7_777] = results[7_777].model_copy(update={
        "status": StepStatus.FAILED, "error": "boom " * 2000})
    kept, omitted = bound_results(results)
    assert len(kept) == RESULT_MAX_STEPS and omitted == 10_000 - RESULT_MAX_STEPS
    failed = next(r for r in kept if r.step_id == "s7777")  # failures are kept first
    assert failed.status is StepStatus.FAILED and len(failed.error or "") <= 2001
    size = len(ExecutionResult(execution_id="e", workflow_id="w", status="completed",
                               approval_state="not_required", steps=kept).model_dump_json())
    assert size < 1_000_000, size


def test_excerpt_keeps_head_and_tail_and_escapes() -> None:
    text = "HEAD" + "x" * 100_000 + "TAIL\x00"
    shown, complete = excerpt(text, 1000)
    assert not complete and shown.startswith("HEAD") and shown.endswith("TAIL\\x00")
    assert len(shown) < 1100
    assert excerpt("a\x00b\x1b[2Jc\ud800", 100) == ("a\\x00b\\x1b[2Jc\\ud800", True)
    assert escape_text("tab\tnew\nline") == "tab\tnew\nline"


def test_json_for_postgres_never_holds_nul_or_a_lone_surrogate() -> None:
    dumped = safe_json_text({"k\x00": ["v\x00", "\udcff", "ok 😀"]})
    assert json.loads(dumped) == {"k\\x00": ["v\\x00", "\\udcff", "ok 😀"]}


def test_limits_walk_deep_documents_without_recursion() -> None:
    deep: object = "leaf"
    for _ in range(200_000):
        deep = [deep]
    problems = limit_problems({"metadata": deep})
    assert [p.message for p in problems] == [f"nested deeper than {MAX_DEPTH} levels"]
    found = limit_problems({"actor": "al\x00ice", "plan": {"plan": {"steps": [
        {"id": "s\x1b", "description": "fine\ttext"}]}}})
    assert {(p.path, p.message.split(" (")[0]) for p in found} == {
        ("actor", "contains a NUL character"),
        ("plan.plan.steps[0].id", "contains the control character U+001B; names and ids may "
                                  "not")}
