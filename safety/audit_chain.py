"""The tamper-evident audit: verify, export and sign checkpoints of the hash chains that
migration 013 writes (one per tenant and stream: `audit` = RBAC audit rows and approvals,
`events` = execution events; docs/audit.md says why).

Each row carries `seq`, `prev_hash` and `row_hash`; PostgreSQL recomputes a row's hash from
its current content (`execution.audit_content`), so `verify` finds an edited row (its content
no longer gives its hash), a deleted one (a seq with neither row nor gap), a reordered one (it
links to a row that is not its predecessor) and a truncated tail (the head or a signed
checkpoint names a seq past the last row). A checkpoint is an SSH signature over the
canonical decision message of `safety/signatures.py` (principal `opsconductor-audit`), whose
plan hash binds the chain, seq, hash and the gap records it covers.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

from opsconductor.safety.signatures import (
    AllowedSigner,
    SignatureError,
    SigningRules,
    new_nonce,
    parse_allowed_signers,
    public_key_of,
    sign_message,
    verify_decision,
)
from opsconductor.schema.canonical import canonical_json, sha256_hex
from opsconductor.schema.decisions import DecisionMessage, SignatureCheck, canonical_time

GENESIS = "0" * 64
STREAMS = ("audit", "events")
AUDIT_PRINCIPAL = "opsconductor-audit"
Stream = Literal["audit", "events"]
CheckpointKind = Literal["manual", "prune", "scheduled"]
FINAL_STATUSES = ("completed", "failed", "cancelled", "timeout", "partial", "rejected")

# Per stream: the tables in it and how each is read with its tenant.
_ROW_SQL = {
    "audit": """
SELECT 'rbac_audit' AS tbl, a.id, a.seq, a.prev_hash, a.row_hash,
       execution.audit_hash(a.prev_hash, execution.audit_content(a)) AS recomputed
  FROM execution.rbac_audit a WHERE a.tenant = $1 AND a.seq IS NOT NULL
UNION ALL
SELECT 'approvals', p.id, p.seq, p.prev_hash, p.row_hash,
       execution.audit_hash(p.prev_hash, execution.audit_content(p))
  FROM execution.approvals p JOIN execution.executions e USING (execution_id)
 WHERE e.tenant = $1 AND p.seq IS NOT NULL
ORDER BY seq, tbl, id""",
    "events": """
SELECT 'execution_events' AS tbl, v.id, v.seq, v.prev_hash, v.row_hash,
       execution.audit_hash(v.prev_hash, execution.audit_content(v)) AS recomputed
  FROM execution.event_log v JOIN execution.executions e USING (execution_id)
 WHERE e.tenant = $1 AND v.seq IS NOT NULL
ORDER BY seq, id""",
}


class AuditError(RuntimeError):
    """A checkpoint cannot be signed (no key) or a request is malformed; says which."""


class Problem(BaseModel):
    """One finding of `verify`: what is wrong, where, in words."""

    kind: Literal["edited", "deleted", "reordered", "truncated", "checkpoint", "gap"]
    tenant: str
    stream: str
    seq: int | None = None
    table: str | None = None
    row_id: int | None = None
    message: str


class ChainReport(BaseModel):
    tenant: str
    stream: str
    rows: int
    gaps: int
    checkpoints: int
    head_seq: int
    problems: list[Problem]


class VerifyReport(BaseModel):
    chains: list[ChainReport]
    checkpoints_checked: bool

    @property
    def problems(self) -> list[Problem]:
        return [p for c in self.chains for p in c.problems]

    @property
    def ok(self) -> bool:
        return not self.problems


class Row(BaseModel):
    table: str
    id: int
    seq: int
    prev_hash: str | None
    row_hash: str | None
    recomputed: str | None

    def where(self) -> str:
        return f"{self.table} id {self.id} (seq {self.seq})"


class Gap(BaseModel):
    id: int
    from_seq: int
    to_seq: int
    prev_hash: str
    last_hash: str
    reason: str
    ref: str


class Checkpoint(BaseModel):
    id: int
    tenant: str
    stream: str
    seq: int
    hash: str
    gaps_through: int
    gaps_digest: str
    kind: str
    message: str
    signature: str
    key_fingerprint: str
    created_at: datetime


# ------------------------------------------------------------------------------ checkpoints

def gaps_digest(gaps: Sequence[Gap]) -> str:
    """What a checkpoint binds of the gap records: each one's range, hashes and reason."""
    lines = "".join(f"{g.id},{g.from_seq},{g.to_seq},{g.prev_hash},{g.last_hash},{g.reason}\n"
                    for g in sorted(gaps, key=lambda g: g.id))
    return sha256_hex(lines)


