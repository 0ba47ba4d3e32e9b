"""Level 3 as documented: two distinct approvers, one holding `senior_approver` — a senior
needs no second role; `pending` shows the gate to whoever can move it and says what is
missing; the shipped example policy can approve every level."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from opsconductor.safety.rbac import build_policy, load_policy_document
from opsconductor.schema.messages import GateDecision
from opsconductor.workflows.approvals import Gate, rule_for_level
from tests.helpers import request, step

EXAMPLE = Path(__file__).resolve().parents[1] / "starter" / "examples" / "rbac_policy.yaml"


async def test_a_senior_with_only_the_senior_role_completes_level_three(engine: Any) -> None:
    resp = await engine.execute(request([step("s")], approval_level=3), wait=False)
    first = await engine.approve(resp.execution_id, "dave")
    assert first.accepted and first.approval_state.value == "pending"
    assert "from a holder of 'senior_approver'" in first.reason
    waiting = [p for p in await engine.pending("sam") if p["execution_id"] == resp.execution_id]
    assert waiting and waiting[0]["missing"] == "1 more approval, from a holder of " \
        "'senior_approver'"
    assert not [p for p in await engine.pending("dave")
                if p["execution_id"] == resp.execution_id]  # dave already approved
    second = await engine.approve(resp.execution_id, "sam")
    assert second.accepted and second.approval_state.value == "approved"
    assert (await engine.result(resp.execution_id)).status.value == "completed"


async def test_no_role_at_all_is_still_refused(engine: Any) -> None:
    resp = await engine.execute(request([step("s")], approval_level=3), wait=False)
    refused = await engine.approve(resp.execution_id, "mallory")
    assert not refused.accepted and "senior_approver" in refused.reason
    await engine.cancel(resp.execution_id, actor="alice", reason="test over")


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_the_example_policy_approves_every_level(level: int, environment: str) -> None:
    policy = build_policy(load_policy_document(EXAMPLE))
    requester = "bob"
    now = datetime.now(UTC)
    gate = Gate("execution", rule_for_level(level), "hash", requester, now, now)
    for approver in ("alice", "dave", "carol"):
        roles = policy.roles_of("acme", approver, environment)
        allowed = policy.evaluate(tenant="acme", actor=approver, action="approve",
                                  environment=environment).allowed
        if gate.quorum_met() or not allowed or gate.role_refusal(roles) is not None:
            continue
        gate.approvals[approver] = GateDecision(approver=approver, decision="approve",
                                                accepted=True, roles=sorted(roles), at=now)
    assert gate.quorum_met(), (level, environment, gate.missing())
