"""SLA alerts against a real local webhook receiver (uvicorn): an execution whose ETA passes
its deadline raises `sla.at_risk`, one that overruns it `sla.violated`; each is an event, a
metric and one HMAC-signed POST, raised once however often the check runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opsconductor.activities.sla import SlaMonitor, sign
from tests.helpers import assert_eventually, events, request, serving, shell, step

pytestmark = pytest.mark.asyncio(loop_scope="session")
SECRET = "webhook-test-secret"


@dataclass
class Receiver:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_first: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver(url="")

    async def hook(request: Request) -> Response:
        if got.fail_first > 0:  # the first deliveries fail: the sender must retry
            got.fail_first -= 1
            return Response(status_code=503)
        got.received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    async with serving(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        got.url = f"{url}/hook"
        yield got


def monitor(engine: Any, receiver: Receiver) -> tuple[SlaMonitor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    settings = engine.settings.model_copy(update={
        "alert_webhook_url": receiver.url, "alert_webhook_secret": SecretStr(SECRET)})
    return SlaMonitor(engine.pool, settings,
                      MeterProvider(metric_readers=[reader]).get_meter("t")), reader


def alert_counts(reader: InMemoryMetricReader) -> dict[tuple[str, str], float]:
    data = reader.get_metrics_data()
    return {(p.attributes["kind"], p.attributes["sla_class"]): p.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == "opsc_sla_alerts_total" for p in m.data.data_points}


def alerts_for(receiver: Receiver, execution_id: str) -> list[dict[str, Any]]:
    out = []
    for headers, body in receiver.received:
        assert headers["x-opsc-signature"] == sign(SECRET, body)  # signed, unaltered
        data = json.loads(body)
        if data["execution_id"] == execution_id:
            out.append(data)
    return out


async def test_at_risk_then_violated(engine: Any, receiver: Receiver) -> None:
    sla, reader = monitor(engine, receiver)
    receiver.fail_first = 1
    # the first step runs 4x its estimate; the second's estimate, scaled so, passes the
    # 40 s budget long before the budget itself is spent
    resp = await engine.execute(request(
        [shell("a", "sleep 1", estimated_duration=0.25),
         shell("b", "sleep 30", deps=["a"], estimated_duration=20)],
        timeouts={"execution_timeout_seconds": 40}), wait=False)

    async def at_risk() -> list[dict[str, Any]]:
        await sla.check()
        got = alerts_for(receiver, resp.execution_id)
        assert [a["kind"] for a in got] == ["sla.at_risk"], got
        return got

    (alert,) = await assert_eventually(at_risk, what="the at-risk alert", timeout=30)
    assert alert["eta"] > alert["deadline"] and alert["tenant"] == "acme"
    await sla.check()  # once only, however often checked
    assert len(alerts_for(receiver, resp.execution_id)) == 1
    kinds = [e["event_type"] for e in await events(engine.pool, resp.execution_id)]
    assert kinds.count("sla.at_risk") == 1
    assert (await engine.cancel(resp.execution_id, "alice", "done with it")).accepted
    await engine.result(resp.execution_id)
    assert alert_counts(reader)[("at_risk", alert["sla_class"])] == 1


async def test_timed_out_run_is_violated(engine: Any, receiver: Receiver) -> None:
    sla, reader = monitor(engine, receiver)
    resp = await engine.execute(request(
        [shell("a", "sleep 20"), step("b", deps=["a"])],
        timeouts={"execution_timeout_seconds": 1}), wait=True)
    assert resp.result.status.value == "timeout"
    raised = await sla.check()
    assert [v.kind for v in raised if v.execution_id == resp.execution_id] == ["violated"]
    (alert,) = alerts_for(receiver, resp.execution_id)
    assert alert["kind"] == "sla.violated" and alert["status"] == "timeout"
    assert receiver.received[-1][0]["x-opsc-event"] == "sla.violated"
    kinds = [e["event_type"] for e in await events(engine.pool, resp.execution_id)]
    assert "sla.violated" in kinds and "sla.at_risk" not in kinds
    assert alert_counts(reader)[("violated", alert["sla_class"])] >= 1