def checkpoint_message(*, tenant: str, stream: str, seq: int, hash_: str, gaps_through: int,
                       digest: str, kind: str, issued_at: datetime,
                       nonce: str) -> DecisionMessage:
    """The decision message a checkpoint signs: the chain in `gate`, the rest hashed into
    `plan_hash`, so the signature binds every field."""
    body = canonical_json({"tenant": tenant, "stream": stream, "seq": seq, "hash": hash_,
                           "gaps_through": gaps_through, "gaps_digest": digest,
                           "kind": kind})
    return DecisionMessage(execution_id="opsconductor-audit", gate=f"{stream}:{tenant}",
                           decision="checkpoint", plan_hash=sha256_hex(body),
                           principal=AUDIT_PRINCIPAL, issued_at=issued_at, nonce=nonce,
                           comment=body)


async def _gaps(conn: asyncpg.Connection, tenant: str, stream: str) -> list[Gap]:
    rows = await conn.fetch(
        "SELECT id, from_seq, to_seq, prev_hash, last_hash, reason, ref FROM execution.audit_gaps"
        " WHERE tenant = $1 AND stream = $2 ORDER BY from_seq, id", tenant, stream)
    return [Gap(**dict(r)) for r in rows]


async def write_checkpoint(conn: asyncpg.Connection, tenant: str, stream: str,
                           kind: CheckpointKind, key: Path) -> Checkpoint:
    """Sign and store a checkpoint of one chain at its head. Call inside a transaction: the
    head stays locked until commit, so no link or gap can slip in between reading and
    signing."""
    await conn.execute("SELECT execution.audit_lock_head($1, $2)", tenant, stream)
    head = await conn.fetchrow("SELECT seq, hash FROM execution.audit_chain_heads"
                               " WHERE tenant = $1 AND stream = $2", tenant, stream)
    gaps = await _gaps(conn, tenant, stream)
    through = max((g.id for g in gaps), default=0)
    digest = gaps_digest(gaps)
    message = checkpoint_message(tenant=tenant, stream=stream, seq=head["seq"],
                                 hash_=head["hash"], gaps_through=through, digest=digest,
                                 kind=kind, issued_at=datetime.now(UTC), nonce=new_nonce())
    try:
        signature = await sign_message(message, key)
    except SignatureError as err:
        raise AuditError(f"cannot sign the checkpoint of {stream}:{tenant}: {err}") from None
    fingerprint = (await public_key_of(key)).fingerprint
    row = await conn.fetchrow(
        "INSERT INTO execution.audit_checkpoints (tenant, stream, seq, hash, gaps_through,"
        " gaps_digest, kind, message, signature, key_fingerprint, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
        tenant, stream, head["seq"], head["hash"], through, digest, kind,
        message.model_dump_json(), signature, fingerprint, message.issued_at)
    return Checkpoint(**dict(row))


async def chains(conn: asyncpg.Connection | asyncpg.Pool,
                 tenant: str | None = None) -> list[tuple[str, str]]:
    """Every (tenant, stream) with a head, optionally one tenant's."""
    rows = await conn.fetch("SELECT tenant, stream FROM execution.audit_chain_heads"
                            " WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, stream",
                            tenant)
    return [(r["tenant"], r["stream"]) for r in rows]


