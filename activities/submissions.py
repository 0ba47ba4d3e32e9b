"""Verify that an execution is what its actor signed, before anything of it runs.

Where the policy requires signed submissions (`signatures.submissions`), an execution whose
spec carries no signature, a signature that is not its actor's, or a spec that differs from
the signed envelope (a forged step, target, approval level, environment, ...) is refused. The
comparison rebuilds the spec from the signed envelope as the client would and compares the
two: the signature vouches for the envelope, and only the envelope decides what runs.
"""

from __future__ import annotations

import json
from typing import Any

from temporalio import activity

from opsconductor.activities.assets import resolve_targets
from opsconductor.safety import rbac
from opsconductor.safety.signatures import SignatureError, verify_decision
from opsconductor.schema.config import Settings
from opsconductor.schema.decisions import SignatureCheck, SignatureVerdict
from opsconductor.schema.spec import ExecutionSpec, build_spec
from opsconductor.schema.submissions import submission_message, unsigned_envelope
from opsconductor.schema.validation import RequestValidationError, validate_request

# Set by the client or the workflow, not by the envelope: never compared.
NOT_SIGNED = frozenset({"execution_id", "workflow_id", "idempotency_key",
                        "previous_execution_id", "submitted_at", "submission", "max_parallel",
                        "carried"})


async def spec_mismatch(spec: ExecutionSpec, settings: Settings | None) -> str | None:
    """The first way `spec` differs from the spec its signed envelope describes."""
    assert spec.submission is not None
    try:
        request = validate_request(json.loads(spec.submission.signed_request))
    except (ValueError, RequestValidationError) as err:
        return f"the signed envelope is not a valid request: {err}"
    targets = sorted({t for s in request.steps if isinstance(t := s.target, str) and t})
    asset_ids, _unknown = await resolve_targets(targets, settings)
    expected = build_spec(request, execution_id=spec.execution_id,
                          workflow_id=spec.workflow_id, idempotency_key=spec.idempotency_key,
                          asset_ids=asset_ids)
    ours = spec.model_dump(mode="json", exclude=set(NOT_SIGNED))
    theirs = expected.model_dump(mode="json", exclude=set(NOT_SIGNED))
    ours["request"] = unsigned_envelope(ours.get("request") or {})  # the copy for requeue
    theirs["request"] = unsigned_envelope(theirs.get("request") or {})
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            return f"the execution's {key} is not what the signed envelope asks for"
    return None


class SubmissionActivities:
    """`verify_submission`, with the worker's settings, pool and RBAC engine."""

    def __init__(self, *, settings: Settings, pool: Any, rbac: rbac.RbacEngine) -> None:
        self.settings = settings
        self.pool = pool
        self.rbac = rbac

    @activity.defn(name="verify_submission")
    async def verify_submission(self, spec: ExecutionSpec) -> SignatureVerdict:
        policy = await self.rbac.policy(self.pool)
        rules = policy.submission_rules(spec.environment.value)
        proof = spec.submission
        if proof is None:
            if rules.required:
                return SignatureVerdict(
                    accepted=False, signed=False,
                    reason=f"unsigned submission: {spec.environment.value} requires "
                           f"submissions signed by their actor's registered SSH key")
            return SignatureVerdict(accepted=True, signed=False,
                                    reason="unsigned submission (not required here)")
        check = SignatureCheck(message=submission_message(spec.actor, proof,
                                                          proof.signed_request),
                               signature=proof.signature,
                               received_at=spec.submitted_at or proof.issued_at)
        try:
            verdict = await verify_decision(check, policy.signers, rules)
        except SignatureError as err:
            return SignatureVerdict(accepted=False, signed=True, reason=f"cannot verify: {err}")
        if not verdict.accepted:
            return verdict
        mismatch = await spec_mismatch(spec, self.settings)
        if mismatch is not None:
            return verdict.model_copy(update={"accepted": False, "reason": mismatch})
        return verdict
