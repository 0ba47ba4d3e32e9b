"""The plan's safety checks of one stage (before / during / after), run as one activity.

Every verdict becomes an event; a failed check whose action is `abort` comes back as the
error that ends the run.
"""

from __future__ import annotations

from typing import Literal

from temporalio import workflow

from opsconductor.schema.messages import SafetyChecksInput, SafetyChecksResult
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.schema.windows import is_window_check
from opsconductor.workflows.options import SAFETY_CHECKS_RETRY, SAFETY_CHECKS_TIMEOUT
from opsconductor.workflows.recording import Recorder
from opsconductor.workflows.state import RunState

Stage = Literal["before", "during", "after"]


async def run_safety_checks(spec: ExecutionSpec, state: RunState, recorder: Recorder,
                            stage: Stage, windows_gated: bool = False) -> str | None:
    """Run `stage`'s checks; the error when one failed with `abort`, else None. With the
    change-window gate on, a maintenance-window check is the gate's (workflows/windows.py)."""
    checks = [c for c in spec.safety_checks if c.stage == stage
              and not (windows_gated and is_window_check(c.check))]
    if not checks:
        return None
    res = await workflow.execute_activity(
        "run_safety_checks",
        SafetyChecksInput(execution_id=spec.execution_id, stage=stage, checks=checks,
                          prior_outputs=state.prior_outputs(), tenant=spec.tenant,
                          actor=spec.actor, environment=spec.environment),
        result_type=SafetyChecksResult, start_to_close_timeout=SAFETY_CHECKS_TIMEOUT,
        retry_policy=SAFETY_CHECKS_RETRY, summary=f"{stage} safety checks")
    for outcome in res.outcomes:
        state.journal.emit(f"safety_check.{outcome.kind}",
                           message=f"{outcome.result.expr}: {outcome.result.detail}",
                           data={"stage": stage, "action": outcome.action})
    error = None
    if res.abort:
        failed = next((o for o in res.outcomes if o.action == "abort"), None)
        error = (f"{stage} safety check failed: {failed.result.expr}: {failed.result.detail}"
                 if failed else f"{stage} safety check failed")
    await recorder.flush()
    return error
