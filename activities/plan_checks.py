"""The plan's safety checks of one stage (before / during / after), as one activity."""

from __future__ import annotations

from temporalio import activity

from opsconductor.activities.checks import run_safety_checks, should_abort
from opsconductor.schema.messages import SafetyChecksInput, SafetyChecksResult


@activity.defn(name="run_safety_checks")
async def run_plan_safety_checks(inp: SafetyChecksInput) -> SafetyChecksResult:
    from opsconductor.safety.masking import Masker

    last = next(reversed(inp.prior_outputs.values())) if inp.prior_outputs else {}
    context = {**(last or {}), "steps": inp.prior_outputs}
    outcomes = await run_safety_checks(inp.checks, inp.stage, context=context)
    masker = Masker()
    return SafetyChecksResult(abort=should_abort(outcomes),
                              outcomes=[masker.mask(o.to_dict()) for o in outcomes])
