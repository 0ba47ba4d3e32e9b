"""Before a new attempt acts, a process group an earlier attempt left alive is stopped.

The supervisor normally takes a command down with its worker; here it cannot (the worker is
frozen, the supervisor killed with SIGKILL, then the worker too), so the command's group
outlives both — a host where the supervision failed. The next attempt must find the group
from the attempt record (pgid + start time) and stop it before its own command starts.
Real servers (the session's Temporal and PostgreSQL), `opsconductor worker` subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from opsconductor.schema.config import Settings
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.worker import build_worker
from tests.helpers import request, shell, wait_for
from tests.integration.helpers import (
    kill_group,
    opsc_env,
    start_worker,
    stop_process,
    wait_group_gone,
)
from tests.processes import alive, shell_leftover_check

pytestmark = pytest.mark.asyncio(loop_scope="session")

TIMEOUTS = {"heartbeat_timeout_seconds": 2, "step_timeout_seconds": 60, "max_attempts": 3}


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture
async def workers(temporal_client: Client, db_pool: Any, temporal_server: Any,
                  migrated_pg: str, tmp_path: Path
                  ) -> AsyncIterator[tuple[ExecutionClient, dict[str, str], list[Any]]]:
    queue = f"opsc-left-{uuid.uuid4().hex[:10]}"
    home = tmp_path / "home"
    home.mkdir()
    env = opsc_env(temporal_address=temporal_server.address, database_url=migrated_pg,
                   task_queue=queue, home=home)
    settings = Settings(home=home, task_queue=queue, temporal_address=temporal_server.address,
                        database_url=migrated_pg)
    started: list[Any] = []
    try:
        yield (ExecutionClient(temporal=temporal_client, pool=db_pool, settings=settings),
               env, started)
    finally:
        for item in started:
            if isinstance(item, subprocess.Popen):
                stop_process(item)
            else:
                kill_group(item)


async def test_the_next_attempt_stops_a_group_that_outlived_its_supervisor(
        workers: tuple[ExecutionClient, dict[str, str], list[Any]], tmp_path: Path) -> None:
    client, env, started = workers
    pids, leftovers = tmp_path / "pids", tmp_path / "leftovers"
    command = (f"{shell_leftover_check(pids, leftovers)}; echo $$ >> {pids}; "
               f'if [ "$(wc -l < {pids})" -eq 1 ]; then sleep 120; fi; echo finished')
    worker = start_worker(env, tmp_path / "worker.log")
    started.append(worker)
    resp = await client.execute(request([shell("act", command, idempotent=True)],
                                        timeouts=TIMEOUTS), wait=False)
    await wait_for(lambda: pids.exists() and pids.read_text().strip(), timeout=60,
                   what="the first attempt's command to start")
    pgid = int(pids.read_text().split()[0])
    started.append(pgid)
    supervisor = _parent_of(pgid)
    assert supervisor != worker.pid and _parent_of(supervisor) == worker.pid

    worker.send_signal(signal.SIGSTOP)  # it cannot notice what follows
    os.kill(supervisor, signal.SIGKILL)
    worker.send_signal(signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 10)
    assert alive(pgid), "the group should have outlived its supervisor for this test"

    async with build_worker(client.temporal, client.settings.task_queue, pool=client.pool,
                            settings=client.settings):
        result = await asyncio.wait_for(client.result(resp.execution_id), 90)
    assert result.status.value == "completed", result
    assert len(pids.read_text().split()) == 2
    assert not leftovers.exists(), "the second attempt started while the first's group lived"
    assert await wait_group_gone(pgid, timeout=1) == []
    row = await client.pool.fetchrow(
        "SELECT stopped_at, detail FROM execution.step_attempts "
        "WHERE execution_id = $1 AND step_id = 'act' AND attempt = 1",
        uuid.UUID(resp.execution_id))
    assert row["stopped_at"] is not None
    assert f"process group {pgid} stopped before attempt 2" in row["detail"]
