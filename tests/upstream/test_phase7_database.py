"""Our migrations on a database OpsConductor's init-schema.sql made, and its readers on ours.

A fresh database on the session's PostgreSQL gets OpsConductor's Phase 7 schema (re-typed
facts, `phase7_schema.sql`) and one execution of its own (a step, an event, an approval);
our migrations run; a real plan (one of its planner's, with an approval) runs through a real
worker on that database; OpsConductor's repository SQL and status route read both back into
its models (re-stated in `upstream.py`), and our own client reads both too.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from temporalio.client import Client

from opsconductor.activities.db import create_pool
from opsconductor.schema.config import Settings
from opsconductor.schema.migrate import migrate
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.worker import build_worker
from tests.helpers import unique_queue, wait_for, wait_status
from tests.planner.helpers import load
from tests.upstream.upstream import (
    APPROVAL,
    EVENTS,
    EXECUTION_BY_ID,
    STATUS_ROUTE,
    STEPS,
    UpstreamApproval,
    UpstreamEvent,
    UpstreamExecution,
    UpstreamStatus,
    UpstreamStep,
    reader,
    rows,
)

PHASE7 = Path(__file__).with_name("phase7_schema.sql")
THEIR_EXECUTION = uuid.UUID("7a0e0000-0000-4000-8000-000000000001")
THEIR_STEP = uuid.UUID("7a0e0000-0000-4000-8000-000000000002")
THEIR_TRACE = uuid.UUID("7a0e0000-0000-4000-8000-000000000003")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
async def phase7_url(pg_url: str) -> AsyncIterator[str]:
    """A database of the session's server holding OpsConductor's Phase 7 schema and rows."""
    name = f"opsc_phase7_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(pg_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(PHASE7.read_text())
            await _their_rows(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _their_rows(conn: asyncpg.Connection) -> None:
    """One finished execution as OpsConductor's own executor and engine write them."""
    plan = {"steps": [{"tool": "asset-query", "inputs": {"limit": 5}}]}
    result = {"total_steps": 1, "successful_steps": 1, "failed_steps": 0,
              "step_results": [{"step_index": 0, "tool": "asset-query", "status": "completed",
                                "output": {"assets": [], "count": 0}}]}
    await conn.execute(
        """
        INSERT INTO execution.executions (execution_id, tenant_id, actor_id, idempotency_key,
          plan_snapshot, execution_mode, sla_class, approval_level, status, previous_status,
          started_at, completed_at, timeout_at, result, trace_id, tags, metadata)
        VALUES ($1, 'default', 42, $2, $3::jsonb, 'immediate', 'fast', 1, 'completed',
          'running', now() - interval '9 seconds', now() - interval '8 seconds',
          now() + interval '1 minute', $4::jsonb, $5, '["ops", "disk"]', '{"source": "chat"}')
        """, THEIR_EXECUTION, "ab" * 32, json.dumps(plan), json.dumps(result), THEIR_TRACE)
    await conn.execute(
        """
        INSERT INTO execution.execution_steps (step_id, execution_id, step_index, step_name,
          step_type, target_hostname, status, started_at, completed_at, duration_ms,
          input_data, output_data, retry_count)
        VALUES ($1, $2, 0, 'Find assets', 'asset-query', 'asset-service', 'completed',
          now() - interval '9 seconds', now() - interval '8 seconds', 1234,
          '{"limit": 5}', '{"count": 0}', 0)
        """, THEIR_STEP, THEIR_EXECUTION)
    await conn.execute(
        """
        INSERT INTO execution.execution_events (execution_id, event_type, from_status,
          to_status, actor_id, actor_type, details)
        VALUES ($1, 'status_change', 'running', 'completed', 42, 'worker', '{"why": "done"}')
        """, THEIR_EXECUTION)
    await conn.execute(
        """
        INSERT INTO execution.approvals (execution_id, approval_level, plan_hash, approver_id,
          approver_comment, state, responded_at)
        VALUES ($1, 1, $2, 42, 'fine by me', 'approved', now() - interval '10 seconds')
        """, THEIR_EXECUTION, "cd" * 32)


async def _upstream_view(url: str, execution_id: Any) -> dict[str, Any]:
    """Everything OpsConductor's readers return for one execution, parsed into its models."""
    conn = await reader(url)
    try:
        execution = [UpstreamExecution.model_validate(r)
                     for r in await rows(conn, EXECUTION_BY_ID, execution_id)]
        steps = await rows(conn, STEPS, execution_id)
        events = await rows(conn, EVENTS, execution_id)
        approval = [UpstreamApproval.model_validate(r)
                    for r in await rows(conn, APPROVAL, execution_id)]
        status = await rows(conn, STATUS_ROUTE, execution_id)
    finally:
        await conn.close()
    return {"execution": execution, "steps": steps, "events": events, "approval": approval,
            "status": status}


