"""The plan's safety checks of one stage (before / during / after), as one activity."""

from __future__ import annotations

from temporalio import activity

from opsconductor.activities.checks import run_safety_checks, should_abort
from opsconductor.safety.masking import Masker
from opsconductor.schema.config import Settings
from opsconductor.schema.messages import SafetyChecksInput, SafetyChecksResult


class CheckActivities:
    """`run_safety_checks`, with the settings (a check's target asset) and the masker."""

    def __init__(self, *, settings: Settings, masker: Masker) -> None:
        self.settings = settings
        self.masker = masker

    @activity.defn(name="run_safety_checks")
    async def run_plan_safety_checks(self, inp: SafetyChecksInput) -> SafetyChecksResult:
        last = next(reversed(inp.prior_outputs.values())) if inp.prior_outputs else {}
        context = {**(last or {}), "steps": inp.prior_outputs}
        outcomes = await run_safety_checks(inp.checks, inp.stage, context=context,
                                           settings=self.settings)
        return SafetyChecksResult(abort=should_abort(outcomes),
                                  outcomes=[self.masker.mask(o.to_dict()) for o in outcomes])
