"""A submission signed by its actor: the proof that the named actor asked for this request.

Stage D (or an operator) signs the request envelope exactly as sent, minus its `signature`,
with the same SSH signature format as decisions: the signed message is a `DecisionMessage`
with gate `submission`, decision `submit`, the actor as principal and, in place of a plan
hash, the sha256 of the canonical envelope. The client carries the signed envelope into the
execution (`ExecutionSpec.submission`), and the worker verifies the signature and that the
execution it is asked to run is the one that envelope describes — so an execution started
directly in Temporal with a forged spec cannot borrow someone's signature.

Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opsconductor.schema.canonical import canonical_json, sha256_hex
from opsconductor.schema.decisions import DecisionMessage

SUBMISSION_GATE = "submission"
SUBMIT = "submit"
SIGNATURE_FIELD = "signature"


class SubmissionSignature(BaseModel):
    """The envelope's `signature`: when, a nonce, and the armored SSH signature."""

    model_config = ConfigDict(extra="forbid")
    issued_at: datetime
    nonce: str = Field(min_length=8, max_length=128)
    signature: str = Field(min_length=1, max_length=16000)

    @field_validator("issued_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("issued_at needs a time zone (for example ...Z)")
        return value


class SubmissionProof(SubmissionSignature):
    """What the execution carries: the signature and the envelope it covers, canonical."""

    signed_request: str = Field(max_length=4_000_000)


def unsigned_envelope(envelope: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in envelope.items() if k != SIGNATURE_FIELD}


def request_digest(signed_request: str) -> str:
    return sha256_hex(signed_request)


def canonical_request(envelope: dict[str, Any]) -> str:
    """The text a submission signature covers: the envelope without its signature."""
    return canonical_json(unsigned_envelope(envelope))


def submission_message(actor: str, proof: SubmissionSignature, signed_request: str
                       ) -> DecisionMessage:
    """The message signed for a submission (see the module docstring)."""
    return DecisionMessage(execution_id="", gate=SUBMISSION_GATE, decision=SUBMIT,
                           plan_hash=request_digest(signed_request), principal=actor,
                           issued_at=proof.issued_at, nonce=proof.nonce)
