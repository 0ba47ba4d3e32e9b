"""Catalog tools routed to OpsConductor's services run end to end, as upstream sends them
(`POST {service}/execute-plan`, one step at a time), against local stand-ins that implement
that contract: through a real worker on the session's Temporal and PostgreSQL, authorized,
leased, recorded as attempts, masked and stored like any step; an outage of the service is
waited out, never turned into a false failure."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from opsconductor.activities.executors.base import StepContext
from opsconductor.activities.executors.service_plan import ServicePlanExecutor
from opsconductor.schema.config import Settings, secret_env_name
from opsconductor.schema.spec import build_spec
from opsconductor.schema.validation import validate_request
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.ports import free_port
from opsconductor.starter.worker import build_worker
from tests.catalog.helpers import stage_c_step
from tests.catalog.standins import Service, handler_for
from tests.executors.servers import serve
from tests.helpers import events, step_rows
from tests.planner.helpers import run_plan
from tests.planner.standins import AUTOMATION, AutomationService

pytestmark = pytest.mark.asyncio(loop_scope="session")

CAMERA_SECRET = "catalog/camera/root"
CAMERA_PASSWORD = "Cam-Secret-9f3"
INVENTORY = "assets:\n  - {id: cam-1, hostname: 192.168.1.100, connector: local}\n"
LOCATIONS = ("network-service", "asset-service", "communication-service")


@dataclasses.dataclass
class Stack:
    client: ExecutionClient
    services: dict[str, Service]
    urls: dict[str, str]
    settings: Settings


@contextlib.contextmanager
def standins() -> Iterator[tuple[dict[str, Service], dict[str, str]]]:
    services = {loc: Service(loc) for loc in LOCATIONS}
    with contextlib.ExitStack() as stack:
        urls = {loc: stack.enter_context(serve(handler_for(s))) for loc, s in services.items()}
        try:
            yield services, urls
        finally:
            for s in services.values():
                s.hold.set()  # a held call ends with the test


@pytest.fixture
async def stack(temporal_client: Client, db_pool: Any, temporal_server: Any, migrated_pg: str,
                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    monkeypatch.setenv(secret_env_name(CAMERA_SECRET), CAMERA_PASSWORD)
    queue = f"opsc-catalog-{uuid.uuid4().hex[:10]}"
    with standins() as (services, urls):
        services["asset-service"].assets.append(
            {"id": "cam-1", "hostname": "192.168.1.100", "connector": "local"})
        settings = Settings(home=tmp_path / "home", task_queue=queue,
                            temporal_address=temporal_server.address,
                            database_url=migrated_pg, inventory=inv,
                            network_service_url=urls["network-service"],
                            communication_service_url=urls["communication-service"],
                            asset_service_url=urls["asset-service"])
        async with build_worker(temporal_client, queue, pool=db_pool, settings=settings):
            yield Stack(ExecutionClient(temporal=temporal_client, pool=db_pool,
                                        settings=settings), services, urls, settings)


def plan(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tenant": "upstream", "actor": "stage-d", "environment": "dev",
            "plan": {"plan": {"steps": steps},
                     "execution_metadata": {"nonce": uuid.uuid4().hex}}}


def chain(*specs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, (tool, inputs) in enumerate(specs):
        s = stage_c_step(tool, inputs, i)
        s["depends_on"] = [out[-1]["id"]] if out else []
        s["execution_order"] = i + 1
        out.append(s)
    return out


async def test_service_steps_run_end_to_end(stack: Stack) -> None:
    camera = {"host": "192.168.1.100", "username": "root",
              "password": {"type": "secret", "path": CAMERA_SECRET}}
    steps = chain(("asset-list", {}), ("Axis-VAPIX-Device-Info", camera),
                  ("slack-cli", {"host": "192.168.1.100"}), ("asset-create", {}))
    resp = await stack.client.execute(plan(steps), wait=True)
    result = resp.result
    assert result is not None and result.status.value == "completed", result
    net, assets, comm = (stack.services[x] for x in LOCATIONS)
    assert [len(net.calls), len(assets.calls), len(comm.calls)] == [1, 2, 1]
    sent = {c["plan"]["steps"][0]["tool"]: c for s in (net, assets, comm) for c in s.calls}
    assert set(sent) == {"asset-list", "Axis-VAPIX-Device-Info", "slack_cli", "asset-create"}
    # actor_id as the services' request models take it: an integer, the principal the
    # mirror keeps for the named actor (the same number its executions row shows)
    principal = await stack.client.pool.fetchval(
        "SELECT actor_id FROM execution.actor_principals WHERE actor = 'stage-d'")
    mirrored = await stack.client.pool.fetchval(
        "SELECT actor_id FROM execution.executions WHERE execution_id = $1::uuid",
        resp.execution_id)
    assert isinstance(principal, int) and principal == mirrored
    for call in sent.values():  # upstream's body, field by field
        assert call["execution_id"] == resp.execution_id
        assert call["tenant_id"] == "upstream" and call["actor_id"] == principal
        assert set(call["plan"]) == {"steps", "previous_results"}
    device = sent["Axis-VAPIX-Device-Info"]["plan"]
    # the secret reaches the service only in the body, resolved just in time
    assert device["steps"][0]["inputs"]["password"] == CAMERA_PASSWORD
    assert [r["step_id"] for r in device["previous_results"]] == [steps[0]["id"]]
    assert [r["step_id"] for r in sent["asset-create"]["plan"]["previous_results"]] == [
        s["id"] for s in steps[:3]]
    by_id = {s.step_id: s for s in result.steps}
    rows = await step_rows(stack.client.pool, resp.execution_id)
    for s in steps:
        assert by_id[s["id"]].status.value == "completed"
        assert rows[s["id"]]["status"] == "completed"
    stored = " ".join(str(dict(r)) for r in rows.values()) + str(result.model_dump())
    assert CAMERA_PASSWORD not in stored, "the service's echo of a secret is masked"
    assert "done at network-service" in by_id[steps[1]["id"]].stdout
    evs = await events(stack.client.pool, resp.execution_id)
    audited = await stack.client.pool.fetch(
        "SELECT tool, decision FROM execution.rbac_audit WHERE execution_id = $1",
        resp.execution_id)
    assert {r["tool"] for r in audited if r["decision"] == "allow"} >= {
        s["tool"] for s in steps}
    attempts = await stack.client.pool.fetch(
        "SELECT step_id, outcome FROM execution.step_attempts WHERE execution_id = $1",
        uuid.UUID(resp.execution_id))
    assert sorted(r["outcome"] for r in attempts) == ["succeeded"] * 4
    assert sum(e["event_type"] == "step.status" for e in evs) >= 8
    acquired = [e for e in evs if e["event_type"] == "locks.acquired"]
    assert acquired and "cam-1" in str(acquired[0]["data"]), "the camera's lease was held"
    assert any(e["event_type"] == "locks.released" for e in evs)
    print(f"\nservice steps end to end: network {len(net.calls)}, asset {len(assets.calls)}, "
          f"communication {len(comm.calls)} calls; all completed")


async def test_a_service_outage_is_waited_out_not_failed(stack: Stack) -> None:
    comm = stack.services["communication-service"]
    comm.outage = 3  # 503 three times: the request is not taken, nothing is sent twice
    resp = await stack.client.execute(plan(chain(("sendmail", {"host": "mail-relay"}))),
                                      wait=True)
    result = resp.result
    assert result is not None and result.status.value == "completed", result
    assert comm.refused == 3 and len(comm.calls) == 1, "taken once, after the outage"
    assert result.steps[0].attempts == 1  # waited within the attempt: not a retry of an act
    print(f"\noutage: {comm.refused} x 503 waited out, 1 call taken, step completed")


async def test_a_service_that_is_down_then_up_is_waited_for(tmp_path: Path) -> None:
    """Executor level: connections refused (nothing listening) until the service starts."""
    port = free_port()
    service = Service("network-service")
    tries: list[str] = []
    started: list[Any] = []

    def beat(*details: Any) -> None:
        tries.append(str(details[0]))
        if len(tries) == 2 and not started:  # bring the service up after two refusals
            server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(service))
            threading.Thread(target=server.serve_forever, daemon=True).start()
            started.append(server)

    doc = plan([stage_c_step("nmap", {"host": "127.0.0.1"})])
    spec = build_spec(validate_request(doc), execution_id=str(uuid.uuid4()), workflow_id="w",
                      idempotency_key="k")
    s = spec.steps[0]
    ctx = StepContext(execution_id=spec.execution_id, workflow_id="w", tenant="upstream",
                      environment="dev", step=s, inputs=s.inputs, timeout=30, heartbeat=beat,
                      settings=Settings(home=tmp_path, network_service_url=f"http://127.0.0.1:"
                                                                           f"{port}"))
    try:
        outcome = await ServicePlanExecutor().run(ctx)
    finally:
        for server in started:
            server.shutdown()
            server.server_close()
    assert outcome.ok, outcome
    assert len(tries) == 2 and all("cannot connect" in t for t in tries), tries
    assert outcome.output["tries"] == 3 and len(service.calls) == 1
    print(f"\ndown then up: {len(tries)} refused connections, then 1 call taken")


async def test_catalog_tools_we_run_ourselves_run_on_the_target(stack: Stack) -> None:
    """automation-service tools run through our own connector (here the worker's machine):
    the command is upstream's, built as an argument list."""
    steps = chain(("uname", {"host": "localhost"}),
                  ("df", {"host": "localhost", "human_readable": True}),
                  ("whoami", {"host": "localhost"}))
    resp = await stack.client.execute(plan(steps), wait=True)
    result = resp.result
    assert result is not None and result.status.value == "completed", result
    by_id = {s.step_id: s for s in result.steps}
    assert by_id[steps[0]["id"]].stdout.strip() == os.uname().sysname
    assert "Filesystem" in by_id[steps[1]["id"]].stdout
    assert by_id[steps[2]["id"]].stdout.strip() == getpass.getuser()
    assert not any(s.calls for s in stack.services.values()), "nothing was sent to a service"


async def test_windows_catalog_tools_go_through_the_automation_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Windows catalog tool runs as its cmdlet line on the target through the Automation
    Service (`POST /execute`, our connector for Windows), each value a quoted literal."""
    with serve(AutomationService) as url:
        AUTOMATION.calls.clear()
        inv = tmp_path / "inventory.yaml"
        inv.write_text("assets:\n  - {id: win-7, hostname: 192.168.1.100, connector: "
                       "automation-service, os: windows, user: admin, credentials: {password:"
                       " {type: secret, path: catalog/win}}, automation: {base_url: "
                       f"'{url}'}}}}\n")
        monkeypatch.setenv("OPSC_INVENTORY", str(inv))
        monkeypatch.delenv("OPSC_ASSET_SERVICE_URL", raising=False)
        monkeypatch.setenv(secret_env_name("catalog/win"), "Win-Pass-7")
        doc = plan([stage_c_step("Restart-Service", {"host": "192.168.1.100",
                                                     "service_name": "Print Spooler"})])
        outcomes = await run_plan(doc)
    assert all(o.ok for o in outcomes.values()), outcomes
    (call,) = AUTOMATION.calls
    assert call["command"] == "Restart-Service -Servicename 'Print Spooler'"
    assert call["connection_type"] == "powershell" and call["target_host"] == "192.168.1.100"


async def test_a_service_step_fans_out_over_an_asset_query(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream's multi-machine form: asset-query, then a camera tool on `{{ip_address}}`:
    one execute-plan call per returned asset, each with its host rendered."""
    inv = tmp_path / "inventory.yaml"
    inv.write_text("assets:\n"
                   "  - {id: cam-a, hostname: cam-a, address: 10.0.0.11, connector: local,"
                   " tags: [camera]}\n"
                   "  - {id: cam-b, hostname: cam-b, address: 10.0.0.12, connector: local,"
                   " tags: [camera]}\n"
                   "  - {id: web, hostname: web, address: 10.0.0.20, connector: local}\n")
    monkeypatch.setenv("OPSC_INVENTORY", str(inv))
    monkeypatch.delenv("OPSC_ASSET_SERVICE_URL", raising=False)
    monkeypatch.setenv(secret_env_name(CAMERA_SECRET), CAMERA_PASSWORD)
    with standins() as (services, urls):
        monkeypatch.setenv("OPSC_NETWORK_SERVICE_URL", urls["network-service"])
        steps = chain(("asset-query", {"filters": {"tags": ["camera"]}}),
                      ("Axis-VAPIX-PTZ-Control", {
                          "host": "{{ip_address}}", "username": "root", "preset_name": "home",
                          "password": {"type": "secret", "path": CAMERA_SECRET}}))
        outcomes = await run_plan(plan(steps))
        calls = services["network-service"].calls
    assert all(o.ok for o in outcomes.values()), outcomes
    assert sorted(c["plan"]["steps"][0]["inputs"]["host"] for c in calls) == [
        "10.0.0.11", "10.0.0.12"]
    assert all(c["plan"]["steps"][0]["tool"] == "Axis-VAPIX-PTZ-Control" for c in calls)


async def test_actor_ids_as_upstream_reads_them() -> None:
    from opsconductor.activities.executors.service_plan import actor_id_of

    assert [actor_id_of(a) for a in ("1", "principal:42", "stage-d", None, "principal:x",
                                     "9" * 12)] == [1, 42, 0, 0, 0, 0]


async def test_a_service_verdict_is_read_as_upstream_reads_it() -> None:
    """Only `completed` is success; the service's own message is the error; no step result
    is a failure, never a success."""
    from opsconductor.activities.executors.service_plan import outcome_of

    failed = outcome_of({"status": "failed", "step_results": [{
        "status": "failed", "output": {"success": False,
                                       "message": "Unknown communication tool: slack-cli"}}]},
        "communication-service")
    assert not failed.ok and failed.error == "Unknown communication tool: slack-cli"
    assert not failed.retryable
    odd = outcome_of({"status": "completed", "step_results": [{"status": "success"}]}, "x")
    assert not odd.ok  # upstream's Stage E counts only `completed`
    empty = outcome_of({"status": "failed", "error_message": "No steps in plan"}, "x")
    assert not empty.ok and "No steps in plan" in (empty.error or "")
