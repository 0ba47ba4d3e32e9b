"""`opsconductor health`: can we reach Temporal and Postgres, and is a worker polling?"""

from __future__ import annotations

import asyncio
from typing import Any

from opsconductor.schema.config import load_settings


async def check_health() -> dict[str, dict[str, Any]]:
    settings = load_settings()
    report: dict[str, dict[str, Any]] = {}
    try:
        import asyncpg

        if not settings.database_url:
            raise RuntimeError("no database configured")
        conn = await asyncio.wait_for(asyncpg.connect(settings.database_url), 5)
        try:
            versions = await conn.fetch(
                "SELECT version FROM execution.schema_migrations ORDER BY version")
        finally:
            await conn.close()
        report["postgres"] = {"ok": True, "detail": "migrations: "
                              + ", ".join(r["version"] for r in versions)}
    except Exception as err:
        report["postgres"] = {"ok": False, "detail": str(err)}
    try:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        from opsconductor.starter.worker import connect

        client = await asyncio.wait_for(connect(settings), 5)
        report["temporal"] = {"ok": True, "detail": f"{settings.temporal_address} "
                                                    f"namespace {settings.namespace}"}
        resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=settings.namespace, task_queue=TaskQueue(name=settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
        pollers = len(resp.pollers)
        report["workers"] = {"ok": pollers > 0,
                             "detail": f"{pollers} poller(s) on {settings.task_queue}"}
    except Exception as err:
        report.setdefault("temporal", {"ok": False, "detail": str(err)})
        report.setdefault("workers", {"ok": False, "detail": "unknown: Temporal unreachable"})
    return report
