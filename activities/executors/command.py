"""The command step kind: a probe's argv, or free text with its env and working directory,
run on the right connector.

The connector is the tool's when its spec forces one (PowerShell tools run through the
Automation Service whatever the asset says), else the asset's own. Before anything runs, the
connection details the planner wrote (`username`, `port`, `connection_type`, `asset_id`) must
agree with the resolved asset. (A step still holding template placeholders never gets here:
the registry refuses it until `activities/fanout.py` has rendered it.)
"""

from __future__ import annotations

from typing import Any

from opsconductor.activities.executors.base import CommandRunner, StepContext, StepOutcome
from opsconductor.activities.executors.local_command import LocalCommandRunner
from opsconductor.activities.executors.registry import command_runner_for
from opsconductor.schema.errors import ErrorType

CONNECTOR_OF_TYPE = {"ssh": "ssh", "local": "local", "powershell": "automation-service",
                     "winrm": "automation-service", "impacket": "automation-service"}


def _string_env(env: dict[str, Any]) -> dict[str, str]:
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def connection_problems(connection: dict[str, Any], asset: Any, connector: str) -> list[str]:
    """Where the planner's connection details disagree with the asset (field: why)."""
    problems = []
    kind = connection.get("connection_type")
    if kind and CONNECTOR_OF_TYPE.get(kind) != connector:
        problems.append(f"inputs.connection_type: {kind!r} but the step runs via {connector}")
    if asset is None:
        for key in ("username", "port", "asset_id"):
            if connection.get(key) is not None:
                problems.append(f"inputs.{key}: the step runs on this machine, which has no "
                                f"{key}")
        return problems
    if connection.get("username") is not None and asset.user and \
            str(connection["username"]) != asset.user:
        problems.append(f"inputs.username: {connection['username']!r} but asset {asset.id!r} "
                        f"connects as {asset.user!r}")
    port = connection.get("port")
    if port is not None and connector == "ssh" and int(port) != asset.ssh_port:
        problems.append(f"inputs.port: {port} but asset {asset.id!r} listens on "
                        f"{asset.ssh_port}")
    if connection.get("asset_id") is not None and str(connection["asset_id"]) != asset.id:
        problems.append(f"inputs.asset_id: {connection['asset_id']!r} but the target resolves "
                        f"to asset {asset.id!r}")
    return problems


def connector_for(ctx: StepContext) -> str:
    if ctx.step.connector:
        return ctx.step.connector
    return getattr(ctx.asset, "connector", "local") if ctx.asset is not None else "local"


class CommandExecutor:
    def __init__(self, local: CommandRunner | None = None):
        self.local = local or LocalCommandRunner()

    async def run(self, ctx: StepContext) -> StepOutcome:
        from opsconductor.activities.authorization import operation_of

        command = ctx.step.command
        # What the gate authorized, decided the same way: a probe runs as its argv, whatever
        # `command` text the step also carries.
        probe = operation_of(ctx.step.tool, command, inputs=ctx.step.inputs).probe
        if not command and probe is None:
            return StepOutcome(ok=False, error="command step has no command",
                               error_type=ErrorType.INVALID_STEP, retryable=False)
        connector = connector_for(ctx)
        problems = connection_problems(ctx.step.connection, ctx.asset, connector)
        if problems:
            return StepOutcome(ok=False, error="; ".join(problems),
                               error_type=ErrorType.INVALID_STEP, retryable=False)
        if probe is not None:
            from opsconductor.activities.executors.probe import run_probe

            # A probe execs an argv locally: only the local runner has that form.
            local = self.local if isinstance(self.local, LocalCommandRunner) else None
            return await run_probe(ctx, probe, connector, local)
        assert command is not None
        if ctx.step.connector == "automation-service":
            from opsconductor.activities.executors.powershell import PowerShellRunner

            runner: CommandRunner = PowerShellRunner()
        else:
            runner = self.local if connector == "local" else command_runner_for(connector)
        return await runner.run(ctx, command, env=_string_env(ctx.inputs.get("env") or {}),
                                cwd=ctx.inputs.get("working_directory"), timeout=ctx.timeout)
