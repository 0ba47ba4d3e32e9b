"""Retention: `opsconductor prune` deletes step outputs, execution events and audit rows older
than the policy's ages, never a row of an execution still in flight or with an open DLQ entry.

Chained rows (events; RBAC audit and approvals) go in ranges of consecutive seqs: each range
leaves a gap record (the hash before it and its last hash) so the chain still links across
it, and the prune ends with a signed checkpoint covering those gaps, all in one transaction
that holds the chain's head. A chain that does not verify is not pruned (that would destroy
the evidence); the report says so.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from pydantic import BaseModel, Field

from opsconductor.safety.audit_chain import (
    FINAL_STATUSES,
    AuditError,
    CheckpointKind,
    chains,
    verify_chain,
    write_checkpoint,
)

PRUNE_LOCK = 7_423_013  # advisory lock: one prune at a time

_KEEP = f"""(e.status::text NOT IN ({", ".join(repr(s) for s in FINAL_STATUSES)})
  OR EXISTS (SELECT 1 FROM execution.execution_dlq d
              WHERE d.execution_id = e.execution_id AND d.status = 'open'))"""

# A chain's table label (the name its links' content was hashed under) -> the table that
# holds its rows now (017 renamed execution_events; the label stays, the hashes depend on it).
_TABLE_OF = {"execution_events": "event_log"}

# Per stream: every present row of one tenant's chain, in seq order, with whether it is old
# and whether its execution must keep it.
_CANDIDATES = {
    "events": f"""
SELECT 'execution_events' AS tbl, v.id, v.seq, v.prev_hash, v.row_hash,
       v.created_at < $2 AS old, {_KEEP} AS keep
  FROM execution.event_log v JOIN execution.executions e USING (execution_id)
 WHERE e.tenant = $1 AND v.seq IS NOT NULL ORDER BY v.seq""",
    "audit": f"""
