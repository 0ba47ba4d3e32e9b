"""The execution spec: a validated request turned into what the workflow runs.

Everything here is pure and deterministic, so the starter computes it once and the workflow
receives it as its single input.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from opsconductor.schema.canonical import plan_hash
from opsconductor.schema.enums import (
    ActionClass,
    Environment,
    ExecutionMode,
    FailureHandling,
    SlaClass,
    StepKind,
)
from opsconductor.schema.request import (
    ApprovalPoint,
    ExecutionRequest,
    RollbackEntry,
    SafetyCheck,
    TimeoutOverrides,
)
from opsconductor.schema.tools import lookup

FAST_LIMIT_SECONDS = 10.0
MEDIUM_LIMIT_SECONDS = 30.0
DEFAULT_STEP_SECONDS = 5.0


class StepSpec(BaseModel):
    id: str
    description: str = ""
    tool: str
    kind: StepKind
    action_class: ActionClass
    inputs: dict[str, Any]  # validated inputs (may contain secret references, never values)
    command: str | None = None  # for command steps: the finished command line
    target: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    order: int
    failure_handling: FailureHandling
    estimated_duration: float | None = None
    idempotent: bool = False
    timeout_seconds: float | None = None
    success_criteria: list[str | dict[str, Any]] = Field(default_factory=list)
    preconditions: list[str | dict[str, Any]] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{self.id}: {self.description}" if self.description else self.id


class ExecutionSpec(BaseModel):
    """The workflow's single input."""

    execution_id: str
    workflow_id: str
    tenant: str
    actor: str
    environment: Environment
    title: str
    idempotency_key: str
    plan_hash: str
    sla_class: SlaClass
    mode: ExecutionMode
    approval_level: int = 0
    approval_points: list[ApprovalPoint] = Field(default_factory=list)
    steps: list[StepSpec]
    safety_checks: list[SafetyCheck] = Field(default_factory=list)
    rollback_plan: list[RollbackEntry] = Field(default_factory=list)
    timeouts: TimeoutOverrides | None = None
    max_parallel: int = 1
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    trace_id: str | None = None
    previous_execution_id: str | None = None
    submitted_at: datetime | None = None
    request: dict[str, Any] = Field(default_factory=dict)  # as submitted: for DLQ requeue

    @property
    def assets(self) -> list[str]:
        """Every asset the plan touches, sorted: the canonical lock order."""
        return sorted({s.target for s in self.steps if s.target and s.target != "localhost"})

    def step(self, step_id: str) -> StepSpec:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def sla_class_for(durations: list[float | None]) -> SlaClass:
    """fast < 10 s, medium 10-30 s, long > 30 s of total estimated time."""
    total = sum(d if d is not None else DEFAULT_STEP_SECONDS for d in durations)
    if total < FAST_LIMIT_SECONDS:
        return SlaClass.FAST
    if total <= MEDIUM_LIMIT_SECONDS:
        return SlaClass.MEDIUM
    return SlaClass.LONG


def mode_for(sla: SlaClass) -> ExecutionMode:
    return ExecutionMode.IMMEDIATE if sla is SlaClass.FAST else ExecutionMode.BACKGROUND


def plan_title(req: ExecutionRequest) -> str:
    meta = req.metadata
    for key in ("title", "summary", "ticket"):
        if isinstance(meta.get(key), str) and meta[key]:
            return meta[key]
    first = req.steps[0]
    return first.description or f"{first.tool} plan"


def step_specs(req: ExecutionRequest,
               asset_ids: dict[str, str | None] | None = None) -> list[StepSpec]:
    """`asset_ids` maps each target as written to the asset's id (None: this machine), so
    that locks and fencing key on the asset, whichever name the plan used for it."""
    asset_ids = asset_ids or {}
    out = []
    for index, step in enumerate(req.steps):
        tool = lookup(step.tool)
        assert tool is not None, "validate_request runs first"
        inputs = tool.inputs.model_validate(step.inputs)
        dumped = inputs.model_dump(mode="json", by_alias=True, exclude_none=True)
        idempotent = getattr(inputs, "idempotent", None)
        if idempotent is None:
            idempotent = tool.action_class(inputs) is ActionClass.READ
        out.append(StepSpec(
            id=step.id,
            description=step.description,
            tool=step.tool,
            kind=tool.kind,
            action_class=tool.action_class(inputs),
            inputs=dumped,
            command=(tool.build_command(inputs) if tool.build_command
                     else getattr(inputs, "command", None)),
            target=_canonical(getattr(inputs, "target", None) or step.execution_location,
                              asset_ids),
            depends_on=list(step.depends_on),
            order=step.execution_order if step.execution_order is not None else index + 1,
            failure_handling=step.failure_handling,
            estimated_duration=step.estimated_duration,
            idempotent=bool(idempotent),
            timeout_seconds=getattr(inputs, "timeout_seconds", None),
            success_criteria=list(step.success_criteria),
            preconditions=list(step.preconditions),
        ))
    return out


def _canonical(target: str | None, asset_ids: dict[str, str | None]) -> str | None:
    if not target:
        return None
    return asset_ids.get(target, target)


def build_spec(req: ExecutionRequest, *, execution_id: str, workflow_id: str,
               idempotency_key: str, previous_execution_id: str | None = None,
               submitted_at: datetime | None = None, default_parallel: int = 1,
               asset_ids: dict[str, str | None] | None = None) -> ExecutionSpec:
    steps = step_specs(req, asset_ids)
    sla = req.sla_class or sla_class_for([s.estimated_duration for s in steps])
    plan_doc = req.plan.model_dump(mode="json", by_alias=True, exclude_none=True)
    return ExecutionSpec(
        execution_id=execution_id,
        workflow_id=workflow_id,
        tenant=req.tenant,
        actor=req.actor,
        environment=req.environment,
        title=plan_title(req),
        idempotency_key=idempotency_key,
        plan_hash=plan_hash(plan_doc),
        sla_class=sla,
        mode=req.mode or mode_for(sla),
        approval_level=req.approval_level,
        approval_points=req.approval_points,
        steps=steps,
        safety_checks=req.plan.plan.safety_checks,
        rollback_plan=req.plan.plan.rollback_plan,
        timeouts=req.timeouts,
        max_parallel=req.max_parallel or default_parallel,
        tags=req.tags,
        metadata=req.metadata,
        trace_id=req.trace_id,
        previous_execution_id=previous_execution_id,
        submitted_at=submitted_at,
        request=req.model_dump(mode="json", by_alias=True, exclude_none=True),
    )
