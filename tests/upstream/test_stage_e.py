"""`StageEExecutor().execute(...)` called exactly as OpsConductor's orchestrator calls it, with
its planner's own plans (tests/planner/corpus), against the session's worker: an immediate
plan ends completed with step results its summary code renders; a plan with approval points
returns at once, pending, with an execution id; a bad plan is an upstream-shaped failure that
started nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.client import Client

from opsconductor.starter.stage_e import ExecutionRequest, StageEExecutor
from tests.executors.servers import serve
from tests.helpers import wait_status
from tests.planner.helpers import load
from tests.planner.standins import ASSET_SERVICE, AssetService
from tests.upstream.upstream import UpstreamStatus, summary


@pytest.fixture
def stage_e_settings(engine: Any, migrated_pg: str, temporal_server: Any,
                     monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """What OpsConductor's process would be given: our OPSC_* variables, pointing at the
    session's servers and worker."""
    monkeypatch.setenv("OPSC_DATABASE_URL", migrated_pg)
    monkeypatch.setenv("OPSC_TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("OPSC_TASK_QUEUE", engine.settings.task_queue)
    monkeypatch.setenv("OPSC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPSC_STAGE_E_ENVIRONMENT", "dev")


@pytest.fixture
def asset_service(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve(AssetService) as url:
        ASSET_SERVICE.calls.clear()
        ASSET_SERVICE.assets.clear()
        monkeypatch.setenv("OPSC_ASSET_SERVICE_URL", url)
        monkeypatch.setattr(engine.settings, "asset_service_url", url)
        yield url


async def orchestrator_calls(executor: StageEExecutor, plan_dict: dict[str, Any],
                             context: dict[str, Any] | None) -> Any:
    """OpsConductor's `_execute_stage_e`, line for line in substance."""
    execution_request = ExecutionRequest(plan=plan_dict, context=context or {})
    tenant_id = context.get("tenant_id", "default") if context else "default"
    actor_id = context.get("actor_id", 1) if context else 1
    return await executor.execute(execution_request, tenant_id, actor_id)


def chat_context(**extra: Any) -> dict[str, Any]:
    return {"conversation_history": [], "session_id": f"s-{uuid.uuid4().hex[:8]}", **extra}


async def test_immediate_plan_completes_with_step_results_its_summary_renders(
        stage_e_settings: None, engine: Any) -> None:
    executor = StageEExecutor()
    context = chat_context()
    try:
        response = await orchestrator_calls(executor, load("plan_v1_schema_example.json")["plan"],
                                            context)
        again = await orchestrator_calls(
            executor, load("plan_v1_schema_example.json")["plan"], chat_context())
        repeated = await orchestrator_calls(
            executor, load("plan_v1_schema_example.json")["plan"], context)
    finally:
        await executor.close()
    assert response.status == UpstreamStatus.COMPLETED, response.error_message
    assert response.execution_mode.value == "immediate" and response.error_message is None
    assert (response.total_steps, response.completed_steps, response.failed_steps) == (1, 1, 0)
    assert response.progress_percentage == 100.0
    (item,) = response.step_results
    assert item == response.result["step_results"][0]
    assert item["status"] == "completed" and item["exit_code"] == 0 and item["stderr"] == ""
    assert item["stdout"].split()[:3] == ["USER", "PID", "%CPU"]
    assert item["started_at"] and item["completed_at"] and item["duration_ms"] >= 0
    rendered = summary(response)
    assert rendered.startswith("```text\nUSER") and "%CPU" in rendered
    assert again.status == UpstreamStatus.COMPLETED and again.execution_id != response.execution_id
    # the same call again (same plan, same context) is the same execution: nothing runs twice
    assert repeated.execution_id == response.execution_id
    assert repeated.step_results == response.step_results
    row = await engine.pool.fetchrow(
        "SELECT tenant_id, actor_id, actor, metadata FROM execution.executions"
        " WHERE execution_id = $1", response.execution_id)
    assert (row["tenant_id"], row["actor_id"], row["actor"]) == ("default", 1, "principal:1")
    kept = __import__("json").loads(row["metadata"])["upstream"]
    assert kept == {"actor_id": 1, "context": {"session_id": context["session_id"]}}
    print(f"stage E immediate: {response.status.value}, {len(rendered)} chars rendered, "
          f"second call a new execution: {again.execution_id != response.execution_id}")


async def test_asset_query_output_has_assets_and_count(
        stage_e_settings: None, asset_service: str) -> None:
    ASSET_SERVICE.assets.extend([
        {"id": "7", "hostname": "db-prod-1", "ip_address": "10.1.0.7", "connector": "ssh",
         "environment": "production", "service_type": "database", "os": "linux"}])
    executor = StageEExecutor()
    try:
        response = await orchestrator_calls(
            executor, load("rule_asset_query_production.json")["plan"], chat_context())
    finally:
        await executor.close()
    assert response.status == UpstreamStatus.COMPLETED, response.error_message
    (item,) = response.step_results
    assert item["output"]["count"] == 1
    assert item["output"]["assets"][0]["hostname"] == "db-prod-1"
    assert "**Found 1 asset(s)**" in summary(response)


async def test_plan_with_approval_points_returns_at_once_pending(
        stage_e_settings: None, engine: Any) -> None:
    plan = load("approval_points_metadata.json")["plan"]
    assert plan["execution_metadata"]["approval_points"]
    executor = StageEExecutor()
    try:
        response = await orchestrator_calls(executor, plan, chat_context())
    finally:
        await executor.close()
    assert response.status == UpstreamStatus.PENDING_APPROVAL, response
    assert isinstance(response.execution_id, uuid.UUID)
    assert response.step_results is None and response.completed_at is None
    gates = await engine.pool.fetch(
        "SELECT gate, state::text FROM execution.approvals WHERE execution_id = $1",
        response.execution_id)
    assert [tuple(g) for g in gates] == [("step_005_restart_service", "pending")]
    await engine.cancel(str(response.execution_id), "alice", "test over")
    await wait_status(engine, str(response.execution_id), "cancelled", timeout=60)


async def test_bad_plan_is_an_upstream_failure_that_started_nothing(
        stage_e_settings: None, engine: Any, temporal_client: Client) -> None:
    tenant = f"badplan-{uuid.uuid4().hex[:8]}"
    executor = StageEExecutor()
    try:
        response = await orchestrator_calls(executor, load("dependency_cycle.json")["plan"],
                                            chat_context(tenant_id=tenant, actor_id=7))
        not_an_id = await orchestrator_calls(
            executor, load("plan_v1_schema_example.json")["plan"],
            chat_context(tenant_id=tenant, actor_id="seven"))
        # in prod (the test policy is strict there) principal:7 holds no grant: RBAC refuses
        denied = await orchestrator_calls(
            executor, load("plan_v1_schema_example.json")["plan"],
            chat_context(tenant_id=tenant, actor_id=7, environment="prod"))
    finally:
        await executor.close()
    assert not_an_id.status == UpstreamStatus.FAILED and "actor_id" in not_an_id.error_message
    assert denied.status == UpstreamStatus.FAILED, denied
    assert (denied.error_message or "").startswith("execution refused"), denied.error_message
    assert response.status == UpstreamStatus.FAILED
    assert "cycle" in (response.error_message or ""), response.error_message
    assert response.step_results == [] and response.result["started"] is False
    assert response.total_steps == 2 and response.completed_steps == 0
    counts = {t: await engine.pool.fetchval(
        f"SELECT count(*) FROM execution.{t} WHERE tenant = $1", tenant)
        for t in ("executions", "idempotency_records")}
    workflows = await temporal_client.count_workflows(f"OpsTenant = '{tenant}'")
    assert counts == {"executions": 0, "idempotency_records": 0} and workflows.count == 0
    print(f"stage E bad plan: {response.error_message}; refused: {denied.error_message}; "
          f"bad actor id: {not_an_id.error_message}; rows {counts}, workflows {workflows.count}")


async def test_background_plan_returns_at_once_queued_with_no_worker_on_the_queue(
        stage_e_settings: None, engine: Any, temporal_client: Client,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A background plan (SLA medium) whose task queue no worker serves: the call returns
    the started execution, queued, without waiting for anything to run."""
    monkeypatch.setenv("OPSC_TASK_QUEUE", f"opsc-nobody-{uuid.uuid4().hex[:8]}")
    executor = StageEExecutor()
    started = asyncio.get_running_loop().time()
    try:
        response = await orchestrator_calls(
            executor, load("rule_check_nginx_and_processes.json")["plan"], chat_context())
        took = asyncio.get_running_loop().time() - started
        (execution_id, workflow_id) = await engine.pool.fetchrow(
            "SELECT execution_id::text, workflow_id FROM execution.idempotency_records"
            " WHERE execution_id = $1", response.execution_id)
        await temporal_client.get_workflow_handle(workflow_id).terminate("test over")
    finally:
        await executor.close()
    assert response.status == UpstreamStatus.QUEUED
    assert response.execution_mode.value == "background"
    assert response.sla_class.value == "medium" and response.total_steps == 2
    assert response.step_results is None and execution_id == str(response.execution_id)
    print(f"stage E background: {response.status.value} after {took:.2f} s")
