"""Which executor runs a step kind, and which runner a command connector uses.

Executors are imported on first use so that a worker without, say, SSH configured still
starts, and a missing optional dependency is reported on the step that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

from opsconductor.activities.executors.base import (
    CommandRunner,
    Executor,
    StepContext,
    StepOutcome,
)
from opsconductor.schema.enums import StepKind
from opsconductor.schema.errors import ErrorType

_EXECUTORS: dict[StepKind, tuple[str, str]] = {
    StepKind.COMMAND: ("opsconductor.activities.executors.command", "CommandExecutor"),
    StepKind.NOOP: ("opsconductor.activities.executors.noop", "NoopExecutor"),
    StepKind.HTTP: ("opsconductor.activities.executors.http_auth", "AuthHttpExecutor"),
    StepKind.SQL: ("opsconductor.activities.executors.sql", "SqlExecutor"),
    StepKind.FILE_TRANSFER: ("opsconductor.activities.executors.file_transfer",
                             "FileTransferExecutor"),
    StepKind.VALIDATE: ("opsconductor.activities.executors.validate", "ValidateExecutor"),
    StepKind.ASSET_QUERY: ("opsconductor.activities.executors.asset_query", "AssetQueryExecutor"),
    StepKind.SERVICE: ("opsconductor.activities.executors.service_plan", "ServicePlanExecutor"),
}
_RUNNERS: dict[str, tuple[str, str]] = {
    "ssh": ("opsconductor.activities.executors.ssh", "SshCommandRunner"),
    "automation-service": ("opsconductor.activities.executors.automation",
                           "AutomationCommandRunner"),
}
_cache: dict[tuple[str, str], Any] = {}


class UnsupportedStep(LookupError):
    pass


def _load(ref: tuple[str, str]) -> Any:
    if ref not in _cache:
        module = importlib.import_module(ref[0])
        _cache[ref] = getattr(module, ref[1])()
    return _cache[ref]


class _RenderedOnly:
    """Refuses a step that still holds template placeholders: as written it would act on
    `{{...}}` text (or on this machine, its target being unknown until run time). Such a step
    runs through `activities.fanout.run_fanout`, rendered per asset."""

    def __init__(self, inner: Executor):
        self.inner = inner

    async def run(self, ctx: StepContext) -> StepOutcome:
        if ctx.step.templated:
            return StepOutcome(ok=False, error=(
                f"step {ctx.step.id} holds template variables "
                f"({', '.join(p.text for p in ctx.step.placeholders)}); it runs only rendered "
                "from earlier results (activities.fanout.run_fanout)"),
                error_type=ErrorType.INVALID_STEP, retryable=False)
        return await self.inner.run(ctx)


def executor_for(kind: StepKind) -> Executor:
    ref = _EXECUTORS.get(kind)
    if ref is None:
        raise UnsupportedStep(f"no executor for step kind {kind.value!r}")
    return _RenderedOnly(_load(ref))


def command_runner_for(connector: str) -> CommandRunner:
    ref = _RUNNERS.get(connector)
    if ref is None:
        raise UnsupportedStep(f"no command runner for connector {connector!r}")
    return _load(ref)
