"""Determinism: recorded histories replay against today's workflow code.

`tests/histories/*.json` were recorded from real runs (approval gate, failure with rollback,
cancel, a rejected approval point, an expired approval, safety checks with a tolerated and an
aborting failure). A change to ExecutionWorkflow that would break running executions fails here;
guard such a change with `workflow.patched()`. To record them again after a deliberate,
versioned change: OPSC_RECORD_HISTORIES=1 pytest tests/test_replay.py
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from opsconductor.schema.payloads import DATA_CONVERTER
from opsconductor.starter.worker import workflow_runner
from opsconductor.workflows.execution import ExecutionWorkflow
from tests.helpers import pending, request, shell, step, until

pytestmark = pytest.mark.asyncio(loop_scope="session")
HISTORIES = Path(__file__).resolve().parent / "histories"


def replayer() -> Replayer:
    return Replayer(workflows=[ExecutionWorkflow], data_converter=DATA_CONVERTER,
                    workflow_runner=workflow_runner(strict=True))


async def _approved_run(engine: Any, tmp: Path) -> str:
    resp = await engine.execute(request(
        [shell("a", "echo one"), step("b", deps=["a"])], approval_level=1,
        environment="staging"), wait=False)
    await until(engine, resp.workflow_id, pending)
    await engine.approve(resp.execution_id, "mallory")  # refused: no role
    await engine.approve(resp.execution_id, "bob")
    await engine.result(resp.execution_id)
    return str(resp.workflow_id)


async def _rolled_back_run(engine: Any, tmp: Path) -> str:
    resp = await engine.execute(request(
        [shell("a", "true"), shell("b", "exit 2", deps=["a"], failure_handling="rollback")],
        plan_extra={"rollback_plan": [{"step_id": "a", "rollback_action": "true"}]}),
        wait=True)
    return str(resp.workflow_id)


async def _cancelled_run(engine: Any, tmp: Path) -> str:
    started = tmp / "started"
    resp = await engine.execute(request(
        [shell("a", f"touch {started}; sleep 60")]), wait=False)
    while not started.exists():
        await asyncio.sleep(0.05)
    await engine.cancel(resp.execution_id, "alice", "replay test")
    await engine.result(resp.execution_id)
    return str(resp.workflow_id)


async def _point_rejected_run(engine: Any, tmp: Path) -> str:
    resp = await engine.execute(request(
        [shell("before", "echo one"), shell("gated", "echo two", deps=["before"]),
         shell("after", "echo three", deps=["gated"])], environment="staging",
        approval_points=[{"step_id": "gated", "reason": "touches the DB",
                          "risk_level": "high", "approver_role": "dba"}]), wait=False)
    await until(engine, resp.workflow_id, pending)
    await engine.reject(resp.execution_id, "erin", "not today")
    await engine.result(resp.execution_id)
    return str(resp.workflow_id)


async def _expired_run(engine: Any, tmp: Path) -> str:
    resp = await engine.execute(request(
        [step("a")], approval_level=1, environment="staging",
        timeouts={"approval_timeout_seconds": 1}), wait=False)
    await engine.result(resp.execution_id)
    return str(resp.workflow_id)


async def _checked_partial_run(engine: Any, tmp: Path) -> str:
    resp = await engine.execute(request(
        [shell("a", "echo one"), shell("b", "exit 3", failure_handling="continue"),
         shell("c", "exit 4")],
        timeouts={"max_attempts": 1},
        plan_extra={"safety_checks": [
            {"check": "host reachable", "stage": "before"},
            {"check": "exit_code == 0", "stage": "during", "failure_action": "warn"},
            {"check": "exit_code == 0", "stage": "after", "failure_action": "warn"}]}),
        wait=False)
    await engine.result(resp.execution_id)
    return str(resp.workflow_id)


SCENARIOS = {"approved": _approved_run, "rolled_back": _rolled_back_run,
             "cancelled": _cancelled_run, "point_rejected": _point_rejected_run,
             "expired": _expired_run, "checked_partial": _checked_partial_run}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_fresh_history_replays(engine: Any, tmp_path: Path, name: str) -> None:
    workflow_id = await SCENARIOS[name](engine, tmp_path)
    history = await engine.temporal.get_workflow_handle(workflow_id).fetch_history()
    await replayer().replay_workflow(history)
    if os.environ.get("OPSC_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(json.dumps(history.to_json_dict(), indent=1))


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json("recorded", path.read_text())
    await replayer().replay_workflow(history)
