"""The spine end to end: request → workflow → step activities → mirror → result.

Runs against the session's real Temporal dev server and real PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from opsconductor.schema.validation import RequestValidationError
from tests.helpers import request, shell, step
from tests.processes import alive

pytestmark = pytest.mark.asyncio(loop_scope="session")
EXAMPLE = Path(__file__).resolve().parent.parent / "starter" / "examples"


async def mirror(engine: Any, execution_id: str) -> tuple[Any, list[Any], list[Any]]:
    eid = uuid.UUID(execution_id)
    row = await engine.pool.fetchrow(
        "SELECT *, status::text AS st FROM execution.executions WHERE execution_id = $1", eid)
    steps = await engine.pool.fetch(
        "SELECT * FROM execution.step_runs WHERE execution_id = $1 ORDER BY position", eid)
    events = await engine.pool.fetch(
        "SELECT * FROM execution.event_log WHERE execution_id = $1 ORDER BY id", eid)
    return row, steps, events


async def test_multi_step_plan_with_dependency_completes_and_mirror_matches(engine: Any) -> None:
    req = request([
        shell("a", "echo alpha"),
        shell("b", "echo beta-$((40+2))", deps=["a"]),
        step("c", "uname", deps=["a"], args="-s"),
    ])
    resp = await engine.execute(req, wait=True)
    result = resp.result
    assert result.status.value == "completed", result
    by_id = {s.step_id: s for s in result.steps}
    assert by_id["a"].stdout.strip() == "alpha"
    assert by_id["b"].stdout.strip() == "beta-42"
    assert by_id["c"].stdout.strip() == "Linux"
    # b and c depend on a: a finished before either started
    assert by_id["a"].completed_at <= by_id["b"].started_at
    assert by_id["a"].completed_at <= by_id["c"].started_at

    row, steps, events = await mirror(engine, resp.execution_id)
    assert row["st"] == "completed"
    assert row["workflow_id"] == resp.workflow_id
    assert row["steps_completed"] == 3 and row["steps_failed"] == 0
    assert row["completed_at"] is not None
    for s in steps:
        r = by_id[s["step_id"]]
        assert s["status"] == r.status.value
        assert s["attempts"] == r.attempts == 1
        assert s["exit_code"] == 0
        assert s["started_at"] == r.started_at and s["completed_at"] == r.completed_at
        assert json.loads(s["output"])["stdout"] == r.stdout
    transitions = [(e["from_status"], e["to_status"]) for e in events
                   if e["event_type"] == "execution.status"]
    assert transitions == [("queued", "running"), ("running", "completed")]
    step_events = [(e["step_id"], e["to_status"]) for e in events
                   if e["event_type"] == "step.status"]
    for sid in "abc":
        assert (sid, "running") in step_events and (sid, "completed") in step_events
    # the query agrees with the mirror
    progress = await engine.progress(resp.workflow_id)
    assert progress.status.value == "completed" and progress.percent == 100.0
    desc = await engine.temporal.get_workflow_handle(resp.workflow_id).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    sa = {k: v for k, v in desc.search_attributes.items()}
    assert sa["OpsStatus"] == ["completed"] and sa["OpsTenant"] == ["acme"]


async def test_failing_step_with_abort_fails_the_run(engine: Any) -> None:
    req = request([
        shell("ok", "true"),
        shell("boom", "echo oops >&2; exit 3", deps=["ok"], failure_handling="abort"),
        shell("never", "echo never", deps=["boom"]),
        shell("independent", "echo later"),
    ])
    resp = await engine.execute(req, wait=True)
    result = resp.result
    assert result.status.value == "failed"
    by_id = {s.step_id: s for s in result.steps}
    assert by_id["boom"].status.value == "failed"
    assert by_id["boom"].exit_code == 3
    assert "oops" in by_id["boom"].error
    assert by_id["never"].status.value == "skipped"
    # abort stops launching anything new, even independent steps not yet started
    assert by_id["independent"].status.value == "skipped"
    row, steps, _ = await mirror(engine, resp.execution_id)
    assert row["st"] == "failed" and "boom" in row["error"]
    assert {s["step_id"]: s["status"] for s in steps} == {
        "ok": "completed", "boom": "failed", "never": "skipped", "independent": "skipped"}
    dlq = await engine.pool.fetch("SELECT * FROM execution.execution_dlq WHERE execution_id=$1",
                                  uuid.UUID(resp.execution_id))
    assert [d["step_id"] for d in dlq] == ["boom"]


async def test_failing_step_with_continue_ends_partial(engine: Any) -> None:
    req = request([
        shell("first", "exit 1", failure_handling="continue"),
        shell("second", "echo still-here"),
    ])
    resp = await engine.execute(req, wait=True)
    assert resp.result.status.value == "partial"
    by_id = {s.step_id: s for s in resp.result.steps}
    assert by_id["first"].status.value == "failed"
    assert by_id["second"].status.value == "completed"
    row, _, _ = await mirror(engine, resp.execution_id)
    assert row["st"] == "partial"


async def test_hanging_step_is_retried_per_policy_then_fails_and_its_group_is_gone(
        engine: Any, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    req = request([
        shell("hang", f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait",
              timeout_seconds=1, idempotent=True),
    ], timeouts={"max_attempts": 2, "step_timeout_seconds": 1})
    resp = await engine.execute(req, wait=True)
    result = resp.result
    assert result.status.value == "failed"
    hang = result.steps[0]
    assert hang.status.value == "timeout"
    assert hang.attempts == 2
    recorded = [int(p) for p in pids.read_text().split()]
    assert len(recorded) == 4  # a shell and a sleep per attempt
    assert not [p for p in recorded if alive(p)]
    _, steps, events = await mirror(engine, resp.execution_id)
    assert steps[0]["status"] == "timeout" and steps[0]["attempts"] == 2
    assert [e["event_type"] for e in events if e["step_id"] == "hang"].count(
        "step.attempt_failed") == 1


async def test_a_non_idempotent_step_killed_at_its_timeout_is_not_run_again(
        engine: Any, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    req = request([shell("pay", f"echo paid >> {effects}; sleep 300", timeout_seconds=1)],
                  timeouts={"max_attempts": 3, "step_timeout_seconds": 1})
    resp = await engine.execute(req, wait=True)
    pay = resp.result.steps[0]
    assert pay.status.value == "timeout" and pay.attempts == 1
    assert "not retried: the step is not idempotent" in (pay.error or "")
    assert effects.read_text().split() == ["paid"]  # it acted once, and only once


async def test_execution_deadline_ends_the_run_as_timeout(engine: Any) -> None:
    req = request([
        shell("slow", "sleep 30", idempotent=True),
        shell("after", "echo after", deps=["slow"]),
    ], timeouts={"execution_timeout_seconds": 2.5, "step_timeout_seconds": 1})
    resp = await engine.execute(req, wait=True)
    result = resp.result
    assert result.status.value == "timeout"
    by_id = {s.step_id: s for s in result.steps}
    assert by_id["slow"].status.value in ("timeout", "cancelled")
    assert by_id["after"].status.value == "skipped"
    row, _, events = await mirror(engine, resp.execution_id)
    assert row["st"] == "timeout"
    assert any(e["event_type"] == "execution.deadline" for e in events)


async def test_duplicate_start_returns_the_same_execution(engine: Any) -> None:
    req = request([step("only")])
    first = await engine.execute(req, wait=True)
    second = await engine.execute(req, wait=True)
    assert second.duplicate and not first.duplicate
    assert second.execution_id == first.execution_id
    assert second.workflow_id == first.workflow_id
    count = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.executions WHERE idempotency_key = "
        "(SELECT idempotency_key FROM execution.executions WHERE execution_id = $1)",
        uuid.UUID(first.execution_id))
    assert count == 1


@pytest.mark.parametrize(("mutate", "path", "fragment"), [
    (lambda r: r["plan"]["plan"]["steps"][0].update(tool="teleport"),
     "plan.plan.steps[0].tool", "unknown tool 'teleport'"),
    (lambda r: r["plan"]["plan"]["steps"].append(dict(r["plan"]["plan"]["steps"][0])),
     "plan.plan.steps[1].id", "duplicate step id"),
    (lambda r: r["plan"]["plan"]["steps"][0].update(depends_on=["ghost"]),
     "plan.plan.steps[0].depends_on[0]", "unknown step 'ghost'"),
    (lambda r: r["plan"]["plan"]["steps"][0]["inputs"].pop("command"),
     "plan.plan.steps[0].inputs.command", "Field required"),
    (lambda r: r.update(environment="moon"), "environment", "Input should be"),
    (lambda r: r["plan"]["plan"]["steps"][0].update(failure_handling=["explode"]),
     "plan.plan.steps[0].failure_handling", "Input should be"),
    (lambda r: r.update(approval_level=7), "approval_level", "less than or equal"),
])
async def test_malformed_plans_are_rejected_and_nothing_is_written(
        engine: Any, mutate: Any, path: str, fragment: str) -> None:
    req = request([shell("s1", "echo hi")])
    mutate(req)
    before = await engine.pool.fetchval("SELECT count(*) FROM execution.executions")
    claims_before = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.idempotency_records")
    with pytest.raises(RequestValidationError) as info:
        await engine.execute(req)
    problems = {p.path: p.message for p in info.value.problems}
    assert path in problems, problems
    assert fragment in problems[path]
    assert await engine.pool.fetchval("SELECT count(*) FROM execution.executions") == before
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.idempotency_records") == claims_before


async def test_dependency_cycle_is_reported_with_every_other_problem(engine: Any) -> None:
    req = request([
        shell("x", "true", deps=["y"]),
        shell("y", "true", deps=["x"]),
        step("z", "warp"),
    ], environment="nowhere")
    with pytest.raises(RequestValidationError) as info:
        await engine.execute(req)
    text = str(info.value)
    assert "depends_on cycle" in text and "unknown tool 'warp'" in text
    assert "environment" in text


async def test_full_planv1_document_is_accepted_as_is(engine: Any) -> None:
    doc = json.loads((EXAMPLE / "diagnostic_plan.json").read_text())
    doc["plan"]["execution_metadata"]["nonce"] = uuid.uuid4().hex
    assert {"plan", "execution_metadata", "stage", "version"} <= set(doc["plan"])
    resp = await engine.execute(doc, wait=True)
    assert resp.result.status.value == "completed"
    assert len(resp.result.steps) == 5
