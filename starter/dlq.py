"""The dead-letter queue: executions that failed for good, and their requeue.

A run that ends failed or timed out leaves one entry per failed step (the mirror writes it
in the same transaction as the final status). Requeue starts the same plan again as a new
run linked to the old one; the entry records who did it and the new execution.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from opsconductor.safety import rbac
from opsconductor.starter.client import (
    ExecutionClient,
    ExecutionNotFound,
    ExecutionResponse,
    SubmissionRefused,
)


async def list_dlq(client: ExecutionClient, include_all: bool = False) -> list[dict[str, Any]]:
    rows = await client.pool.fetch(
        """
        SELECT id, execution_id::text, workflow_id, step_id, reason, error_type, status,
               created_at, requeued_at, requeued_by, requeued_execution_id::text
        FROM execution.execution_dlq WHERE $1 OR status = 'open' ORDER BY id
        """, include_all)
    return [dict(r) for r in rows]


async def requeue(client: ExecutionClient, entry_id: int, actor: str) -> ExecutionResponse:
    row = await client.pool.fetchrow(
        "SELECT d.status, d.execution_id, e.spec FROM execution.execution_dlq d "
        "JOIN execution.executions e USING (execution_id) WHERE d.id = $1", entry_id)
    if row is None:
        raise ExecutionNotFound(f"no DLQ entry {entry_id}")
    if row["status"] != "open":  # it exists: a refusal (exit 1), not "not found"
        raise SubmissionRefused(f"DLQ entry {entry_id} is already {row['status']}")
    spec = json.loads(row["spec"])
    request = spec["request"]
    decision = await rbac.check(client.pool, tenant=spec["tenant"], actor=actor,
                                action="requeue", environment=spec["environment"],
                                execution_id=str(row["execution_id"]))
    if not decision.allowed:
        raise SubmissionRefused(f"denied: {actor} may not requeue executions of "
                                f"{spec['tenant']} in {spec['environment']}: {decision.reason}")
    response = await client.execute(request, wait=False)
    await client.pool.execute(
        "UPDATE execution.execution_dlq SET status = 'requeued', requeued_at = now(), "
        "requeued_by = $2, requeued_execution_id = $3 WHERE execution_id = $1 "
        "AND status = 'open'", row["execution_id"], actor, uuid.UUID(response.execution_id))
    return response
