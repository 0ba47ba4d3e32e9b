"""Which executor runs a step kind, and which runner a command connector uses.

Executors are imported on first use so that a worker without, say, SSH configured still
starts, and a missing optional dependency is reported on the step that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

from opsconductor.activities.executors.base import CommandRunner, Executor
from opsconductor.schema.enums import StepKind

_EXECUTORS: dict[StepKind, tuple[str, str]] = {
    StepKind.COMMAND: ("opsconductor.activities.executors.command", "CommandExecutor"),
    StepKind.NOOP: ("opsconductor.activities.executors.noop", "NoopExecutor"),
    StepKind.HTTP: ("opsconductor.activities.executors.http", "HttpExecutor"),
    StepKind.SQL: ("opsconductor.activities.executors.sql", "SqlExecutor"),
    StepKind.FILE_TRANSFER: ("opsconductor.activities.executors.file_transfer",
                             "FileTransferExecutor"),
    StepKind.VALIDATE: ("opsconductor.activities.executors.validate", "ValidateExecutor"),
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


def executor_for(kind: StepKind) -> Executor:
    ref = _EXECUTORS.get(kind)
    if ref is None:
        raise UnsupportedStep(f"no executor for step kind {kind.value!r}")
    return _load(ref)  # type: ignore[no-any-return]


def command_runner_for(connector: str) -> CommandRunner:
    ref = _RUNNERS.get(connector)
    if ref is None:
        raise UnsupportedStep(f"no command runner for connector {connector!r}")
    return _load(ref)  # type: ignore[no-any-return]
