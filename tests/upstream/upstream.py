"""OpsConductor's readers, re-stated for the tests: its row models (field names and types of
its `execution/models.py`), the SQL of its repository's readers and of its status route, and
the reads of its orchestrator's execution summary. Nothing of its code is imported."""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, Field


class UpstreamStatus(str, Enum):  # noqa: UP042 - its enum is a str mix-in, as here
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    PARTIAL = "partial"


class UpstreamMode(str, Enum):  # noqa: UP042
    IMMEDIATE = "immediate"
    BACKGROUND = "background"


class UpstreamSla(str, Enum):  # noqa: UP042
    FAST = "fast"
    MEDIUM = "medium"
    LONG = "long"


class UpstreamApprovalState(str, Enum):  # noqa: UP042
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class UpstreamExecution(BaseModel):
    id: int | None = None
    execution_id: UUID
    tenant_id: str
    actor_id: int
    idempotency_key: str
    plan_snapshot: dict[str, Any]
    execution_mode: UpstreamMode
    sla_class: UpstreamSla
    approval_level: int = Field(ge=0, le=3)
    status: UpstreamStatus
    previous_status: UpstreamStatus | None = None
    status_changed_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    timeout_at: datetime | None = None
    result: dict[str, Any] | None = None
    error_message: str | None = None
    error_details: dict[str, Any] | None = None
    trace_id: UUID | None = None
    parent_execution_id: UUID | None = None
    tags: list[str]
    metadata: dict[str, Any]
    updated_at: datetime


class UpstreamStep(BaseModel):
    id: int | None = None
    step_id: UUID
    execution_id: UUID
    step_index: int
    step_name: str
    step_type: str
    target_asset_id: int | None = None
    target_hostname: str | None = None
    status: UpstreamStatus
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    input_data: dict[str, Any] | None = None
    output_data: dict[str, Any] | None = None
    artifacts: dict[str, Any] | None = None
    error_message: str | None = None
    error_details: dict[str, Any] | None = None
    retry_count: int = 0
    max_retries: int = 3
    trace_id: UUID | None = None
    logs: str | None = None
    created_at: datetime
    updated_at: datetime


class UpstreamApproval(BaseModel):
    id: int | None = None
    approval_id: UUID
    execution_id: UUID
    approval_level: int = Field(ge=1, le=3)
    plan_hash: str
    approver_id: int | None = None
    approver_comment: str | None = None
    state: UpstreamApprovalState
    requested_at: datetime
    expires_at: datetime | None = None
    responded_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class UpstreamEvent(BaseModel):
    id: int | None = None
    event_id: UUID
    execution_id: UUID
    event_type: str
    from_status: UpstreamStatus | None = None
    to_status: UpstreamStatus | None = None
    actor_id: int | None = None
    actor_type: str | None = None
    details: dict[str, Any] | None = None
    error_message: str | None = None
    created_at: datetime
    trace_id: UUID | None = None


# Its repository's readers and its status route, placeholders in asyncpg's spelling.
EXECUTION_BY_ID = "SELECT * FROM execution.executions WHERE execution_id = $1"
STEPS = ("SELECT * FROM execution.execution_steps WHERE execution_id = $1 "
         "ORDER BY step_index ASC")
EVENTS = ("SELECT * FROM execution.execution_events WHERE execution_id = $1 "
          "ORDER BY created_at ASC")
APPROVAL = "SELECT * FROM execution.approvals WHERE execution_id = $1"
STATUS_ROUTE = ("SELECT status, started_at, completed_at, error_message "
                "FROM execution.executions WHERE execution_id = $1")


async def reader(url: str) -> asyncpg.Connection:
    """A connection that hands rows over as its psycopg2 RealDictCursor does: json and jsonb
    decoded, uuid as text."""
    conn = await asyncpg.connect(url)
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads,
                                  schema="pg_catalog")
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog",
                              format="text")
    return conn


async def rows(conn: asyncpg.Connection, sql: str, execution_id: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(sql, str(execution_id))]


def summary(response: Any) -> str:
    """What its orchestrator renders from a completed Stage E response: each completed
    step's stdout (first 100,000 characters), else its output (asset count and CSV rows, or
    JSON), and its stderr."""
    if response.status != UpstreamStatus.COMPLETED:
        return f"failed: {response.error_message}"
    results = response.step_results or (response.result or {}).get("step_results") or []
    text = ""
    for item in results:
        if item.get("status") in ("completed", "success"):
            if item.get("stdout"):
                text += "```text\n" + item["stdout"].strip()[:100_000] + "\n```\n"
            elif item.get("output"):
                out = item["output"]
                if isinstance(out, dict) and "assets" in out and "count" in out:
                    text += f"**Found {out.get('count', 0)} asset(s)**\n"
                    for asset in out.get("assets", []):
                        text += (f'"{asset.get("hostname", "Unknown")}",'
                                 f'"{asset.get("ip_address", "N/A")}"\n')
                else:
                    text += json.dumps(out, indent=2)[:10_000] + "\n"
        if item.get("stderr"):
            text += "stderr:\n" + item["stderr"].strip() + "\n"
    return text.strip() or "Execution completed."