SELECT * FROM (
  SELECT 'rbac_audit' AS tbl, a.id, a.seq, a.prev_hash, a.row_hash, a.at < $2 AS old,
         coalesce(e.execution_id IS NOT NULL AND {_KEEP}, false) AS keep
    FROM execution.rbac_audit a LEFT JOIN execution.executions e
      ON e.execution_id::text = a.execution_id
   WHERE a.tenant = $1 AND a.seq IS NOT NULL
  UNION ALL
  SELECT 'approvals', p.id, p.seq, p.prev_hash, p.row_hash,
         coalesce(p.decided_at, p.requested_at) < $2, {_KEEP}
    FROM execution.approvals p JOIN execution.executions e USING (execution_id)
   WHERE e.tenant = $1 AND p.seq IS NOT NULL) x ORDER BY seq""",
}


class RetentionPolicy(BaseModel):
    """Ages in days; None keeps that kind forever."""

    outputs_days: float | None = Field(None, gt=0)
    events_days: float | None = Field(None, gt=0)
    audit_days: float | None = Field(None, gt=0)


class ChainPrune(BaseModel):
    tenant: str
    stream: str
    deleted: dict[str, int] = Field(default_factory=dict)
    ranges: int = 0
    kept_dlq_or_running: int = 0
    checkpoint_id: int | None = None
    refused: str | None = None


class PruneReport(BaseModel):
    dry_run: bool
    cutoffs: dict[str, str | None]
    outputs: int = 0
    output_chunks: int = 0
    chains: list[ChainPrune] = Field(default_factory=list)
    checkpoints: list[int] = Field(default_factory=list)

    def total(self, table: str) -> int:
        return sum(c.deleted.get(table, 0) for c in self.chains)


def _ranges(seqs: list[tuple[int, bool]]) -> list[tuple[int, int]]:
    """Runs of consecutive seqs that may all go; a kept row or an earlier gap splits them."""
    out: list[tuple[int, int]] = []
    start: int | None = None
    prev = 0
    for seq, ok in seqs:
        if start is not None and (not ok or seq != prev + 1):
            out.append((start, prev))
            start = None
        if ok and start is None:
            start = seq
        prev = seq
    if start is not None:
        out.append((start, prev))
    return out


async def _prune_chain(conn: asyncpg.Connection, tenant: str, stream: str, cutoff: datetime,
                       dry_run: bool, key: Path | None) -> ChainPrune:
    result = ChainPrune(tenant=tenant, stream=stream)
    await conn.execute("SELECT execution.audit_lock_head($1, $2)", tenant, stream)
    rows = await conn.fetch(_CANDIDATES[stream], tenant, cutoff)
    result.kept_dlq_or_running = sum(1 for r in rows if r["old"] and r["keep"])
    ranges = _ranges([(r["seq"], bool(r["old"] and not r["keep"])) for r in rows])
    by_seq = {r["seq"]: r for r in rows}
    doomed = [s for a, b in ranges for s in range(a, b + 1)]
    for s in doomed:
        result.deleted[by_seq[s]["tbl"]] = result.deleted.get(by_seq[s]["tbl"], 0) + 1
    result.ranges = len(ranges)
    if dry_run or not ranges:
        return result
    assert key is not None  # prune() refuses before anything is deleted
    report = await verify_chain(conn, tenant, stream, None)
    if report.problems:
        result.refused = f"the chain does not verify ({report.problems[0].message}): not pruned"
        result.deleted = {}
        return result
    await conn.executemany(
        "INSERT INTO execution.audit_gaps (tenant, stream, from_seq, to_seq, prev_hash,"
        " last_hash, reason, ref) VALUES ($1, $2, $3, $4, $5, $6, 'pruned', $7)",
        [(tenant, stream, a, b, by_seq[a]["prev_hash"], by_seq[b]["row_hash"],
          f"cutoff {cutoff.isoformat()}") for a, b in ranges])
    for table in sorted(result.deleted):
        ids = [by_seq[s]["id"] for s in doomed if by_seq[s]["tbl"] == table]
        gone = await conn.fetchval(
            f"WITH d AS (DELETE FROM execution.{_TABLE_OF.get(table, table)}"
            f" WHERE id = ANY($1::bigint[])"
            f" RETURNING 1) SELECT count(*) FROM d", ids)
        if gone != len(ids):
            raise AuditError(f"{table}: {gone} of {len(ids)} rows deleted; prune rolled back")
    result.checkpoint_id = (await write_checkpoint(conn, tenant, stream, "prune", key)).id
    return result


def _cutoff(now: datetime, days: float | None) -> datetime | None:
    return None if days is None else now - timedelta(days=days)


async def prune(pool: asyncpg.Pool, policy: RetentionPolicy, *, key: Path | None,
                dry_run: bool = False, now: datetime | None = None,
                tenant: str | None = None) -> PruneReport:
    """Apply the policy once (or only count, `dry_run`); one prune at a time cluster-wide."""
    now = now or datetime.now(UTC)
    cut = {"outputs": _cutoff(now, policy.outputs_days),
           "events": _cutoff(now, policy.events_days),
           "audit": _cutoff(now, policy.audit_days)}
    if not dry_run and key is None and (cut["events"] or cut["audit"]):
        raise AuditError("pruning events or audit rows writes a signed checkpoint: set "
                         "OPSC_AUDIT_SIGNING_KEY (or pass --key); nothing was pruned")
    report = PruneReport(dry_run=dry_run, cutoffs={k: v.isoformat() if v else None
                                                   for k, v in cut.items()})
    async with pool.acquire() as lock_conn:
        if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK):
            raise AuditError("another prune is running")
        try:
            if cut["outputs"] is not None:
                report.outputs, report.output_chunks = await _prune_outputs(
                    pool, cut["outputs"], dry_run, tenant)
            for t, stream in await chains(pool, tenant):
                cutoff = cut[stream]
                if cutoff is None:
                    continue
                async with pool.acquire() as conn, conn.transaction():
                    res = await _prune_chain(conn, t, stream, cutoff, dry_run, key)
                report.chains.append(res)
                if res.checkpoint_id is not None:
                    report.checkpoints.append(res.checkpoint_id)
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK)
    return report


async def _prune_outputs(pool: asyncpg.Pool, cutoff: datetime, dry_run: bool,
                         tenant: str | None) -> tuple[int, int]:
    counts = []
    for table in ("step_outputs", "step_output_chunks"):
        where = (f"FROM execution.{table} o JOIN execution.executions e USING (execution_id)"
                 f" WHERE o.created_at < $1 AND NOT {_KEEP}"
                 " AND ($2::text IS NULL OR e.tenant = $2)")
        if dry_run:
            counts.append(await pool.fetchval(f"SELECT count(*) {where}", cutoff, tenant))
        else:
            counts.append(await pool.fetchval(
                f"WITH d AS (DELETE FROM execution.{table} x USING (SELECT o.ctid AS c"
                f" {where}) k WHERE x.ctid = k.c RETURNING 1) SELECT count(*) FROM d",
                cutoff, tenant))
    return counts[0], counts[1]


async def _moved(pool: asyncpg.Pool, tenant: str, stream: str) -> bool:
    """Whether the chain grew (a link or a gap) since its last checkpoint: a quiet chain
    gets no new checkpoint each round."""
    return bool(await pool.fetchval(
        "SELECT NOT EXISTS (SELECT 1 FROM execution.audit_checkpoints c"
        "  JOIN execution.audit_chain_heads h USING (tenant, stream)"
        "  WHERE c.tenant = $1 AND c.stream = $2 AND c.seq = h.seq AND c.hash = h.hash"
        "    AND c.gaps_through = (SELECT coalesce(max(id), 0) FROM execution.audit_gaps g"
        "                           WHERE g.tenant = $1 AND g.stream = $2))", tenant, stream))


async def run_scheduled(pool: asyncpg.Pool, policy: RetentionPolicy, *, key: Path,
                        every_seconds: float, rounds: int | None = None,
                        kind: CheckpointKind = "scheduled",
                        tenant: str | None = None) -> list[PruneReport]:
    """The scheduled prune: prune, then checkpoint every chain that grew since its last
    checkpoint (so a truncated tail is caught however quiet a tenant is), every
    `every_seconds`; `rounds` None runs until cancelled."""
    done: list[PruneReport] = []
    while rounds is None or len(done) < rounds:
        report = await prune(pool, policy, key=key, tenant=tenant)
        pruned = {(c.tenant, c.stream) for c in report.chains if c.checkpoint_id}
        for t, s in await chains(pool, tenant):
            if (t, s) not in pruned and await _moved(pool, t, s):
                async with pool.acquire() as conn, conn.transaction():
                    report.checkpoints.append(
                        (await write_checkpoint(conn, t, s, kind, key)).id)
        done.append(report)
        if rounds is None or len(done) < rounds:
            await asyncio.sleep(every_seconds)
    return done