async def checkpoint_all(pool: asyncpg.Pool, key: Path, kind: CheckpointKind = "manual",
                         tenant: str | None = None) -> list[Checkpoint]:
    """A checkpoint of every chain (or one tenant's), each in its own transaction."""
    out = []
    for t, s in await chains(pool, tenant):
        async with pool.acquire() as conn, conn.transaction():
            out.append(await write_checkpoint(conn, t, s, kind, key))
    return out


async def trusted_audit_keys(signing_key: Path | None,
                             trusted_file: Path | None) -> list[AllowedSigner]:
    """Who may sign checkpoints: the `allowed_signers` lines of the trusted-keys file (for
    verifiers without the private key), else the public half of the signing key."""
    if trusted_file is not None:
        try:
            text = await asyncio.to_thread(trusted_file.read_text)
        except OSError as err:
            raise AuditError(f"cannot read audit trusted keys {trusted_file}: "
                             f"{err.strerror}") from None
        try:
            signers = parse_allowed_signers(text, str(trusted_file))
        except SignatureError as err:
            raise AuditError(str(err)) from None
        return [s for s in signers if AUDIT_PRINCIPAL in s.principals]
    if signing_key is not None:
        try:
            key = await public_key_of(signing_key)
        except SignatureError as err:
            raise AuditError(str(err)) from None
        return [AllowedSigner(principals=(AUDIT_PRINCIPAL,), key_type=key.key_type,
                              key_data=key.key_data)]
    return []


async def check_checkpoint(cp: Checkpoint, trusted: Sequence[AllowedSigner]) -> str | None:
    """None when the checkpoint's signature verifies over its own fields; else why not."""
    try:
        signed = DecisionMessage.model_validate_json(cp.message)
    except ValueError:
        return "its signed message is unreadable"
    expected = checkpoint_message(tenant=cp.tenant, stream=cp.stream, seq=cp.seq, hash_=cp.hash,
                                  gaps_through=cp.gaps_through, digest=cp.gaps_digest,
                                  kind=cp.kind, issued_at=signed.issued_at, nonce=signed.nonce)
    if expected != signed:
        return "its fields differ from the message that was signed"
    verdict = await verify_decision(
        SignatureCheck(message=expected, signature=cp.signature, received_at=signed.issued_at),
        trusted, SigningRules(required=True, max_age_seconds=1e12, max_skew_seconds=1e12))
    return None if verdict.accepted else verdict.reason


# ------------------------------------------------------------------------------ verify

