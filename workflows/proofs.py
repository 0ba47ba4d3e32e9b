"""Who made a decision: the proof check every approve, reject, cancel and resolve goes through.

The workflow rebuilds the message a decision must be signed over from its own facts (this
execution, the gate being decided, its plan hash) plus the payload's principal, time, nonce
and comment, so a signature made for anything else does not verify. What needs no key is
judged here, deterministically: the payload's claims against those facts, and replays (a
nonce this execution has already seen). The signature itself, the key's owner, the message's
age and whether this environment accepts unsigned decisions are judged by the `authorize`
activity (subprocesses and the policy's keys live in the worker), in the same round trip as
the RBAC decision. A nonce is reserved while its proof is checked and kept once it verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import workflow

from opsconductor.schema.decisions import (
    DecisionMessage,
    Signable,
    SignatureCheck,
    SignatureVerdict,
    claim_mismatch,
)
from opsconductor.schema.messages import AuthorizeInput, AuthorizeResult
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.workflows.options import AUTHZ_RETRY, AUTHZ_TIMEOUT

# Histories recorded before this check existed got no verdict from `authorize`; they replay
# as they ran. In a new run, a missing verdict (a worker too old to verify) is a refusal.
PROOF_PATCH = "signed-decisions"


@dataclass
class Judgement:
    """The RBAC answer (None when refused before asking) and the refusal, if any."""

    auth: AuthorizeResult | None
    refusal: str | None
    verdict: SignatureVerdict | None = None

    def marks(self, *, with_signature: bool = False) -> dict[str, Any]:
        """For events: signed or unsigned, the key's fingerprint (and the signature itself,
        for decisions that have no approval row to keep it)."""
        if self.verdict is None:
            return {}
        return {k: v for k, v in self.verdict.marks().items()
                if with_signature or k != "signature"}

    def proof(self) -> dict[str, Any]:
        """The `GateDecision` fields of an accepted decision: signed, fingerprint, signature."""
        v = self.verdict
        if v is None:
            return {}
        return {"signed": v.signed, "key_fingerprint": v.key_fingerprint,
                "signature": v.signature}


class Proofs:
    """The nonces this execution has seen, and the check of one decision's proof."""

    def __init__(self, spec: ExecutionSpec) -> None:
        self.spec = spec
        self.nonces: dict[str, str] = {}  # nonce -> "approve by alice at execution"

    def replayed(self, payload: Signable) -> str | None:
        """A signed message this execution has already accepted: refused before anything
        else, so a replay is named as one (not as, say, a second approval)."""
        nonce = payload.nonce
        if payload.signed and nonce is not None and nonce in self.nonces:
            return f"replay: nonce {nonce} was already used ({self.nonces[nonce]})"
        return None

    async def judge(self, payload: Signable, *, action: str, decision: str, gate: str,
                    principal: str, comment: str | None,
                    step_id: str | None = None) -> Judgement:
        """Check the proof, then RBAC; the first refusal, named, or the RBAC answer."""
        spec = self.spec
        mismatch = claim_mismatch(payload, execution_id=spec.execution_id, gate=gate,
                                  plan_hash=spec.plan_hash)
        if mismatch is not None:
            return Judgement(None, mismatch)
        replayed = self.replayed(payload)
        if replayed is not None:
            return Judgement(None, replayed)
        nonce = payload.nonce
        if payload.signed and nonce is not None:
            self.nonces[nonce] = f"{decision} by {principal} at {gate}"
        check = SignatureCheck(
            message=DecisionMessage(
                execution_id=spec.execution_id, gate=gate, decision=decision,
                plan_hash=spec.plan_hash, principal=principal,
                issued_at=payload.issued_at or workflow.now(), nonce=nonce or "",
                comment=comment or ""),
            signature=payload.signature, received_at=workflow.now())
        auth = await workflow.execute_activity(
            "authorize",
            AuthorizeInput(tenant=spec.tenant, environment=spec.environment, actor=principal,
                           action=action, execution_id=spec.execution_id, step_id=step_id,
                           signature=check),
            result_type=AuthorizeResult, start_to_close_timeout=AUTHZ_TIMEOUT,
            retry_policy=AUTHZ_RETRY)
        verdict = auth.signature
        if verdict is None and not workflow.patched(PROOF_PATCH):
            return Judgement(auth, None)  # recorded before decisions carried proofs: as then
        if verdict is None or not verdict.accepted:
            if payload.signed and nonce is not None:
                self.nonces.pop(nonce, None)  # not proven: a forged copy must not burn it
            reason = (verdict.reason if verdict is not None else
                      "the worker that answered does not verify signed decisions")
            return Judgement(auth, reason, verdict)
        return Judgement(auth, None, verdict)
