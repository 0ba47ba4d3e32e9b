"""`opsconductor serve`'s app over real HTTP (uvicorn on a free port): executions with filters
and a cursor, one execution, a step's output, events as SSE with a reconnect that loses and
repeats nothing, `/metrics`, `/healthz`, `/readyz` and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from opsconductor.starter.api import create_app
from opsconductor.starter.auth import LocalTokenAuth
from tests.helpers import events, request, serving, shell, step, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


TOKEN = "t" * 43


@pytest.fixture
async def api(engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind a local token; the client sends it (tests/api_auth proves the rest)."""
    registry = CollectorRegistry()
    Counter("opsc_api_probe", "a sample the endpoint must show", registry=registry).inc()
    app = create_app(engine, auth=LocalTokenAuth(TOKEN), registry=registry)
    async with (serving(app, lifespan="on") as url,
                httpx.AsyncClient(base_url=url, timeout=30,
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as http):
        yield http


async def read_sse(response: httpx.Response, *, stop_after: int | None = None
                   ) -> list[dict[str, Any]]:
    """The events of an SSE response (ids checked against the data), until `end` or
    `stop_after` events."""
    got: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if line:
            key, _, value = line.partition(": ")
            fields[key] = value
            continue
        if fields.get("event") == "end":
            return got
        if "data" in fields:
            data = json.loads(fields["data"])
            assert int(fields["id"]) == data["id"] and fields["event"] == data["type"]
            got.append(data)
            if stop_after is not None and len(got) >= stop_after:
                return got
        fields = {}
    return got


async def test_sse_reconnect_with_last_event_id_loses_nothing(api: httpx.AsyncClient,
                                                              engine: Any) -> None:
    resp = await engine.execute(request(
        [shell(f"s{i}", "sleep 0.2", deps=[f"s{i - 1}"] if i else []) for i in range(4)]),
        wait=False)
    path = f"/executions/{resp.execution_id}/events"
    async with api.stream("GET", path) as first_response:
        assert first_response.headers["content-type"].startswith("text/event-stream")
        first = await read_sse(first_response, stop_after=3)
    async with api.stream("GET", path, headers={"Last-Event-ID": str(first[-1]["id"])}) as r:
        second = await read_sse(r)
    ids = [e["id"] for e in first + second]
    assert ids == [e["id"] for e in await events(engine.pool, resp.execution_id)]
    assert len(ids) == len(set(ids)) and second[-1]["to_status"] == "completed"


async def test_read_endpoints(api: httpx.AsyncClient, engine: Any) -> None:
    tenant = "api-tenant"
    done = [await engine.execute(request([shell("a", f"echo out-{i}"), step("b", deps=["a"])],
                                         tenant=tenant), wait=True) for i in range(3)]
    page = (await api.get("/executions", params={"tenant": tenant, "limit": 2})).json()
    assert [x["execution_id"] for x in page["items"]] == [d.execution_id for d in done[:0:-1]]
    rest = (await api.get("/executions", params={"tenant": tenant, "limit": 2,
                                                 "cursor": page["next_cursor"]})).json()
    assert [x["execution_id"] for x in rest["items"]] == [done[0].execution_id]
    assert rest["next_cursor"] is None
    assert (await api.get("/executions", params={"status": "nonsense"})).status_code == 400
    one = (await api.get(f"/executions/{done[0].workflow_id}")).json()
    assert one["execution_id"] == done[0].execution_id and one["status"] == "completed"
    assert [s["id"] for s in one["steps"]] == ["a", "b"]
    out = (await api.get(f"/executions/{done[0].execution_id}/steps/a/output")).json()
    assert any("out-0" in s["text"] for s in out["streams"] if s["stream"] == "stdout"), out
    assert (await api.get(f"/executions/{done[0].execution_id}/steps/zz/output")).status_code \
        == 404
    assert (await api.get("/executions/no-such-id")).status_code == 404
    assert "opsc_api_probe_total 1.0" in (await api.get("/metrics")).text
    assert (await api.get("/healthz")).json() == {"ok": True}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    spec = (await api.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/executions/{id}/events" in spec["paths"]
    assert (await api.get("/executions", headers={"Authorization": ""})).status_code == 401


async def test_serve_command_answers_over_http(engine: Any, temporal_server: Any, pg_url: str,
                                               tmp_path: Any) -> None:
    from opsconductor.starter.ports import free_port
    from tests.integration.helpers import OPSCONDUCTOR, opsc_env

    port = free_port("127.0.0.1")
    env = opsc_env(temporal_address=temporal_server.address, database_url=pg_url,
                   task_queue=engine.settings.task_queue, home=tmp_path / "home")
    proc = await asyncio.create_subprocess_exec(
        OPSCONDUCTOR, "serve", "--port", str(port), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async def ready() -> Any:
                try:
                    resp = await http.get("/readyz")
                except httpx.TransportError:
                    return None
                return resp if resp.status_code == 200 else None

            assert (await wait_for(ready, what="`opsconductor serve` to be ready")).json()[
                "ready"] is True
            token_file = tmp_path / "home" / "api-token"
            assert token_file.stat().st_mode & 0o777 == 0o600
            token = token_file.read_text().strip()
            assert (await http.get("/executions")).status_code == 401
            assert (await http.get("/metrics")).status_code == 401
            auth = {"Authorization": f"Bearer {token}"}
            metrics = (await http.get("/metrics", headers=auth)).text
            assert "opsc_dlq_depth" in metrics  # the mirror's gauges, read at start
            listed = (await http.get("/executions", params={"limit": 1}, headers=auth)).json()
            assert len(listed["items"]) == 1
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    assert proc.stderr is not None
    said = (await proc.stderr.read()).decode()
    assert f"API token (shown once; kept in {token_file}" in said and token in said
