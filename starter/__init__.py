"""The client surface Stage D imports: `from opsconductor.starter import ExecutionClient`.

Everything listed in `__all__` is public and stays importable from here; the modules behind
it (`client`, `cli`, `dev_stack`, ...) are private to the project. Names load on first use
(PEP 562), so `opsconductor.starter.cli` or the embedded servers do not pay for importing the
whole client (Temporal SDK, workflow and activity modules) when they do not need it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsconductor.activities.db import DatabaseUnavailable
    from opsconductor.schema.config import Settings, load_settings
    from opsconductor.schema.messages import DecisionOutcome, ExecutionResult
    from opsconductor.schema.request import ExecutionRequest
    from opsconductor.schema.validation import Problem, RequestValidationError
    from opsconductor.starter.client import (
        DuplicateKeyConflict,
        ExecutionClient,
        ExecutionNotFound,
        ExecutionResponse,
        SignalledDecision,
        SubmissionRefused,
    )
    from opsconductor.starter.stage_e import ExecutionRequest as StageERequest
    from opsconductor.starter.stage_e import ExecutionResponse as StageEResponse
    from opsconductor.starter.stage_e import StageEExecutor

_WHERE: dict[str, str | tuple[str, str]] = {
    # the client and what it returns
    "ExecutionClient": "opsconductor.starter.client",
    "ExecutionResponse": "opsconductor.starter.client",
    "ExecutionResult": "opsconductor.schema.messages",
    "DecisionOutcome": "opsconductor.schema.messages",
    "SignalledDecision": "opsconductor.starter.client",
    # the request model
    "ExecutionRequest": "opsconductor.schema.request",
    # errors
    "RequestValidationError": "opsconductor.schema.validation",
    "Problem": "opsconductor.schema.validation",
    "SubmissionRefused": "opsconductor.starter.client",
    "DuplicateKeyConflict": "opsconductor.starter.client",
    "ExecutionNotFound": "opsconductor.starter.client",
    "DatabaseUnavailable": "opsconductor.activities.db",
    # OpsConductor's own Stage E call (its names, in opsconductor.starter.stage_e)
    "StageEExecutor": "opsconductor.starter.stage_e",
    "StageERequest": ("opsconductor.starter.stage_e", "ExecutionRequest"),
    "StageEResponse": ("opsconductor.starter.stage_e", "ExecutionResponse"),
    # settings
    "Settings": "opsconductor.schema.config",
    "load_settings": "opsconductor.schema.config",
}

__all__ = [
    "DatabaseUnavailable",
    "DecisionOutcome",
    "DuplicateKeyConflict",
    "ExecutionClient",
    "ExecutionNotFound",
    "ExecutionRequest",
    "ExecutionResponse",
    "ExecutionResult",
    "Problem",
    "RequestValidationError",
    "Settings",
    "SignalledDecision",
    "StageEExecutor",
    "StageERequest",
    "StageEResponse",
    "SubmissionRefused",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
