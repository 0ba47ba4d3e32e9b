"""RBAC decisions the workflow needs (approvers, cancellers), each one audited."""

from __future__ import annotations

from temporalio import activity

from opsconductor.activities.db import get_pool
from opsconductor.schema.messages import AuthorizeInput, AuthorizeResult


@activity.defn(name="authorize")
async def authorize(inp: AuthorizeInput) -> AuthorizeResult:
    from opsconductor.safety import rbac

    pool = await get_pool()
    policy = await rbac.load_policy(pool)
    roles = policy.roles_of(inp.tenant, inp.actor, inp.environment.value)
    decision = await rbac.check(pool, tenant=inp.tenant, actor=inp.actor, action=inp.action,
                                environment=inp.environment.value,
                                execution_id=inp.execution_id, step_id=inp.step_id)
    return AuthorizeResult(allowed=decision.allowed, reason=decision.reason,
                           roles=sorted(roles), rule_id=decision.rule_id,
                           policy_version=decision.policy_version)