async def test_migrations_keep_phase7_rows_and_its_readers_read_our_runs(
        phase7_url: str, temporal_client: Client, tmp_path: Path) -> None:
    before = await _upstream_view(phase7_url, THEIR_EXECUTION)
    their_step = UpstreamStep.model_validate(before["steps"][0])

    # `opsconductor db migrate`, as the report ran it (it stopped at "tenant" then)
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opsconductor.starter.cli", "db", "migrate", "--json",
        env={**os.environ, "OPSC_DATABASE_URL": phase7_url, "OPSC_HOME": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(cli.communicate(), 120)
    assert cli.returncode == 0, (out + err).decode()
    applied = json.loads(out)["applied"]
    assert applied[0] == "001_core" and "012_upstream_compat" in applied
    assert await migrate(phase7_url) == []  # a second run has nothing left to do

    # Their execution: every reader returns what it returned before, field for field.
    after = await _upstream_view(phase7_url, THEIR_EXECUTION)
    assert after["execution"] == before["execution"]
    assert after["approval"] == before["approval"]
    assert after["status"] == before["status"]
    assert UpstreamStep.model_validate(after["steps"][0]) == their_step
    strip = [{k: v for k, v in e.items() if k != "id"} for e in before["events"]]
    assert [UpstreamEvent.model_validate({k: v for k, v in e.items() if k != "id"})
            for e in after["events"]] == [UpstreamEvent.model_validate(e) for e in strip]
    # ... and the original tables still hold their rows, moved aside as they were.
    conn = await asyncpg.connect(phase7_url)
    try:
        kept = {t: await conn.fetchval(f"SELECT count(*) FROM execution_phase7.{t}")
                for t in ("executions", "execution_steps", "execution_events", "approvals",
                          "timeout_policies")}
        assert kept == {"executions": 1, "execution_steps": 1, "execution_events": 1,
                        "approvals": 1, "timeout_policies": 9}
        # its step UUID is Python's uuid3 of the step key in the execution's namespace
        keys = ["step_001", "step_ac827268_systemctl_status", "étape-ü", "", "x" * 300]
        for key in keys:
            exec_id = uuid.uuid4()
            assert await conn.fetchval("SELECT execution.step_uuid($1, $2)::text",
                                       exec_id, key) == str(uuid.uuid3(exec_id, key)), key
        mapped = await conn.fetchval(
            "SELECT actor FROM execution.actor_principals WHERE actor_id = 42")
        assert mapped == "principal:42"
    finally:
        await conn.close()

    # One of its planner's plans, gated by an approval, through a real worker on this database.
    queue = unique_queue("opsc-phase7")
    pool = await create_pool(phase7_url, min_size=1, max_size=5)
    settings = Settings(home=tmp_path / "home", task_queue=queue, temporal_address="unused",
                        database_url=phase7_url)
    actor = f"stage-d-{uuid.uuid4().hex[:6]}"
    doc = {**load("plan_v1_schema_example.json"), "actor": actor, "approval_level": 1,
           "trace_id": uuid.uuid4().hex}
    try:
        async with build_worker(temporal_client, queue, pool=pool, settings=settings):
            client = ExecutionClient(temporal=temporal_client, pool=pool, settings=settings)
            resp = await client.execute(doc, wait=False)
            ours = resp.execution_id

            async def gated() -> bool:
                view = await client.status(ours)
                return view["status"] == "pending_approval" or None  # type: ignore[return-value]

            await wait_for(gated, what="the run to wait for its approval", timeout=60)
            pending = await _upstream_view(phase7_url, ours)
            assert pending["status"][0]["status"] == "pending_approval"
            assert pending["approval"][0].state.value == "pending"
            await client.approve(ours, "bob", comment="go")
            view = await wait_status(client, ours, "completed", timeout=90)
            assert view["steps"][0]["status"] == "completed"  # our reader
            # a second run of its planner's: a step fails, its dependent is skipped
            held = await client.execute({**load("rule_check_nginx_and_processes.json"),
                                         "actor": actor}, wait=True)
            theirs_by_us = await client.status(str(THEIR_EXECUTION))
            assert theirs_by_us["status"] == "completed" and theirs_by_us["tenant"] == "default"
    finally:
        await pool.close()

    seen = await _upstream_view(phase7_url, ours)
    (execution,) = seen["execution"]
    (status,) = seen["status"]
    assert status["status"] == "completed" and status["error_message"] is None
    assert status["started_at"] and status["completed_at"] >= status["started_at"]
    conn = await asyncpg.connect(phase7_url)
    try:
        principals = dict(await conn.fetch(
            "SELECT actor, actor_id FROM execution.actor_principals"))
    finally:
        await conn.close()
    assert execution.tenant_id == doc["tenant"] and execution.actor_id == principals[actor]
    assert execution.status == UpstreamStatus.COMPLETED
    assert execution.previous_status == UpstreamStatus.RUNNING
    assert execution.plan_snapshot == doc["plan"]
    assert execution.execution_mode.value == "immediate" and execution.approval_level == 1
    assert execution.trace_id == uuid.UUID(doc["trace_id"])
    assert execution.result is not None
    assert "step_results" in execution.result, execution.result
    (step_result,) = execution.result["step_results"]
    assert step_result["status"] == "completed" and step_result["exit_code"] == 0
    assert step_result["stdout"].split()[:3] == ["USER", "PID", "%CPU"]
    assert execution.result["total_steps"] == 1 and execution.result["failed_steps"] == 0
    (approval,) = seen["approval"]
    assert approval.state.value == "approved" and approval.approval_level == 1
    assert approval.approver_id == principals["bob"] and approval.approver_comment == "go"
    assert approval.responded_at is not None

    # Steps and events: every row read by its models, every column with its meaning.
    (step,) = seen["steps"]
    plan_step = doc["plan"]["plan"]["steps"][0]["id"]
    assert step["step_index"] == 0 and step["step_type"] == "ps"
    assert step["step_key"] == step["step_name"] == plan_step  # our id, beside its UUID
    assert step["step_id"] == str(uuid.uuid3(uuid.UUID(ours), plan_step))
    assert step["status"] == step["exact_status"] == "completed" and step["retry_count"] == 0
    assert step["duration_ms"] == int(step["duration_ms"]) and step["max_retries"] == 3
    assert isinstance(step["output_data"], dict) and step["created_at"] is not None
    statuses = [(e["from_status"], e["to_status"]) for e in seen["events"]
                if e["event_type"] == "execution.status"]
    assert statuses == [("queued", "pending_approval"), ("pending_approval", "approved"),
                        ("approved", "running"), ("running", "completed")], statuses
    steps_read = [UpstreamStep.model_validate(r) for r in seen["steps"]]
    events_read = [UpstreamEvent.model_validate(e) for e in seen["events"]]
    assert all(e.event_id and e.details is not None for e in events_read)
    assert {e.actor_id for e in events_read if e.actor_type == "user"} <= set(principals.values())
    # a step's own moves: its enum's values, the exact one kept beside
    moves = [(e["from_status"], e["to_status"], e["exact_from_status"], e["exact_to_status"])
             for e in seen["events"] if e["event_type"] == "step.status"]
    assert ("queued", "running", "pending", "running") in moves, moves
    # our readers read the tables, exact as ever
    conn = await asyncpg.connect(phase7_url)
    try:
        exact = await conn.fetch("SELECT from_status, to_status FROM execution.event_log"
                                 " WHERE execution_id = $1 AND event_type = 'step.status'", ours)
        runs = await conn.fetch("SELECT step_id, status FROM execution.step_runs"
                                " WHERE execution_id = $1", ours)
    finally:
        await conn.close()
    assert ("pending", "running") in [tuple(r) for r in exact]
    assert [tuple(r) for r in runs] == [(plan_step, "completed")]
    # The failed run: its models read a failed step and a skipped one (as `cancelled`).
    failed = await _upstream_view(phase7_url, held.execution_id)
    (fexec,) = failed["execution"]
    assert fexec.status == UpstreamStatus.FAILED and fexec.error_message
    fsteps = [UpstreamStep.model_validate(r) for r in failed["steps"]]
    fevents = [UpstreamEvent.model_validate(e) for e in failed["events"]]
    assert [(r["step_key"], r["status"], r["exact_status"]) for r in failed["steps"]] == [
        ("step_ac827268_systemctl_status", "failed", "failed"),
        ("step_1fbf459c_ps_list", "cancelled", "skipped")]
    assert len({s.step_id for s in fsteps + steps_read}) == 3  # one UUID per step
    assert ("cancelled", "skipped") in [(e["to_status"], e["exact_to_status"])
                                        for e in failed["events"]]
    assert failed["approval"] == [] and failed["status"][0]["status"] == "failed"
    n = {"executions": (len(seen["execution"]) + len(failed["execution"]), 2),
         "approvals": (len(seen["approval"]), 1),
         "status route": (len(seen["status"]) + len(failed["status"]), 2),
         "steps": (len(steps_read) + len(fsteps), len(seen["steps"]) + len(failed["steps"])),
         "events": (len(events_read) + len(fevents),
                    len(seen["events"]) + len(failed["events"]))}
    assert all(got == want > 0 for got, want in n.values()), n
    print(f"phase7: {sum(kept.values())} original rows kept, {len(applied)} migrations; "
          "ours read by its SQL into its models: "
          + ", ".join(f"{k} {a}/{b}" for k, (a, b) in n.items()))
