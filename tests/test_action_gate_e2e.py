"""A denied actor runs nothing on the host, by any path.

`bot-ci` may execute in prod but never `shell` (rule `no-prod-shell-for-bots`). Every path
that once ran `touch MARKER` for it anyway is tried twice: through the client (refused at
submission, nothing written) and as an attacker with access to the Temporal namespace would,
by starting the workflow directly (the worker refuses at the moment of action). Either way no
marker appears and each refusal is an audit row naming `shell`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opsconductor.schema.spec import build_spec
from opsconductor.schema.validation import validate_request
from opsconductor.starter.client import SubmissionRefused
from opsconductor.workflows.execution import ExecutionWorkflow
from tests.helpers import request, step, wait_for


def _env_tool(m: Path) -> dict[str, Any]:
    return {"steps": [step("a", "env", args=["sh", "-c", f"touch {m}"])]}


def _find_exec(m: Path) -> dict[str, Any]:
    return {"steps": [step("a", "find", args=["/tmp", "-maxdepth", "0", "-exec", "touch",
                                              str(m), ";"])]}


def _precondition(m: Path) -> dict[str, Any]:
    return {"steps": [{**step("a", "noop"), "preconditions": [f"command: touch {m}"]}]}


def _success_criterion(m: Path) -> dict[str, Any]:
    return {"steps": [{**step("a", "noop"), "success_criteria": [f"command: touch {m}"]}]}


def _validate_step(m: Path) -> dict[str, Any]:
    return {"steps": [step("a", "noop"),
                      step("b", "validate", ["a"], checks=[f"command: touch {m}"])]}


def _safety_check(m: Path) -> dict[str, Any]:
    return {"steps": [step("a", "noop")],
            "safety_checks": [{"check": f"command: touch {m}", "stage": "before",
                               "failure_action": "warn"}]}


def _rollback(m: Path) -> dict[str, Any]:
    return {"steps": [step("a", "noop"),
                      step("b", "noop", ["a"], fail=True, failure_handling="rollback")],
            "rollback_plan": [{"step_id": "a", "rollback_action": f"touch {m}"}]}


PATHS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "env tool": _env_tool, "find -exec": _find_exec, "precondition": _precondition,
    "success criterion": _success_criterion, "validate step": _validate_step,
    "plan safety check": _safety_check, "rollback action": _rollback,
}


def hostile(plan: dict[str, Any], tenant: str) -> dict[str, Any]:
    steps = plan.pop("steps")
    return request(steps, tenant=tenant, actor="bot-ci", environment="prod", plan_extra=plan)


async def shell_refusals(pool: Any, tenant: str, execution_id: str | None = None) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM execution.rbac_audit WHERE tenant = $1 AND actor = 'bot-ci'"
        " AND tool = 'shell' AND decision = 'deny' AND rule_id = 'no-prod-shell-for-bots'"
        " AND ($2::text IS NULL OR execution_id = $2)", tenant, execution_id))


@pytest.mark.parametrize("path", list(PATHS))
async def test_refused_at_submission(engine: Any, tmp_path: Path, path: str) -> None:
    tenant = f"gate-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "MARKER"
    with pytest.raises(SubmissionRefused, match="shell"):
        await engine.execute(hostile(PATHS[path](marker), tenant), wait=False)
    refusals = await shell_refusals(engine.pool, tenant)
    print(f"\n[attack] {path} via the client: refused; marker written: {marker.exists()}; "
          f"{refusals} audited refusal(s)")
    assert not marker.exists()
    assert refusals >= 1
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.idempotency_records WHERE tenant = $1", tenant) == 0


@pytest.mark.parametrize("path", list(PATHS))
async def test_refused_by_the_worker_when_submission_is_bypassed(
        engine: Any, tmp_path: Path, path: str) -> None:
    tenant = f"gate-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "MARKER"
    execution_id = str(uuid.uuid4())
    spec = build_spec(validate_request(hostile(PATHS[path](marker), tenant)),
                      execution_id=execution_id, workflow_id=f"attack-{execution_id}",
                      idempotency_key=uuid.uuid4().hex)
    await engine.temporal.start_workflow(ExecutionWorkflow.run, spec, id=spec.workflow_id,
                                         task_queue=engine.settings.task_queue)
    status = await wait_for(lambda: engine.pool.fetchval(
        "SELECT status::text FROM execution.executions WHERE execution_id = $1"
        " AND status IN ('completed', 'failed', 'partial', 'cancelled', 'timeout')",
        uuid.UUID(execution_id)), timeout=60, what=f"the {path} run to end")
    refusals = await shell_refusals(engine.pool, tenant, execution_id)
    print(f"\n[attack] {path} started directly in Temporal: run {status}; marker written: "
          f"{marker.exists()}; {refusals} audited refusal(s)")
    assert not marker.exists(), f"{path}: the marker was written ({status})"
    assert refusals >= 1, path
