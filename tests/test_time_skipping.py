"""Timers at their real lengths on Temporal's time-skipping test server: an approval window of
an hour and an execution deadline of ten minutes pass in well under a second of wall time.

The worker is the production one (`build_worker`) with the session's PostgreSQL mirror; the
test server knows no custom search attributes, so they are registered first. Each test gets
its own server and task queue. The result is awaited through the handle the start returned
(`execute(..., wait=True)`): that handle lets the server skip time while it is awaited.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from opsconductor.schema.config import Settings
from opsconductor.schema.payloads import DATA_CONVERTER
from opsconductor.schema.search_attributes import SEARCH_ATTRIBUTES
from opsconductor.starter.binaries import temporal_test_server
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.worker import build_worker
from tests.helpers import approval_rows, events, execution_row, request, shell, step, unique_queue

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLOSE_EVENTS = (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
                EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED)
INDEXED_TYPES = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
                 "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST}
# Wall-clock budget of a test whose timers add up to an hour: far below any real wait.
WALL_BUDGET_SECONDS = 60


@dataclass
class Skipping:
    env: WorkflowEnvironment
    client: ExecutionClient

    async def workflow_seconds(self, workflow_id: str) -> float:
        """Server time from the workflow's start to its close, skipped time included (read
        from its history: once nothing is pending the server's clock races far ahead)."""
        history = await self.env.client.get_workflow_handle(workflow_id).fetch_history()
        first, last = history.events[0], history.events[-1]
        assert last.event_type in CLOSE_EVENTS, last.event_type
        return (last.event_time.ToDatetime() - first.event_time.ToDatetime()).total_seconds()


@pytest.fixture
async def skipping(db_pool: asyncpg.Pool, migrated_pg: str,
                   tmp_path: Path) -> AsyncIterator[Skipping]:
    """A time-skipping server with our search attributes and a worker on a queue of its own."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(),
        data_converter=DATA_CONVERTER)
    async with env:
        await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={name: INDEXED_TYPES[kind]
                               for name, kind in SEARCH_ATTRIBUTES.items()}))
        queue = unique_queue("opsc-skip")
        settings = Settings(home=tmp_path / "home", task_queue=queue,
                            temporal_address="time-skipping", database_url=migrated_pg)
        async with build_worker(env.client, queue, pool=db_pool, settings=settings):
            yield Skipping(env=env, client=ExecutionClient(temporal=env.client, pool=db_pool,
                                                           settings=settings))


async def test_an_hour_long_approval_window_expires_with_nothing_gated_run(
        skipping: Skipping, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    engine = skipping.client
    wall0 = time.monotonic()
    resp = await engine.execute(request([shell("s", f"touch {marker}")], approval_level=1,
                                        environment="staging"), wait=True)
    result = resp.result
    assert result is not None
    assert time.monotonic() - wall0 < WALL_BUDGET_SECONDS
    # the policy's hour-long window really passed, on the server's clock
    assert 3600 <= await skipping.workflow_seconds(resp.workflow_id) < 3700

    assert result.status.value == "timeout" and result.approval_state.value == "expired"
    assert "expired after 3600s" in (result.error or "")
    assert [s.status.value for s in result.steps] == ["skipped"]
    assert not marker.exists()
    row = await execution_row(engine.pool, resp.execution_id)
    assert (row["st"], row["approval_state"]) == ("timeout", "expired")
    assert [r["st"] for r in await approval_rows(engine.pool, resp.execution_id)] == ["expired"]
    evs = await events(engine.pool, resp.execution_id)
    assert [(e["from_status"], e["to_status"]) for e in evs
            if e["event_type"] == "execution.status"] == [
        ("queued", "pending_approval"), ("pending_approval", "timeout")]
    assert [e["event_type"] for e in evs].count("approval.expired") == 1


async def test_the_execution_deadline_ends_a_run_waiting_at_an_approval_point(
        skipping: Skipping, tmp_path: Path) -> None:
    """Ten minutes of deadline against an hour of approval window: the deadline wins."""
    marker = tmp_path / "gated-ran"
    engine = skipping.client
    wall0 = time.monotonic()
    resp = await engine.execute(request(
        [step("first"), shell("gated", f"touch {marker}", deps=["first"]),
         step("after", deps=["gated"])],
        environment="staging", timeouts={"execution_timeout_seconds": 600},
        approval_points=[{"step_id": "gated", "reason": "touches the DB",
                          "risk_level": "high", "approver_role": "dba"}]), wait=True)
    result = resp.result
    assert result is not None
    assert time.monotonic() - wall0 < WALL_BUDGET_SECONDS
    # the ten-minute deadline, not the hour-long approval window, ended it
    assert 600 <= await skipping.workflow_seconds(resp.workflow_id) < 700

    assert result.status.value == "timeout"
    assert "execution deadline of 600s passed" in (result.error or "")
    by_id = {s.step_id: s.status.value for s in result.steps}
    assert by_id == {"first": "completed", "gated": "timeout", "after": "skipped"}
    assert not marker.exists()
    row = await execution_row(engine.pool, resp.execution_id)
    assert row["st"] == "timeout"
    kinds = [e["event_type"] for e in await events(engine.pool, resp.execution_id)]
    assert kinds.count("execution.deadline") == 1
    assert "approval.expired" not in kinds
