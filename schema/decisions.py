"""The decision message an operator signs, and what the worker found when it checked one.

An approve, reject, cancel or resolve is bound to one execution, one gate, one decision, the
plan hash it was made against, the principal making it, the moment it was issued and a
nonce. `DecisionMessage.canonical_bytes` is the exact text that `ssh-keygen -Y sign -n
opsconductor-decision` signs. The workflow rebuilds that text from its own facts (its
execution id, its open gate, its plan hash), never from the payload's claims, so a signature
made for another execution, gate, decision or plan cannot verify here.

Pure: no I/O, safe in workflow code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opsconductor.schema.canonical import canonical_json

SIGNATURE_NAMESPACE = "opsconductor-decision"
MESSAGE_VERSION = "opsconductor-decision/v1"
CANCEL_GATE = "execution"  # a cancel is a decision on the whole execution

DecisionKind = Literal["approve", "reject", "cancel", "resolve"]


def canonical_time(value: datetime) -> str:
    """UTC, whole seconds, `Z`: one spelling of an instant for signer and verifier."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DecisionMessage(BaseModel):
    """What a signature covers. `decision` is the kind, `resolve:<action>` for resolutions;
    `comment` is the comment or cancel reason, so a recorded reason cannot be swapped either."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    execution_id: str
    gate: str
    decision: str
    plan_hash: str
    principal: str
    issued_at: datetime
    nonce: str
    comment: str = ""

    def canonical_text(self) -> str:
        return canonical_json({
            "v": MESSAGE_VERSION, "execution_id": self.execution_id, "gate": self.gate,
            "decision": self.decision, "plan_hash": self.plan_hash,
            "principal": self.principal, "issued_at": canonical_time(self.issued_at),
            "nonce": self.nonce, "comment": self.comment})

    def canonical_bytes(self) -> bytes:
        return self.canonical_text().encode("utf-8")


class Signable(BaseModel):
    """The fields every decision payload may carry to prove who made it.

    `signature` is an armored SSH signature (`-----BEGIN SSH SIGNATURE-----`) over the
    `DecisionMessage` these fields, the principal and the comment describe. `execution_id`,
    `gate` and `plan_hash` are the signer's claims: the workflow compares them with its own
    facts to name a mismatch precisely, and verifies the signature against its own facts."""

    execution_id: str | None = Field(default=None, max_length=200)
    gate: str | None = Field(default=None, max_length=200)
    plan_hash: str | None = Field(default=None, max_length=200)
    issued_at: datetime | None = None
    nonce: str | None = Field(default=None, min_length=8, max_length=128)
    signature: str | None = Field(default=None, max_length=16000)

    @field_validator("issued_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("issued_at needs a time zone (for example ...Z)")
        return value

    @model_validator(mode="after")
    def _signed_needs_time_and_nonce(self) -> Signable:
        if self.signature is not None and (self.issued_at is None or self.nonce is None):
            raise ValueError("a signed decision needs issued_at and nonce")
        return self

    @property
    def signed(self) -> bool:
        return self.signature is not None


def claim_mismatch(payload: Signable, *, execution_id: str, gate: str,
                   plan_hash: str) -> str | None:
    """The payload's claims against the workflow's facts: the first difference, named."""
    if payload.execution_id is not None and payload.execution_id != execution_id:
        return (f"signed for execution {payload.execution_id}, "
                f"not this one ({execution_id})")
    if payload.gate is not None and payload.gate != gate:
        return f"signed for gate {payload.gate!r}, not {gate!r}"
    if payload.plan_hash is not None and payload.plan_hash != plan_hash:
        return (f"plan hash mismatch: signed for {payload.plan_hash[:12]}…, "
                f"the execution's plan is {plan_hash[:12]}…")
    return None


class SignatureCheck(BaseModel):
    """What the worker is asked to verify: the message as the workflow rebuilt it, the
    signature (None: unsigned) and the workflow's time of handling (for age and skew)."""

    message: DecisionMessage
    signature: str | None = None
    received_at: datetime


class SignatureVerdict(BaseModel):
    """The worker's finding. `signed` False with `accepted` True: an unsigned decision in an
    environment that allows them. `key_fingerprint` and `signature` are kept with accepted
    signed decisions."""

    accepted: bool
    signed: bool
    reason: str
    key_fingerprint: str | None = None
    key_principals: list[str] = Field(default_factory=list)
    signature: str | None = None

    def marks(self) -> dict[str, object]:
        """What an event or an approval row shows of this verdict."""
        out: dict[str, object] = {"signed": self.signed}
        if self.key_fingerprint:
            out["key_fingerprint"] = self.key_fingerprint
        if self.signed and self.accepted and self.signature:
            out["signature"] = self.signature
        return out
