"""`kill -9` of the worker while a catalog step's `POST /execute-plan` is in flight: the
service has taken the call, so for a step that is not idempotent the outcome is unknown; the
new worker does not send it again but pauses the execution with the evidence (the open
attempt, a `step.unknown_outcome` event) until an operator resolves it. A read step in the
same situation is simply sent again. Real worker subprocess, real Temporal and PostgreSQL,
real HTTP stand-ins (tests/catalog/standins.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from opsconductor.schema.catalog import ROUTES
from opsconductor.schema.config import Settings
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.worker import build_worker
from tests.catalog.helpers import stage_c_step
from tests.catalog.standins import Service, handler_for
from tests.executors.servers import serve
from tests.helpers import events, wait_for
from tests.integration.helpers import opsc_env, start_worker, stop_process

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.faults]

TIMEOUTS = {"heartbeat_timeout_seconds": 2, "step_timeout_seconds": 60, "max_attempts": 3}


@contextlib.asynccontextmanager
async def crash_stack(temporal_client: Client, db_pool: Any, temporal_server: Any,
                      migrated_pg: str, tmp_path: Path, location: str
                      ) -> AsyncIterator[tuple[Service, dict[str, str], Settings,
                                               ExecutionClient, contextlib.AsyncExitStack]]:
    service = Service(location)
    route = ROUTES[location]
    queue = f"opsc-catalog-crash-{uuid.uuid4().hex[:10]}"
    home = tmp_path / "home"
    home.mkdir()
    with serve(handler_for(service)) as url:
        env = opsc_env(temporal_address=temporal_server.address, database_url=migrated_pg,
                       task_queue=queue, home=home, **{route.env: url})
        settings = Settings(home=home, task_queue=queue,
                            temporal_address=temporal_server.address,
                            database_url=migrated_pg, **{route.setting: url})
        client = ExecutionClient(temporal=temporal_client, pool=db_pool, settings=settings)
        async with contextlib.AsyncExitStack() as stack:
            try:
                yield service, env, settings, client, stack
            finally:
                service.hold.set()


def request(tool: str) -> dict[str, Any]:
    return {"tenant": "upstream", "actor": "stage-d", "environment": "dev",
            "timeouts": TIMEOUTS,
            "plan": {"plan": {"steps": [stage_c_step(tool, {"host": "mail-relay"})]},
                     "execution_metadata": {"nonce": uuid.uuid4().hex}}}


async def kill_mid_call(service: Service, env: dict[str, str], tmp_path: Path,
                        client: ExecutionClient, tool: str) -> tuple[Any, str]:
    """Submit, let the worker subprocess's call reach the service and hold it there,
    SIGKILL the worker."""
    service.hold.clear()
    log = tmp_path / "worker-1.log"
    worker: subprocess.Popen[bytes] = start_worker(env, log)
    try:
        resp = await client.execute(request(tool), wait=False)
        await wait_for(lambda: service.received.is_set() or None, timeout=60,
                       what=f"the call to reach the service (worker log: {log})")
        assert worker.poll() is None
        os.kill(worker.pid, signal.SIGKILL)
        await asyncio.to_thread(worker.wait, 10)
        assert worker.returncode == -signal.SIGKILL
    finally:
        stop_process(worker)
    step_id = stage_c_step(tool, {})["id"]
    return resp, step_id


async def test_kill_9_mid_call_pauses_a_change_step_with_the_evidence(
        temporal_client: Client, db_pool: Any, temporal_server: Any, migrated_pg: str,
        tmp_path: Path) -> None:
    async with crash_stack(temporal_client, db_pool, temporal_server, migrated_pg,
                           tmp_path, "communication-service") as (service, env, settings,
                                                                  client, stack):
        resp, sid = await kill_mid_call(service, env, tmp_path, client, "sendmail")
        service.hold.set()  # were it sent again, it would now be answered at once
        await stack.enter_async_context(build_worker(temporal_client, settings.task_queue,
                                                     pool=db_pool, settings=settings))

        async def waiting() -> Any:
            p = await client.progress(resp.workflow_id)
            return p if p is not None and p.waiting_on and "unknown outcome" in p.waiting_on \
                else None

        progress = await wait_for(waiting, timeout=90, what="a pause for the unknown outcome")
        step = next(s for s in progress.steps if s.id == sid)
        assert step.status.value == "waiting" and "outcome is unknown" in (step.error or "")

        async def unknown_event() -> Any:
            evs = await events(db_pool, resp.execution_id)
            return [e for e in evs if e["event_type"] == "step.unknown_outcome"] or None

        evidence = await wait_for(unknown_event, timeout=30, what="step.unknown_outcome")
        assert evidence[0]["step_id"] == sid
        rows = await db_pool.fetch(
            "SELECT attempt, finished_at, outcome FROM execution.step_attempts "
            "WHERE execution_id = $1 AND step_id = $2 ORDER BY attempt",
            uuid.UUID(resp.execution_id), sid)
        assert [(r["attempt"], r["finished_at"], r["outcome"]) for r in rows] == [
            (1, None, None)]
        assert len(service.calls) == 1, "the change was not sent twice"

        outcome = await client.resolve(resp.execution_id, "bob", "fail")
        assert outcome.accepted, outcome.reason
        result = await asyncio.wait_for(client.result(resp.execution_id), 60)
        assert result.status.value == "failed"
        assert len(service.calls) == 1
        print(f"\nkill -9 mid-call (sendmail): 1 call taken, paused on unknown outcome, "
              f"resolved fail; calls after resolution {len(service.calls)}")


async def test_kill_9_mid_call_resends_a_read_step(
        temporal_client: Client, db_pool: Any, temporal_server: Any, migrated_pg: str,
        tmp_path: Path) -> None:
    async with crash_stack(temporal_client, db_pool, temporal_server, migrated_pg,
                           tmp_path, "asset-service") as (service, env, settings, client,
                                                          stack):
        resp, _ = await kill_mid_call(service, env, tmp_path, client, "asset-list")
        service.hold.set()
        await stack.enter_async_context(build_worker(temporal_client, settings.task_queue,
                                                     pool=db_pool, settings=settings))
        result = await asyncio.wait_for(client.result(resp.execution_id), 90)
        assert result.status.value == "completed", result
        assert result.steps[0].attempts == 2 and len(service.calls) == 2
        evs = await events(db_pool, resp.execution_id)
        assert not [e for e in evs if e["event_type"] == "step.unknown_outcome"]
        print(f"\nkill -9 mid-call (asset-list, read): sent {len(service.calls)} times, "
              "completed")
