"""Temporal's own status tells the truth: failed, timed-out and rejected runs close as Failed
(the result in the failure's details), cancelled ones as Canceled however they were cancelled,
completed and partial ones as Completed; each run carries a summary, its plan as details and
current details that say where it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from opsconductor.schema.errors import ErrorType
from tests.helpers import (
    execution_row,
    file_exists,
    pending,
    request,
    shell,
    step,
    until,
    wait_for,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def closed_status(engine: Any, workflow_id: str) -> WorkflowExecutionStatus:
    """The run's Temporal status once it has closed."""
    handle = engine.temporal.get_workflow_handle(workflow_id)

    async def closed() -> WorkflowExecutionStatus | None:
        status = (await handle.describe()).status
        return None if status == WorkflowExecutionStatus.RUNNING else status

    return await wait_for(closed, what=f"{workflow_id} to close", timeout=60)


async def failure_of(engine: Any, workflow_id: str) -> ApplicationError:
    """The ApplicationError a Failed run closed with."""
    with pytest.raises(WorkflowFailureError) as info:
        await engine.temporal.get_workflow_handle(workflow_id).result()
    assert isinstance(info.value.cause, ApplicationError), info.value.cause
    return info.value.cause


async def current_details(engine: Any, workflow_id: str) -> str:
    meta = await engine.temporal.get_workflow_handle(workflow_id).query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return str(meta.current_details)


async def test_completed_run_is_completed_with_summary_details_and_current_details(
        engine: Any) -> None:
    resp = await engine.execute(request(
        [shell("a", "echo one", description="say one"), step("b", deps=["a"])],
        metadata={"title": "Say one then nothing"}, tenant="acme-obs", actor="alice"),
        wait=True)
    assert resp.result.status.value == "completed"
    assert await closed_status(engine, resp.workflow_id) == WorkflowExecutionStatus.COMPLETED
    desc = await engine.temporal.get_workflow_handle(resp.workflow_id).describe()
    summary, details = await desc.static_summary(), await desc.static_details()
    assert summary is not None and details is not None
    for part in ("Say one then nothing", "acme-obs/dev", "by alice", "2 step(s)"):
        assert part in summary, summary
    assert "1. `a` (shell) — say one" in details and "2. `b` (noop)" in details, details
    assert resp.execution_id in details
    now = await current_details(engine, resp.workflow_id)
    assert now.startswith("**completed** · 2/2 steps completed"), now


async def test_failed_run_closes_failed_with_its_result_in_the_failure(engine: Any) -> None:
    resp = await engine.execute(request([shell("a", "exit 3"), step("b", deps=["a"])],
                                        timeouts={"max_attempts": 1}), wait=True)
    assert resp.result.status.value == "failed"  # the client reads it from the failure
    assert await closed_status(engine, resp.workflow_id) == WorkflowExecutionStatus.FAILED
    failure = await failure_of(engine, resp.workflow_id)
    assert failure.type == ErrorType.EXECUTION_FAILED.value
    assert failure.message.startswith("execution failed"), failure.message
    carried = failure.details[0]
    assert carried["status"] == "failed" and carried["execution_id"] == resp.execution_id
    assert {s["step_id"]: s["status"] for s in carried["steps"]} == {"a": "failed",
                                                                     "b": "skipped"}
    assert (await execution_row(engine.pool, resp.execution_id))["st"] == "failed"
    assert (await engine.result(resp.execution_id)).status.value == "failed"
    now = await current_details(engine, resp.workflow_id)
    assert "**failed**" in now and "failed steps: 1" in now and "error:" in now, now


async def test_expired_approval_closes_failed_as_timeout(engine: Any) -> None:
    resp = await engine.execute(request([step("a")], approval_level=1, environment="staging",
                                        timeouts={"approval_timeout_seconds": 1}), wait=True)
    assert resp.result.status.value == "timeout"
    assert await closed_status(engine, resp.workflow_id) == WorkflowExecutionStatus.FAILED
    failure = await failure_of(engine, resp.workflow_id)
    assert failure.type == ErrorType.EXECUTION_TIMEOUT.value
    assert failure.details[0]["approval_state"] == "expired"


async def test_rejected_run_closes_failed(engine: Any) -> None:
    resp = await engine.execute(request([step("a")], approval_level=1,
                                        environment="staging"), wait=False)
    await until(engine, resp.workflow_id, pending)
    assert "waiting: " in await current_details(engine, resp.workflow_id)
    assert (await engine.reject(resp.execution_id, "bob", "not today")).accepted
    assert await closed_status(engine, resp.workflow_id) == WorkflowExecutionStatus.FAILED
    failure = await failure_of(engine, resp.workflow_id)
    assert failure.type == ErrorType.EXECUTION_REJECTED.value
    assert (await engine.result(resp.execution_id)).status.value == "rejected"


async def test_partial_run_is_completed(engine: Any) -> None:
    resp = await engine.execute(request(
        [shell("a", "echo one"), shell("b", "exit 3", failure_handling="continue")],
        timeouts={"max_attempts": 1}), wait=True)
    assert resp.result.status.value == "partial"
    assert await closed_status(engine, resp.workflow_id) == WorkflowExecutionStatus.COMPLETED


@pytest.mark.parametrize("how", ["update", "signal", "temporal"])
async def test_cancelled_run_closes_canceled_however_cancelled(engine: Any, tmp_path: Path,
                                                               how: str) -> None:
    started = tmp_path / "started"
    resp = await engine.execute(request([shell("a", f"touch {started}; sleep 60")]),
                                wait=False)
    await wait_for(file_exists(started), what="the step to start")
    handle = engine.temporal.get_workflow_handle(resp.workflow_id)
    if how == "update":
        assert (await engine.cancel(resp.execution_id, "alice", "by update")).accepted
    elif how == "signal":
        await handle.signal("cancel", {"actor": "alice", "reason": "by signal"})
    else:
        await handle.cancel()
    assert await closed_status(engine, resp.workflow_id) == WorkflowExecutionStatus.CANCELED
    result = await engine.result(resp.execution_id)
    assert result.status.value == "cancelled"
    assert result.cancel_actor == ("temporal" if how == "temporal" else "alice")
    assert {s.step_id: s.status.value for s in result.steps} == {"a": "cancelled"}
