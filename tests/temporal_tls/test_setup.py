"""`opsconductor setup` on a bare namespace: a dev server started without our search
attributes, as an existing cluster's namespace is. The worker refuses it, naming them; setup
registers them (a second run changes nothing and says so); then a run completes and a
visibility query on our attributes finds it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client

from opsconductor.schema.search_attributes import SEARCH_ATTRIBUTES
from opsconductor.starter.temporal_server import TemporalDevServer
from tests.helpers import assert_eventually, request, shell, wait_for
from tests.integration.helpers import opsc_env, run_cli, start_worker, stop_process


@dataclass
class Bare:
    dir: Path
    server: TemporalDevServer
    env: dict[str, str]


@pytest.fixture(scope="module")
async def bare(tmp_path_factory: pytest.TempPathFactory, migrated_pg: str
               ) -> AsyncIterator[Bare]:
    d = tmp_path_factory.mktemp("bare-namespace")
    server = TemporalDevServer(headless=True, log_file=d / "temporal.log",
                               search_attributes=False)
    await asyncio.to_thread(server.start)
    home = d / "home"
    home.mkdir()
    env = opsc_env(temporal_address=server.address, database_url=migrated_pg,
                   task_queue=f"opsc-setup-{uuid.uuid4().hex[:8]}", home=home)
    try:
        yield Bare(d, server, env)
    finally:
        await asyncio.to_thread(server.stop)


async def test_setup_prepares_a_bare_namespace(bare: Bare) -> None:
    names = list(SEARCH_ATTRIBUTES)
    refused = await run_cli(bare.env, "worker", timeout=60)
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error: ")]
    assert refused.code == 1 and len(errors) == 1, refused
    assert "Traceback" not in refused.stderr
    assert all(n in errors[0] for n in names) and "opsconductor setup" in errors[0], errors

    first = await run_cli(bare.env, "setup", "--json")
    assert first.code == 0, first
    assert first.json["changed"] is True and sorted(first.json["registered"]) == sorted(names)
    second = await run_cli(bare.env, "setup")
    assert second.code == 0 and "nothing changed" in second.stdout, second
    again = await run_cli(bare.env, "setup", "--json")
    assert again.json["changed"] is False and again.json["registered"] == []
    missing = await run_cli(bare.env, "setup", "--namespace", "no-such-namespace")
    assert missing.code == 3 and "'no-such-namespace' does not exist" in missing.stderr, missing
    print(f"\n[setup] worker refused: {errors[0]}\n[setup] first run: {first.json['registered']}"
          f"\n[setup] second run: {second.stdout.strip()}")

    log = bare.dir / "worker.log"
    worker = start_worker(bare.env, log)
    try:
        await wait_for(lambda: log.exists() and "worker polling" in log.read_text(),
                       timeout=60, what=f"the worker to start after setup (log {log})")
        plan = bare.dir / "plan.json"
        plan.write_text(json.dumps(request([shell("hi", "echo prepared")])))
        run = await run_cli(bare.env, "run", str(plan), "--wait", "--json")
        assert run.code == 0 and run.json["result"]["status"] == "completed", run
        workflow_id = run.json["workflow_id"]
    finally:
        stop_process(worker)
    client = await Client.connect(bare.server.address)
    query = (f"WorkflowId = '{workflow_id}' AND OpsTenant = 'acme' AND OpsStatus = 'completed'"
             " AND OpsEnvironment = 'dev'")

    async def found() -> None:
        hits = [w.id async for w in client.list_workflows(query)]
        assert hits == [workflow_id], hits

    await assert_eventually(found, timeout=30, what="the visibility query on our attributes")
