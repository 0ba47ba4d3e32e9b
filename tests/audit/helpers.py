"""Rows for the audit tests, written the way the product writes them: executions inserted as
the mirror does, events through the mirror's own batch insert, approvals through its upsert,
RBAC decisions through `rbac.audit_many`. Each test uses tenants of its own."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from opsconductor.activities.mirror import write_approvals, write_events
from opsconductor.safety import rbac
from opsconductor.safety.signatures import ssh_keygen
from opsconductor.schema.enums import ApprovalState
from opsconductor.schema.messages import ApprovalRecord, EventRecord


def make_key(folder: Path, name: str) -> Path:
    path = folder / name
    subprocess.run([ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@audit",
                    "-f", str(path)], check=True)
    return path


def tenant() -> str:
    return f"aud-{uuid.uuid4().hex[:8]}"


async def execution(pool: asyncpg.Pool, tenant: str, status: str = "completed",
                    created: datetime | None = None) -> str:
    eid = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor, environment,"
        " status, mode, sla_class, idempotency_key, plan_hash, spec, created_at)"
        " VALUES ($1, $2, $3, 'alice', 'prod', $4, 'background', 'fast', $2, $5, '{}', $6)",
        uuid.UUID(eid), f"opsc-{eid}", tenant, status, "a" * 64, created or datetime.now(UTC))
    return eid


async def add_events(pool: asyncpg.Pool, eid: str, n: int, at: datetime | None = None,
                     prefix: str = "e") -> None:
    await write_events(pool, eid, [EventRecord(key=f"{prefix}:{i}", type="test.event",
                                               message=f"event {i}", data={"i": i}, at=at)
                                   for i in range(n)])


async def add_audit(pool: asyncpg.Pool, tenant: str, n: int, eid: str | None = None) -> None:
    decision = rbac.Decision(True, "allowed by rule t", "t", "v1", ("sre",))
    await rbac.audit_many(pool, [rbac.AuditEntry(decision, tenant, "alice", "execute", "prod",
                                                 f"host-{i}", "shell", eid, f"s{i}")
                                 for i in range(n)])


async def add_approval(pool: asyncpg.Pool, eid: str, decisions: list[dict[str, Any]],
                       at: datetime | None = None, state: str = "pending") -> None:
    now = at or datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        await write_approvals(conn, eid, [ApprovalRecord(
            gate="execution", plan_hash="a" * 64, state=ApprovalState(state),
            required_approvals=1, requested_at=now, decided_at=now if decisions else None,
            decisions=decisions)])


async def chain_rows(pool: asyncpg.Pool, tenant: str, stream: str) -> list[Any]:
    from opsconductor.safety.audit_chain import _ROW_SQL

    return list(await pool.fetch(_ROW_SQL[stream], tenant))


def dump(report: Any) -> str:
    return json.dumps([p.model_dump() for p in report.problems], indent=1)
