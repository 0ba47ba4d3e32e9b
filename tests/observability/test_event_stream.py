"""The live event stream: the mirror's NOTIFY wakes followers (no polling), and a follower that
disconnects resumes after its last event id with no gap and no duplicate, in the library and
through `opsconductor events --follow --after`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from opsconductor.starter.events import QUIET_RECHECK_SECONDS, EventHub
from tests.helpers import events, pending, request, shell, step, until
from tests.integration.helpers import opsc_env, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def all_ids(engine: Any, execution_id: str) -> list[int]:
    return [e["id"] for e in await events(engine.pool, execution_id)]


async def test_notification_wakes_a_waiting_follower(engine: Any) -> None:
    resp = await engine.execute(request([step("a")], approval_level=1, environment="staging"),
                                wait=False)
    await until(engine, resp.workflow_id, pending)
    hub = EventHub(engine.pool)
    try:
        seen = await hub.read(resp.execution_id)  # everything up to the approval wait
        assert seen and seen[-1]["to_status"] == "pending_approval", seen
        stream = hub.follow(resp.execution_id, after=seen[-1]["id"])
        next_event = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # the follower is now waiting for a notification
        asked = time.monotonic()
        assert (await engine.approve(resp.execution_id, "bob")).accepted
        first_new = await asyncio.wait_for(next_event, QUIET_RECHECK_SECONDS)
        latency = time.monotonic() - asked
        assert latency < QUIET_RECHECK_SECONDS / 3, latency  # woken, not re-checked
        assert first_new["id"] > seen[-1]["id"] and hub.notifications > 0
        rest = [e async for e in stream]  # returns once the execution has ended
    finally:
        await hub.close()
    got = [e["id"] for e in [*seen, first_new, *rest]]
    assert got == await all_ids(engine, resp.execution_id)
    assert rest[-1]["type"] == "execution.status" and rest[-1]["to_status"] == "completed"


async def test_follower_resumes_after_disconnect_without_gap_or_duplicate(engine: Any) -> None:
    resp = await engine.execute(request(
        [shell(f"s{i}", "sleep 0.2", deps=[f"s{i - 1}"] if i else []) for i in range(5)]),
        wait=False)
    first: list[dict[str, Any]] = []
    hub = EventHub(engine.pool)
    try:
        async for event in hub.follow(resp.execution_id):
            first.append(event)
            if event["type"] == "step.status" and event["step_id"] == "s1":
                break  # the client goes away mid-run
    finally:
        await hub.close()
    assert first
    hub = EventHub(engine.pool)  # a new connection, resuming after the last id it printed
    try:
        second = [e async for e in hub.follow(resp.execution_id, after=first[-1]["id"])]
    finally:
        await hub.close()
    got = [e["id"] for e in first + second]
    assert len(got) == len(set(got))
    assert got == await all_ids(engine, resp.execution_id)
    assert second[-1]["to_status"] == "completed"


async def test_cli_events_follow_and_resume(engine: Any, temporal_server: Any, pg_url: str,
                                            tmp_path: Path) -> None:
    env = opsc_env(temporal_address=temporal_server.address, database_url=pg_url,
                   task_queue=engine.settings.task_queue, home=tmp_path / "home")
    resp = await engine.execute(request(
        [shell("a", "sleep 0.5"), shell("b", "echo done", deps=["a"])]), wait=False)
    followed = await run_cli(env, "events", resp.execution_id, "--follow", "--json")
    assert followed.code == 0, followed
    lines = [json.loads(line) for line in followed.stdout.splitlines()]
    ids = await all_ids(engine, resp.execution_id)
    assert [e["id"] for e in lines] == ids and lines[-1]["to_status"] == "completed"
    middle = ids[len(ids) // 2]
    resumed = await run_cli(env, "events", resp.workflow_id, "--after", str(middle), "--json")
    assert resumed.code == 0, resumed
    assert [json.loads(x)["id"] for x in resumed.stdout.splitlines()] == \
        [i for i in ids if i > middle]
    text = await run_cli(env, "events", resp.execution_id)
    assert text.code == 0 and f"#{ids[0]} " in text.stdout and "execution.created" in text.stdout
