"""Exactly-once effects across `dlq requeue`: the requeued run is linked to the failed one,
and a non-idempotent step that already succeeded there returns its recorded result instead of
acting a second time. Real servers: the session's Temporal, PostgreSQL and worker."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from opsconductor.starter.dlq import requeue
from tests.helpers import events, request, shell, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_requeue_does_not_repeat_a_step_that_already_acted(engine: Any,
                                                                 tmp_path: Path) -> None:
    counter, ready = tmp_path / "deployed", tmp_path / "ready"
    req = request([shell("deploy", f"echo deployed >> {counter}", idempotent=False),
                   shell("verify", f"test -f {ready}", deps=["deploy"], idempotent=True)],
                  tenant=f"t{uuid.uuid4().hex[:6]}", timeouts={"max_attempts": 1})
    first = await engine.execute(req, wait=False)
    await wait_status(engine, first.execution_id, "failed", timeout=60)
    assert counter.read_text().split() == ["deployed"]
    entry = await engine.pool.fetchval(
        "SELECT id FROM execution.execution_dlq WHERE execution_id = $1",
        uuid.UUID(first.execution_id))
    assert entry is not None

    ready.touch()  # the cause is fixed; the operator requeues
    second = await requeue(engine, entry, "bob")
    assert second.previous_execution_id == first.execution_id
    view = await wait_status(engine, second.execution_id, "completed", timeout=60)
    steps = {s["id"]: s["status"] for s in view["steps"]}
    assert steps == {"deploy": "completed", "verify": "completed"}
    assert counter.read_text().split() == ["deployed"], "the deploy ran a second time"
    recovered = [e for e in await events(engine.pool, second.execution_id)
                 if e["event_type"] == "step.recovered"]
    assert [e["step_id"] for e in recovered] == ["deploy"]
    assert first.execution_id in recovered[0]["message"]
