"""Building step contexts for executor tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opsconductor.activities.executors.base import StepContext
from opsconductor.schema.enums import ActionClass, FailureHandling, StepKind
from opsconductor.schema.spec import StepSpec


def make_ctx(kind: StepKind, inputs: dict[str, Any], *, asset: Any = None,
             action_class: ActionClass = ActionClass.READ, timeout: float = 30,
             idempotent: bool = False, tool: str = "x",
             prior_outputs: dict[str, Any] | None = None,
             heartbeat: Callable[..., None] = lambda *d: None) -> StepContext:
    step = StepSpec(id="s1", tool=tool, kind=kind, action_class=action_class, inputs=inputs,
                    command=inputs.get("command"), order=1,
                    failure_handling=FailureHandling.ABORT, idempotent=idempotent)
    return StepContext(execution_id="00000000-0000-0000-0000-000000000001", workflow_id="wf",
                       tenant="t", environment="dev", step=step, inputs=inputs, timeout=timeout,
                       asset=asset, prior_outputs=prior_outputs or {}, heartbeat=heartbeat)
