"""The change-window gate on Temporal's time-skipping test server: a run outside its window
waits visibly (progress, `status`, events, the Web UI's current details) and starts when the
window opens, hours later on the server's clock and in seconds of wall time; a `refuse` policy
ends it at once; a blackout date blocks; a run crossing the window's end stops launching; the
upstream planner's maintenance-window safety check waits for the window.

Windows are written relative to the server's clock (which races ahead between runs), in
Europe/Berlin, with hours of margin so a loaded machine cannot reach a boundary by itself.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import yaml
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from opsconductor.schema.config import Settings
from opsconductor.schema.messages import ExecutionResult, Progress, WaitKind
from opsconductor.schema.payloads import DATA_CONVERTER
from opsconductor.schema.search_attributes import SEARCH_ATTRIBUTES
from opsconductor.starter.binaries import temporal_test_server
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.worker import build_worker, workflow_runner
from opsconductor.workflows.execution import ExecutionWorkflow
from tests.helpers import events, execution_row, request, shell, step, unique_queue, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

BERLIN = ZoneInfo("Europe/Berlin")
INDEXED_TYPES = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
                 "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST}
WALL_BUDGET_SECONDS = 60
MAINTENANCE = "Maintenance window scheduled and stakeholders notified"  # upstream's text


@dataclass
class Gated:
    env: WorkflowEnvironment
    client: ExecutionClient
    policy_file: Path

    def write(self, *policies: dict[str, Any]) -> None:
        self.policy_file.write_text(yaml.safe_dump({"version": 1, "policies": list(policies)}))

    async def now(self) -> datetime:
        """The server's clock: it races ahead once nothing is pending, so windows are
        written against it, never against the machine's."""
        return (await self.env.get_current_time()).astimezone(UTC)

    async def progress(self, workflow_id: str) -> Progress:
        return await self.env.client.get_workflow_handle(workflow_id).query(
            "progress", result_type=Progress)

    async def details(self, workflow_id: str) -> str:
        meta = await self.env.client.get_workflow_handle(workflow_id).query(
            "__temporal_workflow_metadata", result_type=WorkflowMetadata)
        return str(meta.current_details)

    async def result(self, workflow_id: str) -> ExecutionResult:
        """Awaited with time skipping unlocked (only the handle a start returns unlocks it
        by itself): the server's clock races to the next timer meanwhile."""
        handle = self.env.client.get_workflow_handle(workflow_id, result_type=ExecutionResult)
        try:
            async with self.env.time_skipping_unlocked():  # type: ignore[attr-defined]
                return await handle.result()
        except WorkflowFailureError:  # a failed run closes Failed; its result stays queryable
            return await handle.query("result", result_type=ExecutionResult)

    async def replays(self, workflow_id: str) -> None:
        """The gated run's history replays in the strict sandbox (determinism of the gate)."""
        history = await self.env.client.get_workflow_handle(workflow_id).fetch_history()
        await Replayer(workflows=[ExecutionWorkflow], data_converter=DATA_CONVERTER,
                       workflow_runner=workflow_runner(strict=True)).replay_workflow(history)

    async def workflow_started(self, workflow_id: str) -> datetime:
        history = await self.env.client.get_workflow_handle(workflow_id).fetch_history()
        return history.events[0].event_time.ToDatetime().replace(tzinfo=UTC)

    async def first_step_started(self, workflow_id: str) -> datetime:
        history = await self.env.client.get_workflow_handle(workflow_id).fetch_history()
        for ev in history.events:
            attrs = ev.activity_task_scheduled_event_attributes
            if ev.HasField("activity_task_scheduled_event_attributes") and \
                    attrs.activity_type.name == "run_step":
                return ev.event_time.ToDatetime().replace(tzinfo=UTC)
        raise AssertionError("no step was scheduled")


@pytest.fixture
async def gated(db_pool: asyncpg.Pool, migrated_pg: str,
                tmp_path: Path) -> AsyncIterator[Gated]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(), data_converter=DATA_CONVERTER)
    async with env:
        await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={name: INDEXED_TYPES[kind]
                               for name, kind in SEARCH_ATTRIBUTES.items()}))
        queue = unique_queue("opsc-window")
        policy_file = tmp_path / "windows.yaml"
        policy_file.write_text("version: 1\npolicies: []\n")
        settings = Settings(home=tmp_path / "home", task_queue=queue,
                            temporal_address="time-skipping", database_url=migrated_pg,
                            window_policy=policy_file)
        async with build_worker(env.client, queue, pool=db_pool, settings=settings):
            yield Gated(env=env, client=ExecutionClient(temporal=env.client, pool=db_pool,
                                                        settings=settings),
                        policy_file=policy_file)


