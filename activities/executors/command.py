"""The command step kind: build env and working directory, then run on the asset's connector."""

from __future__ import annotations

from typing import Any

from opsconductor.activities.executors.base import CommandRunner, StepContext, StepOutcome
from opsconductor.activities.executors.local_command import LocalCommandRunner
from opsconductor.activities.executors.registry import command_runner_for


def _string_env(env: dict[str, Any]) -> dict[str, str]:
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


class CommandExecutor:
    def __init__(self, local: CommandRunner | None = None):
        self.local = local or LocalCommandRunner()

    async def run(self, ctx: StepContext) -> StepOutcome:
        command = ctx.step.command
        if not command:
            return StepOutcome(ok=False, error="command step has no command",
                               error_type="InvalidStep", retryable=False)
        connector = getattr(ctx.asset, "connector", "local") if ctx.asset is not None else "local"
        runner = self.local if connector == "local" else command_runner_for(connector)
        return await runner.run(ctx, command, env=_string_env(ctx.inputs.get("env") or {}),
                                cwd=ctx.inputs.get("working_directory"), timeout=ctx.timeout)
