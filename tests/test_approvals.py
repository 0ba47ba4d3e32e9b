"""Approvals the way operators use them: quorum, roles, self-approval, expiry, plan hash.

Approver roles come from the RBAC policy the session's worker uses (tests/rbac_policy.yaml):
bob and dave hold `approver`, carol holds `approver` and `senior_approver`, mallory nothing,
erin holds `dba` (the role an approval point asks for).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import pytest

from opsconductor.starter.binaries import temporal_cli
from tests.helpers import approval_rows, events, pending, request, shell, step, until

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def submit(engine: Any, steps: list[dict], **kw: Any) -> Any:
    resp = await engine.execute(request(steps, environment="staging", **kw), wait=False)
    await until(engine, resp.workflow_id, pending)
    return resp


async def test_level_two_needs_two_distinct_approvers_and_counts_each_once(engine: Any) -> None:
    resp = await submit(engine, [shell("s", "echo gated")], approval_level=2)
    first = await engine.approve(resp.execution_id, "bob", "looks fine")
    assert first.accepted and first.approvals_counted == 1 and first.approvals_required == 2
    again = await engine.approve(resp.execution_id, "bob", "me again")
    assert not again.accepted and "counts once" in again.reason
    progress = await engine.progress(resp.workflow_id)
    assert progress.status.value == "pending_approval"
    assert progress.steps[0].status.value == "pending"  # nothing gated ran
    second = await engine.approve(resp.execution_id, "dave")
    assert second.accepted and second.approval_state.value == "approved"
    result = await engine.result(resp.execution_id)
    assert result.status.value == "completed" and result.approval_state.value == "approved"

    rows = await approval_rows(engine.pool, resp.execution_id)
    assert len(rows) == 1 and rows[0]["st"] == "approved" and rows[0]["required_approvals"] == 2
    decisions = json.loads(rows[0]["decisions"])
    assert [(d["approver"], d["accepted"]) for d in decisions] == [
        ("bob", True), ("bob", False), ("dave", True)]
    evs = await events(engine.pool, resp.execution_id)
    kinds = [e["event_type"] for e in evs]
    assert kinds.count("approval.approve") == 2 and kinds.count("approve.refused") == 1
    transitions = [(e["from_status"], e["to_status"]) for e in evs
                   if e["event_type"] == "execution.status"]
    assert transitions == [("queued", "pending_approval"), ("pending_approval", "approved"),
                           ("approved", "running"), ("running", "completed")]
    row = await engine.pool.fetchrow(
        "SELECT approval_state::text AS a FROM execution.executions WHERE execution_id = $1",
        uuid.UUID(resp.execution_id))
    assert row["a"] == "approved"


async def test_level_three_needs_a_senior_approver(engine: Any) -> None:
    resp = await submit(engine, [step("s")], approval_level=3)
    assert (await engine.approve(resp.execution_id, "bob")).accepted
    two = await engine.approve(resp.execution_id, "dave")
    assert two.accepted and two.approval_state.value == "pending"
    assert "senior_approver" in two.reason
    three = await engine.approve(resp.execution_id, "carol")
    assert three.accepted and three.approval_state.value == "approved"
    assert (await engine.result(resp.execution_id)).status.value == "completed"


async def test_self_approval_and_missing_role_are_refused(engine: Any) -> None:
    resp = await submit(engine, [step("s")], approval_level=1, actor="bob")
    own = await engine.approve(resp.execution_id, "bob")
    assert not own.accepted and "cannot approve" in own.reason
    norole = await engine.approve(resp.execution_id, "mallory")
    assert not norole.accepted and "approver" in norole.reason
    assert (await engine.progress(resp.workflow_id)).status.value == "pending_approval"
    assert (await engine.approve(resp.execution_id, "dave")).accepted
    assert (await engine.result(resp.execution_id)).status.value == "completed"
    evs = await events(engine.pool, resp.execution_id)
    refused = [(e["actor"], e["message"]) for e in evs if e["event_type"] == "approve.refused"]
    assert [a for a, _ in refused] == ["bob", "mallory"]


async def test_rejection_ends_rejected_without_running_anything(engine: Any,
                                                               tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    resp = await submit(engine, [shell("s", f"touch {marker}")], approval_level=1)
    out = await engine.reject(resp.execution_id, "bob", "not during the freeze")
    assert out.accepted
    result = await engine.result(resp.execution_id)
    assert result.status.value == "rejected" and result.approval_state.value == "rejected"
    assert "not during the freeze" in (result.error or "")
    assert not marker.exists()
    rows = await approval_rows(engine.pool, resp.execution_id)
    assert rows[0]["st"] == "rejected"


async def test_expiry_ends_expired_with_nothing_gated_run(engine: Any, tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    resp = await submit(engine, [shell("s", f"touch {marker}")], approval_level=1,
                        timeouts={"approval_timeout_seconds": 1})
    result = await engine.result(resp.execution_id)
    assert result.status.value == "timeout" and result.approval_state.value == "expired"
    assert not marker.exists()
    rows = await approval_rows(engine.pool, resp.execution_id)
    assert rows[0]["st"] == "expired"
    assert any(e["event_type"] == "approval.expired"
               for e in await events(engine.pool, resp.execution_id))
    late = await engine.approve(resp.execution_id, "bob")
    assert not late.accepted


async def test_plan_hash_mismatch_is_refused(engine: Any) -> None:
    resp = await submit(engine, [step("s")], approval_level=1)
    spec_hash = await engine.pool.fetchval(
        "SELECT plan_hash FROM execution.executions WHERE execution_id = $1",
        uuid.UUID(resp.execution_id))
    wrong = await engine.approve(resp.execution_id, "bob", plan_hash="0" * 64)
    assert not wrong.accepted and "plan hash mismatch" in wrong.reason
    right = await engine.approve(resp.execution_id, "bob", plan_hash=spec_hash)
    assert right.accepted
    assert (await engine.result(resp.execution_id)).status.value == "completed"


async def test_approval_point_pauses_only_before_its_step(engine: Any) -> None:
    resp = await engine.execute(request(
        [shell("before", "echo one"), shell("gated", "echo two", deps=["before"]),
         shell("after", "echo three", deps=["gated"])],
        environment="staging",
        approval_points=[{"step_id": "gated", "reason": "touches the DB",
                          "risk_level": "high", "approver_role": "dba"}]), wait=False)
    progress = await until(engine, resp.workflow_id, pending)
    states = {s.id: s.status.value for s in progress.steps}
    assert states == {"before": "completed", "gated": "waiting", "after": "pending"}
    wrong_role = await engine.approve(resp.execution_id, "bob")
    assert not wrong_role.accepted and "dba" in wrong_role.reason
    assert (await engine.approve(resp.execution_id, "erin")).accepted
    result = await engine.result(resp.execution_id)
    assert result.status.value == "completed"
    rows = await approval_rows(engine.pool, resp.execution_id)
    assert [(r["gate"], r["st"], r["required_role"]) for r in rows] == [
        ("gated", "approved", "dba")]


async def test_approval_through_the_temporal_binary(engine: Any, temporal_server: Any) -> None:
    resp = await submit(engine, [step("s")], approval_level=1)
    proc = await asyncio.to_thread(subprocess.run, [
        temporal_cli(), "workflow", "signal", "--address", temporal_server.address,
        "--workflow-id", resp.workflow_id, "--name", "approve",
        "--input", json.dumps({"approver": "bob", "comment": "via CLI"})],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    result = await engine.result(resp.execution_id)
    assert result.status.value == "completed"
    evs = await events(engine.pool, resp.execution_id)
    assert any(e["event_type"] == "approval.approve" and e["actor"] == "bob" for e in evs)


async def test_malformed_signals_are_refused_and_recorded_and_the_run_goes_on(
        engine: Any) -> None:
    resp = await submit(engine, [step("s")], approval_level=1)
    handle = engine.temporal.get_workflow_handle(resp.workflow_id)
    await handle.signal("approve", {"comment": "who am I?"})
    await handle.signal("approve", {"approver": 42})
    await handle.signal("approve", {"approver": "bob", "sneaky": True})
    await handle.signal("approve", "not even an object")
    await handle.signal("cancel", {"reason": "no actor"})
    via_update = await engine.approve(resp.execution_id, "")
    assert not via_update.accepted
    assert (await engine.progress(resp.workflow_id)).status.value == "pending_approval"
    assert (await engine.approve(resp.execution_id, "bob")).accepted
    result = await engine.result(resp.execution_id)
    assert result.status.value == "completed"
    evs = await events(engine.pool, resp.execution_id)
    refused = [e for e in evs if e["event_type"].endswith(".refused")]
    assert len(refused) >= 5
    assert all("malformed" in e["message"] for e in refused[:5])
