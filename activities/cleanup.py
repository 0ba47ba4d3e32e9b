"""Rollback and cleanup commands, run after a cancel or an abort-with-rollback.

A rollback entry's action is a command on the target of the step it undoes; it gets its own
timeout and its output is masked like any step's. `CleanupActivities` is built once by the
worker with the settings (asset lookup), the secret resolver (asset credentials) and the
masker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from opsconductor.activities.assets import resolve_asset
from opsconductor.activities.authorization import ActionDenied, ActionGate
from opsconductor.activities.executors.base import StepContext
from opsconductor.activities.executors.command import CommandExecutor
from opsconductor.safety.masking import Masker
from opsconductor.safety.rbac import RbacEngine
from opsconductor.safety.secrets import SecretResolver
from opsconductor.schema.config import Settings
from opsconductor.schema.enums import ActionClass, FailureHandling, StepKind, StepStatus
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import CleanupInput, StepResult
from opsconductor.schema.spec import StepSpec


class CleanupActivities:
    """`run_cleanup`, with the dependencies the worker built once."""

    def __init__(self, *, settings: Settings, secrets: SecretResolver, masker: Masker,
                 rbac: RbacEngine, pool: Any) -> None:
        self.settings = settings
        self.secrets = secrets
        self.masker = masker
        self.rbac = rbac
        self.pool = pool

    @activity.defn(name="run_cleanup")
    async def run_cleanup(self, inp: CleanupInput) -> StepResult:
        from opsconductor.activities.steps import _heartbeat_forever, _now

        asset = await resolve_asset(inp.target, self.settings)
        # A rollback action is a shell command on the host: authorized like a shell step,
        # for the plan's actor, before anything runs.
        gate = ActionGate(engine=self.rbac, pool=self.pool, tenant=inp.tenant, actor=inp.actor,
                          environment=inp.environment.value, execution_id=inp.execution_id,
                          step_id=f"{inp.reason}:{inp.step_id}")
        try:
            if not inp.actor:
                raise ActionDenied(f"{inp.reason} of {inp.step_id}: no actor to authorize")
            await gate.require(tool="shell", resource=asset.id if asset else inp.target,
                               command=inp.command)
        except ActionDenied as err:
            raise ApplicationError(f"{inp.reason} of {inp.step_id} not run: {err}",
                                   type=ErrorType.RBAC_DENIED, non_retryable=True) from None
        step = StepSpec(id=f"{inp.reason}:{inp.step_id}",
                        description=f"{inp.reason} of {inp.step_id}", tool="shell",
                        kind=StepKind.COMMAND, action_class=ActionClass.MODIFY,
                        inputs={"command": inp.command}, command=inp.command, target=inp.target,
                        order=0, failure_handling=FailureHandling.CONTINUE)
        ctx = StepContext(execution_id=inp.execution_id, workflow_id=inp.workflow_id,
                          tenant=inp.tenant, environment=inp.environment.value, step=step,
                          inputs=step.inputs, timeout=inp.timeout_seconds, asset=asset,
                          heartbeat=activity.heartbeat, settings=self.settings,
                          secrets=self.secrets)
        started = _now()
        beat = asyncio.create_task(_heartbeat_forever(1.0))
        try:
            outcome = await CommandExecutor().run(ctx)
        finally:
            beat.cancel()
        masker = self.masker
        completed = _now()
        result = StepResult(
            step_id=inp.step_id,
            status=StepStatus.COMPLETED if outcome.ok else StepStatus.FAILED,
            exit_code=outcome.exit_code, stdout=masker.mask_text(outcome.stdout),
            stderr=masker.mask_text(outcome.stderr),
            error=masker.mask_text(outcome.error) if outcome.error else None,
            started_at=started, completed_at=completed,
            duration_ms=(completed - started).total_seconds() * 1000)
        if not outcome.ok:
            raise ApplicationError(result.error or f"{inp.reason} failed", result,
                                   type=ErrorType.CLEANUP_FAILED, non_retryable=True)
        return result