def walk(tenant: str, stream: str, rows: Sequence[Row], gaps: Sequence[Gap],
         head_seq: int) -> list[Problem]:
    """The links, in seq order: every row's content gives its hash, every row links to its
    predecessor (or a gap bridges to it), seq counts up by one, and the head is reached."""
    problems: list[Problem] = []
    gap_at = {g.from_seq: g for g in gaps}
    gap_end = {g.to_seq: g for g in gaps}
    hash_seq = {r.row_hash: r.seq for r in rows if r.row_hash}
    expected_prev, expected_seq = GENESIS, 1

    def problem(kind: Any, row: Row | None, message: str) -> None:
        problems.append(Problem(kind=kind, tenant=tenant, stream=stream,
                                seq=row.seq if row else None, table=row.table if row else None,
                                row_id=row.id if row else None, message=message))

    def deleted(row: Row, first: int, why: str) -> None:
        end = row.seq - 1  # gaps recorded just before the row are not part of the hole
        while end in gap_end and gap_end[end].from_seq > first:
            end = gap_end[end].from_seq - 1
        span = f"seq {first}" if end <= first else f"seq {first}..{end}"
        problems.append(Problem(kind="deleted", tenant=tenant, stream=stream, seq=first,
                                table=row.table, row_id=row.id,
                                message=f"the row at {span} was deleted (before "
                                        f"{row.where()}: {why})"))

    def bridge(until: int | None) -> None:
        nonlocal expected_prev, expected_seq
        while (until is None or expected_seq < until) and expected_seq in gap_at:
            g = gap_at[expected_seq]
            if g.prev_hash != expected_prev:
                break
            expected_prev, expected_seq = g.last_hash, g.to_seq + 1

    for row in rows:
        if row.recomputed is None or row.recomputed != row.row_hash:
            problem("edited", row, f"{row.where()} was edited: its content no longer gives "
                                   "its recorded hash")
        else:
            bridge(row.seq)
            if row.seq < expected_seq:
                problem("reordered", row, f"{row.where()} repeats a seq already in the chain")
            elif row.prev_hash != expected_prev:
                before = hash_seq.get(row.prev_hash or "")
                if before is not None and before != expected_seq - 1:
                    problem("reordered", row, f"{row.where()} is out of order: it links to the "
                                              f"row recorded at seq {before}, not to seq "
                                              f"{row.seq - 1}")
                else:
                    deleted(row, expected_seq, "its predecessor's hash is not in the chain")
            elif row.seq > expected_seq:
                deleted(row, expected_seq, "no row and no gap record")
            elif row.seq != expected_seq:
                problem("reordered", row, f"{row.where()}: seq does not follow {expected_seq - 1}")
        expected_prev = row.row_hash or ""
        expected_seq = row.seq + 1
    bridge(None)
    if head_seq >= expected_seq:
        problems.append(Problem(
            kind="truncated", tenant=tenant, stream=stream, seq=expected_seq,
            message=f"the tail is missing: the chain head records seq {head_seq}, the last "
                    f"row is seq {expected_seq - 1}"))
    return problems


async def verify_chain(conn: asyncpg.Connection, tenant: str, stream: str,
                       trusted: Sequence[AllowedSigner] | None,
                       all_signatures: bool = False) -> ChainReport:
    """One chain: its rows, gaps, head and checkpoints, every problem named. Signatures are
    checked newest first until one is valid: that checkpoint binds the hash at its seq (so
    every earlier row) and every gap record before it, so older ones need no ssh-keygen run
    (`all_signatures` checks each anyway)."""
    rows = [Row(table=r["tbl"], id=r["id"], seq=r["seq"], prev_hash=r["prev_hash"],
                row_hash=r["row_hash"], recomputed=r["recomputed"])
            for r in await conn.fetch(_ROW_SQL[stream], tenant)]
    gaps = await _gaps(conn, tenant, stream)
    head = await conn.fetchval("SELECT seq FROM execution.audit_chain_heads"
                               " WHERE tenant = $1 AND stream = $2", tenant, stream) or 0
    problems = walk(tenant, stream, rows, gaps, head)
    cps = [Checkpoint(**dict(r)) for r in await conn.fetch(
        "SELECT * FROM execution.audit_checkpoints WHERE tenant = $1 AND stream = $2"
        " ORDER BY id", tenant, stream)]
    last_seq = rows[-1].seq if rows else 0
    by_seq = {r.seq: r for r in rows}
    covered = 0
    vouched = False  # a newer checkpoint's valid signature already covers the older ones
    for cp in reversed(cps):
        def found(message: str, kind: Any = "checkpoint", seq: int | None = None,
                  cp: Checkpoint = cp) -> None:
            problems.append(Problem(kind=kind, tenant=tenant, stream=stream,
                                    seq=cp.seq if seq is None else seq,
                                    message=f"checkpoint {cp.id} ({cp.kind}, "
                                            f"{canonical_time(cp.created_at)}): {message}"))
        if trusted is not None and (all_signatures or not vouched):
            why = await check_checkpoint(cp, trusted)
            if why is not None:
                found(f"its signature is not valid: {why}")
                continue
            vouched = True
        if gaps_digest([g for g in gaps if g.id <= cp.gaps_through]) != cp.gaps_digest:
            found("the gap records it signed were changed, added or removed")
        elif trusted is None or vouched:
            covered = max(covered, cp.gaps_through)
        row = by_seq.get(cp.seq)
        ended = next((g for g in gaps if g.to_seq == cp.seq), None)
        if cp.seq > max(last_seq, max((g.to_seq for g in gaps), default=0)):
            found(f"it signed seq {cp.seq}, but the chain ends at seq {last_seq}: the tail "
                  f"after seq {last_seq} was truncated", "truncated", last_seq + 1)
        elif row is not None and row.row_hash != cp.hash:
            found(f"{row.where()} no longer has the hash it had when signed: the chain was "
                  "rewritten", "edited")
        elif row is None and ended is not None and ended.last_hash != cp.hash:
            found(f"the gap ending at seq {cp.seq} does not end with the signed hash")
    for g in gaps:
        if g.reason == "pruned" and g.id > covered:
            problems.append(Problem(
                kind="gap", tenant=tenant, stream=stream, seq=g.from_seq,
                message=f"gap seq {g.from_seq}..{g.to_seq} (pruned) is covered by no signed "
                        "checkpoint"))
    problems.sort(key=lambda p: (p.seq if p.seq is not None else 1 << 62))
    return ChainReport(tenant=tenant, stream=stream, rows=len(rows), gaps=len(gaps),
                       checkpoints=len(cps), head_seq=head, problems=problems)


