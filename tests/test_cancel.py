"""Cancellation: signal and native cancel stop the command, run rollback, end `cancelled`."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from opsconductor.starter.binaries import temporal_cli
from tests.helpers import (
    events,
    pending,
    pids_in,
    request,
    shell,
    step,
    until,
    wait_for,
    wait_status,
)
from tests.processes import alive

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _long_running(engine: Any, tmp_path: Path, log: Path) -> tuple[Any, list[int]]:
    pids = tmp_path / "pids"
    req = request(
        [shell("prep", f"echo prep >> {log}", idempotent=True),
         shell("config", f"echo config >> {log}", deps=["prep"], idempotent=True),
         shell("long", f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait",
               deps=["config"])],
        environment="staging",
        plan_extra={"rollback_plan": [
            {"step_id": "prep", "rollback_action": f"echo undo-prep >> {log}"},
            {"step_id": "config", "rollback_action": f"echo undo-config >> {log}"},
            {"step_id": "long", "rollback_action": f"echo undo-long >> {log}"}]})
    resp = await engine.execute(req, wait=False)
    return resp, await wait_for(pids_in(pids, 2), timeout=20,
                                what="the long step's shell and sleep pids")


async def test_cancel_signal_kills_the_command_and_rolls_back_in_reverse(
        engine: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    resp, pids = await _long_running(engine, tmp_path, log)
    assert all(alive(p) for p in pids)
    outcome = await engine.cancel(resp.execution_id, "bob", "maintenance window closed")
    assert outcome.accepted, outcome.reason
    result = await engine.result(resp.execution_id)
    assert result.status.value == "cancelled"
    assert result.cancel_actor == "bob" and result.cancel_reason == "maintenance window closed"
    assert not [p for p in pids if alive(p)]
    # rollback only for completed steps, newest first; the running step had none to undo
    assert log.read_text().split() == ["prep", "config", "undo-config", "undo-prep"]
    by_id = {s.step_id: s.status.value for s in result.steps}
    assert by_id == {"prep": "completed", "config": "completed", "long": "cancelled"}

    row = await engine.pool.fetchrow(
        "SELECT status::text AS st, cancel_actor, cancel_reason FROM execution.executions "
        "WHERE execution_id = $1", uuid.UUID(resp.execution_id))
    assert (row["st"], row["cancel_actor"], row["cancel_reason"]) == (
        "cancelled", "bob", "maintenance window closed")
    evs = await events(engine.pool, resp.execution_id)
    kinds = [e["event_type"] for e in evs]
    assert "cancel.requested" in kinds and "rollback.completed" in kinds
    done = next(e for e in evs if e["event_type"] == "cancel.completed")
    assert done["message"] == "clean cancel"


async def test_native_temporal_cancel_ends_cancelled_too(engine: Any, tmp_path: Path,
                                                        temporal_server: Any) -> None:
    log = tmp_path / "log"
    resp, pids = await _long_running(engine, tmp_path, log)
    proc = await asyncio.to_thread(subprocess.run, [
        temporal_cli(), "workflow", "cancel", "--address", temporal_server.address,
        "--workflow-id", resp.workflow_id], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    status = await wait_status(engine, resp.execution_id, "cancelled")
    assert status["cancel_actor"] == "temporal"
    assert not [p for p in pids if alive(p)]
    assert log.read_text().split() == ["prep", "config", "undo-config", "undo-prep"]
    desc = await engine.temporal.get_workflow_handle(resp.workflow_id).describe()
    assert desc.status.name == "CANCELED"


async def test_cancel_while_waiting_for_approval_ends_promptly(engine: Any,
                                                              tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    resp = await engine.execute(request([shell("s", f"touch {marker}")], approval_level=1,
                                        environment="staging"), wait=False)
    await until(engine, resp.workflow_id, pending)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await engine.cancel(resp.execution_id, "alice", "changed my mind")).accepted
    result = await engine.result(resp.execution_id)
    assert loop.time() - t0 < 10
    assert result.status.value == "cancelled" and not marker.exists()
    assert result.steps[0].status.value == "skipped"


async def test_failed_step_with_rollback_handling_runs_the_rollback(engine: Any,
                                                                   tmp_path: Path) -> None:
    log = tmp_path / "log"
    req = request(
        [shell("one", f"echo one >> {log}"),
         shell("two", "exit 4", deps=["one"], failure_handling="rollback")],
        plan_extra={"rollback_plan": [{"step_id": "one",
                                       "rollback_action": f"echo undo-one >> {log}"}]})
    resp = await engine.execute(req, wait=True)
    assert resp.result.status.value == "failed"
    assert log.read_text().split() == ["one", "undo-one"]


async def test_a_finished_run_cannot_be_cancelled(
        engine: Any) -> None:
    resp = await engine.execute(request([step("s")]), wait=True)
    late = await engine.cancel(resp.execution_id, "bob", "too late")
    assert not late.accepted
