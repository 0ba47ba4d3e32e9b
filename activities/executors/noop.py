"""A step that does nothing (or sleeps, or fails on request): for tests and benchmarks."""

from __future__ import annotations

import asyncio

from opsconductor.activities.executors.base import StepContext, StepOutcome
from opsconductor.schema.errors import ErrorType


class NoopExecutor:
    async def run(self, ctx: StepContext) -> StepOutcome:
        sleep = float(ctx.inputs.get("sleep_seconds") or 0)
        if sleep:
            await asyncio.sleep(sleep)
        if ctx.inputs.get("fail"):
            return StepOutcome(ok=False, error="noop step asked to fail",
                               error_type=ErrorType.NOOP_FAILED, retryable=False)
        return StepOutcome(ok=True, output={"noop": True})