async def verify(pool: asyncpg.Pool, *, tenant: str | None = None,
                 trusted: Sequence[AllowedSigner] | None = None,
                 all_signatures: bool = False) -> VerifyReport:
    """Every chain (or one tenant's). `trusted` None: checkpoint signatures are not checked
    (the report says so); an empty list: every checkpoint is refused."""
    reports = []
    for t, s in await chains(pool, tenant):
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                            readonly=True):
            reports.append(await verify_chain(conn, t, s, trusted, all_signatures))
    return VerifyReport(chains=reports, checkpoints_checked=trusted is not None)


# ------------------------------------------------------------------------------ export

_EXPORT_SQL = """
SELECT * FROM (
  SELECT a.tenant, 'audit' AS stream, 'rbac_audit' AS tbl, a.id, a.seq, a.prev_hash,
         a.row_hash, a.at AS t, execution.audit_content(a) AS content
    FROM execution.rbac_audit a WHERE a.seq IS NOT NULL
  UNION ALL
  SELECT e.tenant, 'audit', 'approvals', p.id, p.seq, p.prev_hash, p.row_hash,
         coalesce(p.decided_at, p.requested_at), execution.audit_content(p)
    FROM execution.approvals p JOIN execution.executions e USING (execution_id)
   WHERE p.seq IS NOT NULL
  UNION ALL
  SELECT e.tenant, 'events', 'execution_events', v.id, v.seq, v.prev_hash, v.row_hash,
         v.created_at, execution.audit_content(v)
    FROM execution.event_log v JOIN execution.executions e USING (execution_id)
   WHERE v.seq IS NOT NULL) x
 WHERE ($1::text IS NULL OR tenant = $1) AND ($2::timestamptz IS NULL OR t >= $2)
   AND ($3::timestamptz IS NULL OR t < $3)
 ORDER BY tenant, stream, seq"""


async def export(pool: asyncpg.Pool, *, tenant: str | None = None,
                 since: datetime | None = None,
                 until: datetime | None = None) -> AsyncIterator[dict[str, Any]]:
    """The chained rows as JSON objects (one per line in `audit export`), with the exact
    content text their hash covers: an auditor recomputes
    sha256(prev_hash + "\\n" + content) without our code."""
    import json

    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        async for r in conn.cursor(_EXPORT_SQL, tenant, since, until):
            yield {"tenant": r["tenant"], "stream": r["stream"], "table": r["tbl"],
                   "id": r["id"], "seq": r["seq"], "prev_hash": r["prev_hash"],
                   "row_hash": r["row_hash"], "at": canonical_iso(r["t"]),
                   "content": r["content"], "row": json.loads(r["content"])}


def canonical_iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def row_hash(prev_hash: str, content: str) -> str:
    """The chain's hash, as PostgreSQL computes it (for exported rows)."""
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()
