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
from opsconductor.schema.fleet import Fleet
from opsconductor.schema.request import (
    ApprovalPoint,
    ExecutionRequest,
    RollbackEntry,
    SafetyCheck,
    TimeoutOverrides,
)
from opsconductor.schema.submissions import SubmissionProof
from opsconductor.schema.templates import Placeholder, fans_out, find_placeholders, sources
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
    # ... and, when the tool built it from typed inputs, as an argument list: the program it
    # runs is the tool's own (catalog tools; see schema/catalog/specs.py)
    argv: list[str] | None = None
    target: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    order: int
    failure_handling: FailureHandling
    estimated_duration: float | None = None
    idempotent: bool = False
    timeout_seconds: float | None = None
    success_criteria: list[str | dict[str, Any]] = Field(default_factory=list)
    preconditions: list[str | dict[str, Any]] = Field(default_factory=list)
    # The planner's dialect, kept so that what was written and what we read stay visible.
    failure_handling_text: str = ""  # as written ("Log error and continue")
    failure_rule: str = ""  # the rule of schema/failure.py that read it
    connector: str | None = None  # forced by the tool (automation-service for PowerShell)
    dialect: str | None = None  # command language: sh | powershell | cmd
    connection: dict[str, Any] = Field(default_factory=dict)  # must agree with the asset
    execution_location: str | None = None  # where the planner asked it to run, never a host
    requires_credentials: bool | list[str] | None = None
    tool_metadata: dict[str, Any] | None = None
    checkpoint: bool = False  # named in execution_metadata.checkpoint_steps
    depends_on_written: list[str] | None = None  # before wildcard expansion
    placeholders: list[Placeholder] = Field(default_factory=list)  # rendered at run time
    fan_out_from: str | None = None  # the asset-query step this step iterates over
    variant_of: str | None = None  # a fan-out variant: the step it was expanded from
    item: dict[str, Any] | None = None  # a fan-out variant: the asset it runs for
    fleet: Fleet | None = None  # many targets: run one variant per target (schema/fleet.py)

    @property
    def templated(self) -> bool:
        """Holds placeholders that only earlier results can fill: never run as written."""
        return bool(self.placeholders)

    @property
    def summary(self) -> str:
        return f"{self.id}: {self.description}" if self.description else self.id


class CarriedStep(BaseModel):
    """A step an earlier run of this plan completed: a `dlq requeue --from-failed` run takes
    its result over instead of running it again."""

    step_id: str
    from_execution_id: str
    exit_code: int | None = None
    output: Any = None
    completed_at: datetime | None = None


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
    submission: SubmissionProof | None = None  # the signed envelope, when it was signed
    carried: list[CarriedStep] = Field(default_factory=list)  # resumed: results taken over
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
    known = {s.id for s in req.steps}
    checkpoints = set(req.plan.execution_metadata.checkpoint_steps)
    for index, step in enumerate(req.steps):
        tool = lookup(step.tool, step.inputs)
        assert tool is not None, "validate_request runs first"
        inputs = tool.inputs.model_validate(step.inputs)
        dumped = (tool.normalize(inputs) if tool.normalize else
                  inputs.model_dump(mode="json", by_alias=True, exclude_none=True))
        idempotent = getattr(inputs, "idempotent", None)
        if idempotent is None:
            idempotent = tool.action_class(inputs) is ActionClass.READ
        earlier = [(s.id, s.tool) for s in req.steps[:index]]
        placeholders, _ = find_placeholders({"inputs": step.inputs}, step_id=step.id,
                                            earlier=earlier, known=known)
        depends_on = list(dict.fromkeys([*step.depends_on, *sources(placeholders)]))
        if tool.name == "conditional-check":
            dumped = {"checks": [condition_check(str(step.inputs["condition"]), placeholders)]}
            if step.inputs.get("target"):
                dumped["target"] = step.inputs["target"]
            placeholders = []
        connection = ({k: step.inputs[k] for k in CONNECTION_KEYS if k in step.inputs}
                      if tool.kind is StepKind.COMMAND else {})
        if step.inputs.get("password") is not None:
            connection.pop("username", None)  # the step's own credential, not the asset's
        reading = step.failure
        out.append(StepSpec(
            id=step.id,
            description=step.description,
            tool=step.tool,
            kind=tool.kind,
            action_class=tool.action_class(inputs),
            inputs=dumped,
            command=(tool.build_command(inputs) if tool.build_command
                     else getattr(inputs, "command", None)),
            argv=(tool.build_argv(inputs) if tool.build_argv is not None
                  and not getattr(inputs, "command", None) else None),
            target=_canonical(step.target, asset_ids),
            depends_on=depends_on,
            order=step.execution_order if step.execution_order is not None else index + 1,
            failure_handling=reading.mode,
            estimated_duration=step.estimated_duration,
            idempotent=bool(idempotent),
            timeout_seconds=(tool.time_limit(inputs) if tool.time_limit is not None
                             else getattr(inputs, "timeout_seconds", None)),
            success_criteria=list(step.success_criteria),
            preconditions=list(step.preconditions),
            failure_handling_text=reading.text,
            failure_rule=reading.rule,
            connector=tool.connector,
            dialect=tool.dialect,
            connection=connection,
            execution_location=step.execution_location,
            requires_credentials=step.requires_credentials,
            tool_metadata=step.tool_metadata,
            checkpoint=step.id in checkpoints,
            depends_on_written=step.depends_on_written,
            placeholders=placeholders,
            fan_out_from=fans_out(placeholders),
            fleet=step.fleet,
        ))
    return out


CONNECTION_KEYS = ("username", "port", "connection_type", "asset_id", "use_asset_credentials")


def condition_check(condition: str, placeholders: list[Placeholder]) -> str:
    """`{{asset_count}} > 0` as the check language's `<step>.json $.asset_count > 0`, which
    the validate executor evaluates against the earlier step's result."""
    out = condition
    for ph in placeholders:
        path = list(ph.path)
        if path and path[0] == "output":
            rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])
            ref = f"{ph.source}.json ${rest}"
        else:
            ref = f"{ph.source}." + ".".join(str(p) for p in path)
        out = out.replace(ph.text, ref)
    return out.strip()


def approval_points_for(req: ExecutionRequest) -> list[ApprovalPoint]:
    """The envelope's approval points, then the planner's (bare step ids in
    execution_metadata.approval_points) for steps the envelope does not already gate."""
    points = list(req.approval_points)
    gated = {p.step_id for p in points}
    for raw in req.plan.execution_metadata.approval_points:
        point = (ApprovalPoint(step_id=raw, reason="approval point set by the planner")
                 if isinstance(raw, str) else ApprovalPoint.model_validate(raw))
        if point.step_id not in gated:
            points.append(point)
            gated.add(point.step_id)
    return points


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
        approval_points=approval_points_for(req),
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