def berlin_window(opens: datetime, hours: float, **extra: Any) -> dict[str, Any]:
    """A Berlin window opening at `opens` (floored to the minute) for `hours`."""
    start = opens.astimezone(BERLIN).replace(second=0, microsecond=0)
    end = start + timedelta(hours=hours)
    day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][start.weekday()]
    return {"name": extra.pop("name", "staging-window"), "zone": "Europe/Berlin",
            "scope": {"environments": ["staging"]},
            "windows": [{"days": [day], "start": start.strftime("%H:%M"),
                         "end": end.strftime("%H:%M")}], **extra}


def kinds(evs: list[Any]) -> list[str]:
    return [e["event_type"] for e in evs]


async def eventually(fn: Callable[[], Any], what: str) -> Any:
    return await wait_for(fn, what=what, timeout=60)


async def test_outside_the_window_a_run_waits_visibly_then_starts_when_it_opens(
        gated: Gated, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    opens = await gated.now() + timedelta(hours=3)
    gated.write(berlin_window(opens, 1))
    wall0 = time.monotonic()
    resp = await gated.client.execute(request([shell("s", f"touch {marker}")],
                                              environment="staging"), wait=False)

    async def waiting() -> Progress | None:
        p = await gated.progress(resp.workflow_id)
        return p if p.waiting_kind is WaitKind.WINDOW else None

    progress = await eventually(waiting, "the run waiting for its window")
    assert progress.waiting_on.startswith("change window opens ")
    view = await gated.client.status(resp.execution_id)
    assert view["waiting_on"] == progress.waiting_on
    assert "waiting: change window opens" in await gated.details(resp.workflow_id)
    assert not marker.exists()

    result = await gated.result(resp.workflow_id)
    assert time.monotonic() - wall0 < WALL_BUDGET_SECONDS
    assert result.status.value == "completed" and marker.exists()
    started = await gated.first_step_started(resp.workflow_id)
    floor = opens.replace(second=0, microsecond=0)
    assert floor <= started < floor + timedelta(minutes=10)
    evs = await events(gated.client.pool, resp.execution_id)
    order = kinds(evs)
    assert order.count("window.waiting") == 1 and order.count("window.open") == 1
    assert order.index("window.waiting") < order.index("window.open")
    opened = next(e for e in evs if e["event_type"] == "window.open")
    waited = started - await gated.workflow_started(resp.workflow_id)
    print(f"window gate: waited {waited.total_seconds():.0f}s of server "
          f"time in {time.monotonic() - wall0:.1f}s wall; events {order.count('window.waiting')}"
          f" waiting, {order.count('window.open')} open")
    assert "staging-window" in opened["message"]
    await gated.replays(resp.workflow_id)


async def test_a_refuse_policy_ends_the_run_at_once_and_a_blackout_date_blocks(
        gated: Gated, tmp_path: Path) -> None:
    marker = tmp_path / "refused"
    opens = await gated.now() + timedelta(hours=5)
    gated.write(berlin_window(opens, 1, outside="refuse"))
    resp = await gated.client.execute(request([shell("s", f"touch {marker}")],
                                              environment="staging"), wait=False)
    result = await gated.result(resp.workflow_id)
    assert result.status.value == "failed" and not marker.exists()
    assert "refused outside its change window" in (result.error or "")
    row = await execution_row(gated.client.pool, resp.execution_id)
    assert row["st"] == "failed"
    assert "window.refused" in kinds(await events(gated.client.pool, resp.execution_id))

    # A blackout on today's Berlin date blocks even an always-open policy: the run waits for
    # the next local midnight.
    today = (await gated.now()).astimezone(BERLIN).date()
    gated.write({"name": "freeze", "zone": "Europe/Berlin",
                 "scope": {"environments": ["staging"]},
                 "blackouts": [{"start": today.isoformat(), "reason": "release freeze"}]})
    blocked = await gated.client.execute(request([shell("s", f"touch {marker}")],
                                                 environment="staging"), wait=False)
    result = await gated.result(blocked.workflow_id)
    assert result.status.value == "completed" and marker.exists()
    started = await gated.first_step_started(blocked.workflow_id)
    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), BERLIN)
    assert midnight <= started < midnight + timedelta(minutes=10)
    evs = await events(gated.client.pool, blocked.execution_id)
    waiting = next(e for e in evs if e["event_type"] == "window.waiting")
    assert "release freeze" in waiting["message"]
    print(f"blackout: refused 1, waited until {started.isoformat()} (Berlin midnight)")


