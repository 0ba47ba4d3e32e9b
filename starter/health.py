"""`opsconductor health`: can we reach Temporal and Postgres, and is a worker polling?

Unreachable servers and a missing worker are different states with different fixes, so the
report keeps them apart: `postgres` and `temporal` (the SERVERS) say whether we reached them,
`workers` whether anyone polls the task queue. With `this_host`, only a poller of this host
counts: the SDK's default worker identity is `pid@hostname`, so inside a container that is
"a worker of this container polls" (its health check).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from opsconductor.schema.config import load_settings

SERVERS = ("postgres", "temporal")


async def _check_postgres(url: str | None) -> dict[str, Any]:
    import asyncpg

    try:
        if not url:
            raise RuntimeError("no database configured")
        conn = await asyncio.wait_for(asyncpg.connect(url), 5)
        try:
            versions = await conn.fetch(
                "SELECT version FROM execution.schema_migrations ORDER BY version")
        finally:
            await conn.close()
    except Exception as err:
        return {"ok": False, "detail": str(err) or type(err).__name__}
    return {"ok": True, "detail": "migrations: " + ", ".join(r["version"] for r in versions)}


def _pollers_text(identities: list[str], task_queue: str, this_host: str | None) -> str:
    if this_host is not None:
        mine = [i for i in identities if i.endswith(f"@{this_host}")]
        if not mine:
            return (f"no worker of this host ({this_host}) polling {task_queue} "
                    f"({len(identities)} poller(s) elsewhere)")
        return f"{len(mine)} poller(s) of this host on {task_queue}"
    if not identities:
        return f"no worker polling {task_queue}"
    return f"{len(identities)} poller(s) on {task_queue}"


async def check_health(this_host: bool = False) -> dict[str, dict[str, Any]]:
    settings = load_settings()
    report: dict[str, dict[str, Any]] = {"postgres": await _check_postgres(settings.database_url)}
    try:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        from opsconductor.starter.worker import connect

        client = await asyncio.wait_for(connect(settings), 5)
        resp = await asyncio.wait_for(client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.namespace, task_queue=TaskQueue(name=settings.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)), 10)
    except Exception as err:
        report["temporal"] = {"ok": False, "detail": str(err) or type(err).__name__}
        report["workers"] = {"ok": False, "detail": "unknown: Temporal unreachable"}
        return report
    report["temporal"] = {"ok": True, "detail": f"{settings.temporal_address} "
                                                f"namespace {settings.namespace}"}
    host = socket.gethostname() if this_host else None
    identities = [p.identity for p in resp.pollers]
    polling = [i for i in identities if host is None or i.endswith(f"@{host}")]
    report["workers"] = {"ok": bool(polling),
                         "detail": _pollers_text(identities, settings.task_queue, host)}
    return report
