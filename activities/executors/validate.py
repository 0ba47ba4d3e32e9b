"""The `validate` tool: checks over earlier steps' results, without touching any machine
(except `command:` checks, which run on the step's target).

A check names its step either in the expression ("step_001.exit_code == 0") or as
{"step": "step_001", "expr": "..."}; an unqualified check looks at the most recent earlier
step in `ctx.prior_outputs` (dict step_id -> result with exit_code, stdout, stderr, output).
The check language is documented in `opsconductor.activities.checks`.
"""

from __future__ import annotations

from typing import Any

from opsconductor.activities.checks import result_context, run_check
from opsconductor.activities.executors.base import StepContext, StepOutcome
from opsconductor.schema.errors import ErrorType


class ValidateExecutor:
    async def run(self, ctx: StepContext) -> StepOutcome:
        checks: list[Any] = list(ctx.inputs.get("checks") or [])
        if not checks:
            return StepOutcome(ok=False, error="validate step has no checks",
                               error_type=ErrorType.INVALID_STEP, retryable=False)
        steps = dict(ctx.prior_outputs)
        last = next(reversed(steps.values())) if steps else None
        context = {**result_context(last), "steps": steps}
        results = [await run_check(c, context=context, asset=ctx.asset, timeout=ctx.timeout,
                                   gate=ctx.gate) for c in checks]
        failed = [r for r in results if not r.passed]
        not_checked = sum(1 for r in results if r.informational)
        summary = {"checks": [r.to_dict() for r in results],
                   "passed": len(results) - len(failed) - not_checked, "failed": len(failed),
                   "not_checked": not_checked, "informational": not_checked}
        # prose is recorded, never evaluated: it is shown as not checked, never as passed
        lines = [f"{'NOT CHECKED' if r.informational else 'PASS' if r.passed else 'FAIL'}: "
                 f"{r.expr} -- {r.detail}" for r in results]
        if failed:
            return StepOutcome(ok=False, output=summary, stdout="\n".join(lines),
                               error=f"{len(failed)} of {len(results)} checks failed: "
                                     + "; ".join(f"{r.expr} ({r.detail})" for r in failed[:5]),
                               error_type=ErrorType.VALIDATION_FAILED, retryable=False)
        return StepOutcome(ok=True, output=summary, stdout="\n".join(lines))
