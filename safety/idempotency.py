"""Idempotency: one execution per (tenant, key) within a window, enforced by Postgres.

"The same request" means everything that changes what runs, where, or who must approve: the
plan (targets included), tenant, actor, environment, approval level and points, timeouts,
parallelism, mode, SLA class, tags and metadata — hashed canonically into the request's
*fingerprint* (`request_fingerprint`), so the same plan sent for dev and then for prod are two
requests. Only tracing ids are left out: a retry carries a new one.

The key is the fingerprint itself, or, when the caller supplies its own `idempotency_key`
(Stage D's retry key), a hash of that key; either way every record stores the fingerprint, and
the same caller key with a different fingerprint is refused (`IdempotencyConflict`) inside the
claim's advisory lock: never silently merged with the earlier run.

`claim` records every run of a key in `execution.idempotency_records` (execution_id +
workflow_id included, because the `executions` mirror row is only written later by the
workflow), so the window holds even after Temporal's retention dropped the workflow.

Claim rules, decided inside one SQL function under a per-key advisory lock (so 50 identical
concurrent requests get exactly one new run):

- the latest run inside the window is pending, queued, awaiting approval, running, or finished
  successfully (completed, partial) → `Claim(is_new=False)` naming it: start nothing;
- it failed, was cancelled, timed out or was rejected → a new run, `previous_execution_id`
  linking the prior one;
- no run in the window → a new run (unlinked).

The status is the record's own final status (`record_outcome`) if set, else the live status
of the `executions` mirror row, else `pending`. Run numbers keep growing for a key, so
workflow ids never repeat: `opsc-{tenant}-{key[:32]}` for run 1, `...-r{n}` after.

A claim whose workflow never started (the caller died in between) stays `pending`: a duplicate
then gets `is_new=False` with the deterministic workflow id and should start it with
`id_conflict_policy=USE_EXISTING`, which is harmless if it is already running.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from opsconductor.schema.canonical import canonical_json, sha256_hex

DEFAULT_WINDOW_SECONDS = 86_400.0
CONFLICT_SQLSTATE = "OPC01"  # raised by execution.idempotency_claim_request (migration 005)
RETRYABLE_STATUSES = frozenset({"failed", "cancelled", "timeout", "rejected"})


# Envelope fields that do not change what runs: a retry of the same request may differ here.
NOT_FINGERPRINTED = frozenset({"trace_id", "traceparent", "idempotency_key", "signature"})


class IdempotencyConflict(ValueError):
    """The caller's idempotency key was already used for a different request."""

    def __init__(self, message: str, existing_execution_id: str | None) -> None:
        super().__init__(message)
        self.existing_execution_id = existing_execution_id


def idempotency_key(plan: dict[str, Any], tenant: str, actor: str) -> str:
    """sha256 hex over canonical plan JSON, tenant and actor (unit-separated, unambiguous)."""
    return sha256_hex(f"{canonical_json(plan)}\x1f{tenant}\x1f{actor}")


def request_fingerprint(envelope: dict[str, Any]) -> str:
    """sha256 hex over every envelope field that changes what runs, where or who approves."""
    return sha256_hex(canonical_json(
        {k: v for k, v in envelope.items() if k not in NOT_FINGERPRINTED}))


def caller_key(tenant: str, key: str) -> str:
    """The record key for a caller-supplied idempotency key (never equal to a fingerprint)."""
    return sha256_hex(f"caller\x1f{tenant}\x1f{key}")


def workflow_id_for(tenant: str, key: str, run_number: int = 1) -> str:
    base = f"opsc-{tenant}-{key[:32]}"
    return base if run_number <= 1 else f"{base}-r{run_number}"


@dataclass(frozen=True)
class Claim:
    is_new: bool
    tenant: str
    key: str
    run_number: int
    execution_id: str
    workflow_id: str
    status: str
    previous_execution_id: str | None
    created_at: datetime

    @property
    def existing(self) -> bool:
        return not self.is_new


async def claim(db: asyncpg.Pool | asyncpg.Connection, tenant: str, key: str,
                window_seconds: float = DEFAULT_WINDOW_SECONDS, *,
                execution_id: str | None = None, actor: str | None = None,
                fingerprint: str | None = None, supplied_key: str | None = None) -> Claim:
    """Claim the key: a new run (with a fresh or given execution id) or the existing one.

    With a `fingerprint`, a key last claimed for a different request raises
    `IdempotencyConflict` and writes nothing."""
    new_id = uuid.UUID(execution_id) if execution_id else uuid.uuid4()
    if fingerprint is None:
        row = await db.fetchrow(
            "SELECT * FROM execution.idempotency_claim($1, $2, $3, $4, $5, $6)",
            tenant, key, float(window_seconds), new_id, workflow_id_for(tenant, key, 1), actor)
    else:
        try:
            row = await db.fetchrow(
                "SELECT * FROM execution.idempotency_claim_request"
                "($1, $2, $3, $4, $5, $6, $7, $8)",
                tenant, key, float(window_seconds), new_id, workflow_id_for(tenant, key, 1),
                actor, fingerprint, supplied_key)
        except asyncpg.PostgresError as err:
            if getattr(err, "sqlstate", None) != CONFLICT_SQLSTATE:
                raise
            raise IdempotencyConflict(
                f"{err.args[0] if err.args else err}: send the same request again, or use a "
                f"new idempotency_key for a different one",
                getattr(err, "detail", None)) from None
    assert row is not None
    prev = row["previous_execution_id"]
    return Claim(is_new=row["is_new"], tenant=tenant, key=key, run_number=row["run_number"],
                 execution_id=str(row["execution_id"]), workflow_id=row["workflow_id"],
                 status=row["status"], previous_execution_id=str(prev) if prev else None,
                 created_at=row["created_at"])


async def record_outcome(db: asyncpg.Pool | asyncpg.Connection, tenant: str, key: str,
                         execution_id: str, status: str) -> bool:
    """Store a run's status (final ones decide whether a duplicate may run again)."""
    result = await db.execute(
        "UPDATE execution.idempotency_records SET status = $4, updated_at = now()"
        " WHERE tenant = $1 AND idem_key = $2 AND execution_id = $3",
        tenant, key, uuid.UUID(execution_id), status)
    return result.endswith(" 1")


async def runs(db: asyncpg.Pool | asyncpg.Connection, tenant: str, key: str) -> list[Claim]:
    """Every run of a key, oldest first (for status pages and tests)."""
    rows = await db.fetch(
        "SELECT * FROM execution.idempotency_records WHERE tenant = $1 AND idem_key = $2"
        " ORDER BY run_number", tenant, key)
    return [Claim(is_new=False, tenant=tenant, key=key, run_number=r["run_number"],
                  execution_id=str(r["execution_id"]), workflow_id=r["workflow_id"],
                  status=r["status"],
                  previous_execution_id=(str(r["previous_execution_id"])
                                         if r["previous_execution_id"] else None),
                  created_at=r["created_at"]) for r in rows]
