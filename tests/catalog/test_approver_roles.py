"""Stage D's approver roles (team_lead, operations_manager, security_officer,
database_administrator, network_administrator): a plan gated for one is approvable by a
holder of that role and by no one else; the example deployment policy grants them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsconductor.safety import rbac
from tests.helpers import pending, request, shell, until

ROOT = Path(__file__).resolve().parents[2]
STAGE_D_ROLES = ("team_lead", "operations_manager", "security_officer",
                 "database_administrator", "network_administrator")


async def test_a_point_gated_for_security_officer_is_approvable_by_one(engine: Any) -> None:
    resp = await engine.execute(request(
        [shell("rotate", "echo rotated")], environment="staging",
        approval_points=[{"step_id": "rotate", "reason": "rotates a credential",
                          "risk_level": "high", "approver_role": "security_officer"}]),
        wait=False)
    await until(engine, resp.workflow_id, pending)
    for someone in ("bob", "tom", "olga"):  # an approver, a team lead, an ops manager
        refused = await engine.approve(resp.execution_id, someone)
        assert not refused.accepted and "security_officer" in refused.reason, refused
    accepted = await engine.approve(resp.execution_id, "sofia")
    assert accepted.accepted, accepted.reason
    result = await engine.result(resp.execution_id)
    assert result.status.value == "completed"
    assert result.steps[0].stdout.strip() == "rotated"


def test_the_example_policy_grants_stage_ds_roles() -> None:
    policy = rbac.build_policy(rbac.load_policy_document(ROOT / "deploy/rbac_policy.yaml"))
    holders = {role: [b.actor for b in policy.bindings if role in b.roles]
               for role in STAGE_D_ROLES}
    assert all(holders.values()), holders
    for role, (actor, *_) in holders.items():
        for action in ("approve", "reject"):
            d = policy.evaluate(tenant="t", actor=actor, action=action, environment="prod",
                                resource="db-1", tool="psql")
            assert d.allowed, (role, action, d.reason)
    dba, net = holders["database_administrator"][0], holders["network_administrator"][0]

    def may(actor: str, tool: str) -> bool:
        return policy.evaluate(tenant="t", actor=actor, action="execute", environment="prod",
                               resource="db-1", tool=tool).allowed

    assert may(dba, "psql") and may(dba, "pg_dump") and not may(dba, "shell")
    assert may(net, "tcpdump") and may(net, "Axis-VAPIX-PTZ-Control") and not may(net, "psql")
    assert not may(holders["security_officer"][0], "shell")
    assert policy.evaluate(tenant="t", actor=holders["security_officer"][0], action="cancel",
                           environment="prod", resource="x", tool="shell").allowed
