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
from opsconductor.schema.spec import CarriedStep
from opsconductor.starter.client import (
    ExecutionClient,
    ExecutionNotFound,
    ExecutionResponse,
    SubmissionRefused,
)


async def list_dlq(client: ExecutionClient, include_all: bool = False,
                   tenant: str | None = None) -> list[dict[str, Any]]:
    rows = await client.pool.fetch(
        """
        SELECT d.id, d.execution_id::text, d.workflow_id, e.tenant, d.step_id, d.reason,
               d.error_type, d.status, d.created_at, d.requeued_at, d.requeued_by,
               d.requeued_execution_id::text
        FROM execution.execution_dlq d JOIN execution.executions e USING (execution_id)
        WHERE ($1 OR d.status = 'open') AND ($2::text IS NULL OR e.tenant = $2) ORDER BY d.id
        """, include_all, tenant)
    return [dict(r) for r in rows]


async def _open_entry(client: ExecutionClient, entry_id: int, actor: str,
                      what: str) -> Any:
    """The open entry `actor` may act on (the `requeue` permission in its execution's tenant
    and environment); a missing one is "not found", a closed or denied one a refusal."""
    row = await client.pool.fetchrow(
        "SELECT d.status, d.execution_id, e.tenant, e.environment::text AS environment, e.spec"
        " FROM execution.execution_dlq d JOIN execution.executions e USING (execution_id)"
        " WHERE d.id = $1", entry_id)
    if row is None:
        raise ExecutionNotFound(f"no DLQ entry {entry_id}")
    if row["status"] != "open":  # it exists: a refusal (exit 1), not "not found"
        raise SubmissionRefused(f"DLQ entry {entry_id} is already {row['status']}")
    decision = await rbac.check(client.pool, tenant=row["tenant"], actor=actor,
                                action="requeue", environment=row["environment"],
                                execution_id=str(row["execution_id"]))
    if not decision.allowed:
        raise SubmissionRefused(f"denied: {actor} may not {what} of {row['tenant']} in "
                                f"{row['environment']}: {decision.reason}")
    return row


async def discard(client: ExecutionClient, entry_id: int, actor: str) -> int:
    """Close an open entry (and the other open entries of its execution) without running it
    again; the operator needs the `requeue` permission. Returns how many entries closed."""
    row = await _open_entry(client, entry_id, actor, "discard DLQ entries")
    closed = await client.pool.execute(
        "UPDATE execution.execution_dlq SET status = 'discarded', requeued_at = now(), "
        "requeued_by = $2 WHERE execution_id = $1 AND status = 'open'",
        row["execution_id"], actor)
    return int(closed.split()[-1])


async def requeue(client: ExecutionClient, entry_id: int, actor: str, *,
                  from_failed: bool = False) -> ExecutionResponse:
    """Run the entry's plan again as a new run linked to the failed one; `from_failed`
    resumes at the failed step: the steps the failed run completed are not run again, their
    results are taken over."""
    row = await _open_entry(client, entry_id, actor, "requeue executions")
    request = json.loads(row["spec"])["request"]
    carried: list[CarriedStep] = []
    if from_failed:
        carried = [CarriedStep(step_id=r["step_id"], from_execution_id=str(row["execution_id"]),
                               exit_code=r["exit_code"], completed_at=r["completed_at"],
                               output=json.loads(r["output"]) if isinstance(r["output"], str)
                               else r["output"])
                   for r in await client.pool.fetch(
                       "SELECT step_id, exit_code, output, completed_at"
                       " FROM execution.step_runs WHERE execution_id = $1"
                       " AND status = 'completed'", row["execution_id"])]
    response = await client.execute(request, wait=False, carried=carried)
    await client.pool.execute(
        "UPDATE execution.execution_dlq SET status = 'requeued', requeued_at = now(), "
        "requeued_by = $2, requeued_execution_id = $3 WHERE execution_id = $1 "
        "AND status = 'open'", row["execution_id"], actor, uuid.UUID(response.execution_id))
    return response
