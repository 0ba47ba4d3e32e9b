"""`opsconductor health`: can we reach Temporal and Postgres, and is a worker polling?

Unreachable servers and a missing worker are different states with different fixes, so the
report keeps them apart: `postgres` and `temporal` (the SERVERS) say whether we reached them,
`workers` whether anyone polls the task queue. With `this_host`, only a poller of this host
counts: the SDK's default worker identity is `pid@hostname`, so inside a container that is
"a worker of this container polls" (its health check). Without it, `progress` lists
executions in flight with no event for `OPSC_STALL_SECONDS`, and `retrying` the activities
Temporal is retrying after failures (a database or host that is down) — the fleet's health,
not a container's.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from opsconductor.activities.db import connect_once
from opsconductor.schema.config import load_settings

SERVERS = ("postgres", "temporal")


async def _check_postgres(url: str | None) -> dict[str, Any]:
    try:
        conn = await connect_once(url)
        try:
            versions = await conn.fetch(
                "SELECT version FROM execution.schema_migrations ORDER BY version")
        finally:
            await conn.close()
    except Exception as err:
        return {"ok": False, "detail": str(err) or type(err).__name__}
    return {"ok": True, "detail": "migrations: " + ", ".join(r["version"] for r in versions)}


async def check_signers(url: str | None, policy_file: Any) -> dict[str, Any]:
    """Table keys the worker ignores (no valid keys-admin attestation, e.g. written into
    `rbac_signers` by SQL): named, since someone tried to plant a key."""
    from opsconductor.safety.rbac import RbacEngine

    try:
        conn = await connect_once(url)
        try:
            policy = await RbacEngine(policy_file).policy(conn)
        finally:
            await conn.close()
    except Exception as err:
        return {"ok": False, "detail": f"not checked: {err or type(err).__name__}"}
    ignored = [{"principal": i.principal, "key_fingerprint": i.fingerprint, "reason": i.reason}
               for i in policy.ignored_signers]
    if not ignored:
        return {"ok": True, "ignored": [],
                "detail": f"{len(policy.signers)} trusted key(s), none ignored"}
    return {"ok": False, "ignored": ignored, "detail": (
        f"{len(ignored)} key(s) in rbac_signers NOT trusted: " + "; ".join(
            f"{i['principal']} {i['key_fingerprint']}: {i['reason']}" for i in ignored[:5]))}


async def _check_progress(url: str | None, stall_seconds: float) -> dict[str, Any]:
    """Executions in flight (not waiting for approval) with no event for `stall_seconds`."""
    try:
        conn = await connect_once(url)
        try:
            rows = await conn.fetch(
                """
                SELECT e.execution_id::text AS execution_id, e.status::text AS status,
                       extract(epoch FROM now() - coalesce(max(v.created_at), e.created_at))
                         AS quiet_seconds
                FROM execution.executions e
                LEFT JOIN execution.event_log v USING (execution_id)
                WHERE e.status IN ('queued', 'approved', 'running')
                GROUP BY e.execution_id, e.status, e.created_at
                HAVING now() - coalesce(max(v.created_at), e.created_at)
                       > make_interval(secs => $1)
                ORDER BY 3 DESC LIMIT 20
                """, stall_seconds)
        finally:
            await conn.close()
    except Exception as err:
        return {"ok": False, "detail": f"not checked: {err or type(err).__name__}"}
    if not rows:
        return {"ok": True, "detail": f"no execution without progress for {stall_seconds:g}s"}
    return {"ok": False, "stalled": [dict(r) for r in rows], "detail": (
        f"{len(rows)} execution(s) without progress for over {stall_seconds:g}s: " + ", ".join(
            f"{r['execution_id']} ({r['status']}, {r['quiet_seconds']:.0f}s)" for r in rows))}


RETRY_SCAN_LIMIT = 100  # running executions described per `health` call


async def _check_retrying(client: Any) -> dict[str, Any]:
    """Running executions whose activities are failing and being retried (a database, host
    or service that is down): Temporal knows, the mirror may not (it may be what is down)."""
    from temporalio.client import WorkflowExecutionStatus

    query = "WorkflowType = 'ExecutionWorkflow' AND ExecutionStatus = 'Running'"
    running = [w async for w in client.list_workflows(query, limit=RETRY_SCAN_LIMIT)
               if w.status is WorkflowExecutionStatus.RUNNING]
    described = await asyncio.gather(
        *(client.get_workflow_handle(w.id, run_id=w.run_id).describe() for w in running),
        return_exceptions=True)
    retrying: list[dict[str, Any]] = []
    for wf, desc in zip(running, described, strict=True):
        if isinstance(desc, BaseException):
            continue
        for act in desc.raw_description.pending_activities:
            if act.attempt < 2:
                continue
            message = act.last_failure.message if act.HasField("last_failure") else ""
            retrying.append({"workflow_id": wf.id, "activity": act.activity_type.name,
                             "attempt": act.attempt, "last_failure": message[:300]})
    if not retrying:
        return {"ok": True, "detail": f"no activity being retried ({len(running)} running)"}
    return {"ok": False, "retrying": retrying, "detail": (
        f"{len(retrying)} activity(ies) failing and being retried: " + ", ".join(
            f"{r['workflow_id']} {r['activity']} attempt {r['attempt']}: "
            f"{r['last_failure'][:80]}" for r in retrying[:5]))}


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
    if report["postgres"]["ok"] and not this_host:  # a container's health is not the fleet's
        report["progress"] = await _check_progress(settings.database_url,
                                                   settings.stall_seconds)
        report["signers"] = await check_signers(settings.database_url, settings.rbac_policy)
    try:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        from opsconductor.starter.worker import connect

        client = await asyncio.wait_for(connect(settings), 5)
        resp = await asyncio.wait_for(client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace, task_queue=TaskQueue(name=settings.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)), 10)
    except Exception as err:
        report["temporal"] = {"ok": False, "detail": str(err) or type(err).__name__}
        report["workers"] = {"ok": False, "detail": "unknown: Temporal unreachable"}
        return report
    report["temporal"] = {"ok": True,
                          "detail": f"{client.service_client.config.target_host} "
                                    f"namespace {client.namespace}"}
    host = socket.gethostname() if this_host else None
    identities = [p.identity for p in resp.pollers]
    polling = [i for i in identities if host is None or i.endswith(f"@{host}")]
    report["workers"] = {"ok": bool(polling),
                         "detail": _pollers_text(identities, settings.task_queue, host)}
    if not this_host:
        try:
            report["retrying"] = await asyncio.wait_for(_check_retrying(client), 15)
        except Exception as err:
            report["retrying"] = {"ok": False,
                                  "detail": f"not checked: {err or type(err).__name__}"}
    return report
