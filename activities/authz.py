"""RBAC decisions the workflow needs (approvers, cancellers), each one audited.

A decision that carries a proof (`AuthorizeInput.signature`) is verified first, against the
policy's public keys: who signed comes before what they may do, and a refused proof is audited
as a denial with its reason. One activity, so a decision costs one round trip."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from opsconductor.safety import rbac
from opsconductor.safety.signatures import SignatureError, verify_decision
from opsconductor.schema.decisions import SignatureVerdict
from opsconductor.schema.messages import AuthorizeInput, AuthorizeResult


class RbacActivities:
    """`authorize`, with the worker's pool and RBAC engine (the policy cached between calls)."""

    def __init__(self, *, pool: Any, rbac: rbac.RbacEngine) -> None:
        self.pool = pool
        self.rbac = rbac

    @activity.defn(name="authorize")
    async def authorize(self, inp: AuthorizeInput) -> AuthorizeResult:
        policy = await self.rbac.policy(self.pool)
        roles = policy.roles_of(inp.tenant, inp.actor, inp.environment.value)
        verdict = None
        if inp.signature is not None:
            try:
                verdict = await verify_decision(
                    inp.signature, policy.signers,
                    policy.signing_rules(inp.environment.value))
            except SignatureError as err:  # ssh-keygen missing or hung: refuse, say why
                verdict = SignatureVerdict(accepted=False, signed=inp.signature.signature
                                           is not None, reason=f"cannot verify: {err}")
            if not verdict.accepted:
                denied = rbac.Decision(False, f"proof refused: {verdict.reason}", None,
                                       policy.version, tuple(sorted(roles)))
                await rbac.audit(self.pool, denied, tenant=inp.tenant, actor=inp.actor,
                                 action=inp.action, environment=inp.environment.value,
                                 execution_id=inp.execution_id, step_id=inp.step_id)
                return AuthorizeResult(allowed=False, reason=denied.reason,
                                       roles=sorted(roles), policy_version=policy.version,
                                       signature=verdict)
        decision = await rbac.check(self.pool, tenant=inp.tenant, actor=inp.actor,
                                    action=inp.action, environment=inp.environment.value,
                                    execution_id=inp.execution_id, step_id=inp.step_id,
                                    engine=self.rbac)
        return AuthorizeResult(allowed=decision.allowed, reason=decision.reason,
                               roles=sorted(roles), rule_id=decision.rule_id,
                               policy_version=decision.policy_version, signature=verdict)
