"""The plan's safety checks of one stage (before / during / after), as one activity."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from opsconductor.activities.authorization import ActionGate
from opsconductor.activities.checks import run_safety_checks, should_abort
from opsconductor.safety.masking import Masker
from opsconductor.safety.rbac import RbacEngine
from opsconductor.schema.config import Settings
from opsconductor.schema.messages import SafetyChecksInput, SafetyChecksResult


class CheckActivities:
    """`run_safety_checks`, with the settings (a check's target asset), the masker, and the
    RBAC engine and pool that authorize command checks."""

    def __init__(self, *, settings: Settings, masker: Masker, rbac: RbacEngine,
                 pool: Any) -> None:
        self.settings = settings
        self.masker = masker
        self.rbac = rbac
        self.pool = pool

    @activity.defn(name="run_safety_checks")
    async def run_plan_safety_checks(self, inp: SafetyChecksInput) -> SafetyChecksResult:
        last = next(reversed(inp.prior_outputs.values())) if inp.prior_outputs else {}
        context = {**(last or {}), "steps": inp.prior_outputs}
        gate = (ActionGate(engine=self.rbac, pool=self.pool, tenant=inp.tenant, actor=inp.actor,
                           environment=inp.environment.value, execution_id=inp.execution_id,
                           step_id=f"safety_check:{inp.stage}")
                if inp.actor and inp.environment is not None else None)
        outcomes = await run_safety_checks(inp.checks, inp.stage, context=context,
                                           settings=self.settings, gate=gate)
        return SafetyChecksResult(abort=should_abort(outcomes),
                                  outcomes=[self.masker.mask(o.to_dict()) for o in outcomes])