async def test_a_run_crossing_the_window_end_stops_launching_and_says_so(
        gated: Gated, tmp_path: Path) -> None:
    marker = tmp_path / "late"
    now = await gated.now()
    gated.write(berlin_window(now - timedelta(minutes=30), 1))  # closes ~30 min from now
    resp = await gated.client.execute(request(
        [step("first"), shell("gated", f"touch {marker}", deps=["first"]),
         step("after", deps=["gated"])],
        environment="staging",
        approval_points=[{"step_id": "gated", "reason": "touches the DB",
                          "risk_level": "high"}]), wait=False)

    async def at_gate() -> Progress | None:
        p = await gated.progress(resp.workflow_id)
        return p if p.waiting_kind is WaitKind.APPROVAL else None

    await eventually(at_gate, "the run at its approval point")
    await gated.env.sleep(timedelta(minutes=45))  # the window closes meanwhile
    outcome = await gated.client.approve(resp.execution_id, "bob", "go")
    assert outcome.accepted, outcome.reason
    result = await gated.result(resp.workflow_id)
    assert result.status.value == "failed" and not marker.exists()
    assert "change window closed before step gated could start" in (result.error or "")
    by_id = {s.step_id: s.status.value for s in result.steps}
    assert by_id == {"first": "completed", "gated": "skipped", "after": "skipped"}
    order = kinds(await events(gated.client.pool, resp.execution_id))
    assert order.count("window.closed") == 1
    await gated.replays(resp.workflow_id)
    print(f"window end: steps {by_id}, window.closed events {order.count('window.closed')}")


async def test_the_upstream_maintenance_window_check_waits_for_the_window(
        gated: Gated, tmp_path: Path) -> None:
    marker = tmp_path / "maintained"
    opens = await gated.now() + timedelta(hours=2)
    gated.write(berlin_window(opens, 1))
    checks = {"safety_checks": [{"check": MAINTENANCE, "stage": "before",
                                 "failure_action": "abort"}]}
    resp = await gated.client.execute(request([shell("s", f"touch {marker}")],
                                              environment="staging", plan_extra=checks),
                                      wait=False)
    result = await gated.result(resp.workflow_id)
    assert result.status.value == "completed" and marker.exists()
    started = await gated.first_step_started(resp.workflow_id)
    assert started >= opens.replace(second=0, microsecond=0)
    evs = await events(gated.client.pool, resp.execution_id)
    passed = [e for e in evs if e["event_type"] == "safety_check.passed"]
    assert len(passed) == 1 and MAINTENANCE in passed[0]["message"]
    assert not [e for e in evs if e["event_type"].startswith("safety_check.")
                and e["event_type"] != "safety_check.passed"]

    # No policy governs dev: the check cannot be met, so the run is refused (fail closed).
    refused = await gated.client.execute(request([shell("s", "true")], environment="dev",
                                                 plan_extra=checks), wait=False)
    result = await gated.result(refused.workflow_id)
    assert result.status.value == "failed"
    assert "no change window policy governs this run" in (result.error or "")
    print("maintenance-window check: 1 waited and ran, 1 refused without a policy")


async def test_an_unreadable_policy_refuses_instead_of_opening(gated: Gated,
                                                                tmp_path: Path) -> None:
    marker = tmp_path / "never"
    gated.policy_file.write_text("version: 1\npolicies:\n- name: x\n  zone: Mars/Base\n")
    resp = await gated.client.execute(request([shell("s", f"touch {marker}")],
                                              environment="staging"), wait=False)
    result = await gated.result(resp.workflow_id)
    assert result.status.value == "failed" and not marker.exists()
    assert "change window policy unusable" in (result.error or "")
    assert "policies.0.zone" in (result.error or "")
    print("unreadable policy: 1 refused")
