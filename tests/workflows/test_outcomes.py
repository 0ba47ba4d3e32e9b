"""How runs end, as the workflow and the mirror tell it: deadlines, steps of runs that never
started them, attempts of cancelled steps, and the step an error names."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from opsconductor.safety.timeouts import FALLBACK_MATRIX, apply_overrides
from opsconductor.schema.enums import ActionClass, SlaClass
from opsconductor.schema.messages import ExecutionResult
from opsconductor.schema.request import TimeoutOverrides
from tests.helpers import (
    execution_row,
    file_exists,
    pending,
    request,
    shell,
    step,
    step_rows,
    until,
    wait_for,
)


async def workflow_result(engine: Any, execution_id: str) -> ExecutionResult:
    """The workflow's own view (its `result` query), not the mirror's."""
    handle = await engine.handle(execution_id)
    return await handle.query("result", result_type=ExecutionResult)  # type: ignore[no-any-return]


def test_a_step_timeout_longer_than_the_deadline_is_cut_to_fit_it() -> None:
    base = FALLBACK_MATRIX[(SlaClass.FAST, ActionClass.READ)]
    policy = apply_overrides(base, TimeoutOverrides(execution_timeout_seconds=5,
                                                    step_timeout_seconds=60))
    assert policy.execution_timeout_seconds == 5
    assert policy.step_timeout_seconds == 5


async def test_execution_deadline_shorter_than_a_step_timeout_holds(engine: Any) -> None:
    began = time.monotonic()
    resp = await engine.execute(request(
        [shell("a", "sleep 20")],
        timeouts={"execution_timeout_seconds": 5, "step_timeout_seconds": 60}), wait=False)
    result = await engine.result(resp.execution_id)
    elapsed = time.monotonic() - began
    assert result.status.value == "timeout", result
    assert "deadline of 5s" in (result.error or "")
    assert elapsed < 18, f"the run took {elapsed:.1f}s: the 5 s deadline was not kept"
    row = await execution_row(engine.pool, resp.execution_id)
    assert row["st"] == "timeout"
    window = (row["deadline_at"] - row["started_at"]).total_seconds()
    assert 5 <= window < 7, f"deadline {window:.1f}s after the start"


async def test_steps_of_a_rejected_run_end_skipped(engine: Any) -> None:
    resp = await engine.execute(request([step("a"), step("b", deps=["a"])],
                                        approval_level=1, environment="staging"), wait=False)
    waiting = await until(engine, resp.workflow_id, pending)
    assert waiting.waiting_kind is not None and waiting.waiting_kind.value == "approval"
    out = await engine.reject(resp.execution_id, "bob", "not now")
    assert out.accepted, out
    result = await engine.result(resp.execution_id)
    assert result.status.value == "rejected"
    own = await workflow_result(engine, resp.execution_id)
    assert {s.step_id: s.status.value for s in own.steps} == {"a": "skipped", "b": "skipped"}
    progress = await engine.progress(resp.execution_id)
    assert [s.status.value for s in progress.steps] == ["skipped", "skipped"]
    rows = await step_rows(engine.pool, resp.execution_id)
    assert {k: r["status"] for k, r in rows.items()} == {"a": "skipped", "b": "skipped"}


async def test_steps_of_an_expired_run_end_skipped(engine: Any) -> None:
    resp = await engine.execute(request([step("a")], approval_level=1, environment="staging",
                                        timeouts={"approval_timeout_seconds": 1}), wait=False)
    result = await engine.result(resp.execution_id)
    assert result.status.value == "timeout"
    assert result.approval_state.value == "expired"
    own = await workflow_result(engine, resp.execution_id)
    assert [(s.step_id, s.status.value) for s in own.steps] == [("a", "skipped")]
    rows = await step_rows(engine.pool, resp.execution_id)
    assert rows["a"]["status"] == "skipped"


async def test_a_step_cancelled_mid_run_shows_its_attempts(engine: Any,
                                                           tmp_path: Path) -> None:
    started = tmp_path / "started"
    resp = await engine.execute(request([shell("a", f"touch {started}; sleep 60")]),
                                wait=False)
    await wait_for(file_exists(started), what="the step's command to start", timeout=30)
    out = await engine.cancel(resp.execution_id, "alice", "attempts test")
    assert out.accepted, out
    result = await engine.result(resp.execution_id)
    assert result.status.value == "cancelled"
    [only] = result.steps
    assert (only.status.value, only.attempts) == ("cancelled", 1)
    progress = await engine.progress(resp.execution_id)
    assert progress.steps[0].attempts == 1
    rows = await step_rows(engine.pool, resp.execution_id)
    assert (rows["a"]["status"], rows["a"]["attempts"]) == ("cancelled", 1)


async def test_the_final_error_names_the_step_that_aborted_the_run(engine: Any) -> None:
    resp = await engine.execute(request(
        [shell("tolerated", "exit 3", failure_handling="continue"),
         shell("fatal", "exit 4")],
        timeouts={"max_attempts": 1}), wait=False)
    result = await engine.result(resp.execution_id)
    assert result.status.value == "failed"
    statuses = {s.step_id: s.status.value for s in result.steps}
    assert statuses == {"tolerated": "failed", "fatal": "failed"}
    assert (result.error or "").startswith("step fatal failed"), result.error
    row = await execution_row(engine.pool, resp.execution_id)
    assert row["error"].startswith("step fatal failed"), row["error"]
