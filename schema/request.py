"""What Stage D sends: the execution envelope around the upstream planner's PlanV1.

Structure is checked by pydantic; the cross-field rules (known tools, their inputs, unique
step ids, dependencies) by `validate_request`, which reports every problem at once with its
field path so a planner can fix a plan in one round trip.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opsconductor.schema.dialect import (
    EXECUTION_LOCATIONS,
    expand_dependencies,
    normalize_step,
    step_target,
)
from opsconductor.schema.enums import Environment, ExecutionMode, SlaClass
from opsconductor.schema.failure import FailureReading, interpret_failure_handling
from opsconductor.schema.fleet import Fleet, fleet_from
from opsconductor.schema.limits import MAX_PLAN_STEPS
from opsconductor.schema.submissions import SubmissionSignature


class PlanStep(BaseModel):
    """One step as upstream's planners write it (see `schema/dialect.py` for the shapes
    accepted). `failure_handling` is kept as written; `failure` is its reading."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    description: str = ""
    tool: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    depends_on_written: list[str] | None = None  # as written, when it held wildcards
    execution_order: int | None = None
    estimated_duration: float | None = Field(default=None, ge=0)
    failure_handling: str = "abort"
    success_criteria: list[str | dict[str, Any]] = Field(default_factory=list)
    preconditions: list[str | dict[str, Any]] = Field(default_factory=list)
    requires_credentials: bool | list[str] | None = None
    execution_location: str | None = None
    tool_metadata: dict[str, Any] | None = None
    # A fleet step (see schema/fleet.py): many targets, bounded concurrency and errors.
    targets: list[Any] | dict[str, Any] | None = None
    max_concurrency: int | str | None = None
    max_errors: int | str | None = None

    @model_validator(mode="after")
    def _fleet(self) -> PlanStep:
        if self.targets is None:
            if self.max_concurrency is not None or self.max_errors is not None:
                raise ValueError("max_concurrency and max_errors need `targets`")
            return self
        if self.target is not None:
            raise ValueError("a step names either one target (inputs.target) or `targets`")
        fleet_from(self.targets, self.max_concurrency, self.max_errors)
        return self

    @property
    def fleet(self) -> Fleet | None:
        return None if self.targets is None else fleet_from(
            self.targets, self.max_concurrency, self.max_errors)

    @field_validator("failure_handling", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return "abort" if v is None else (v.value if hasattr(v, "value") else v)

    @field_validator("execution_location")
    @classmethod
    def _location(cls, v: str | None) -> str | None:
        if v is not None and v not in EXECUTION_LOCATIONS:
            where = ", ".join(sorted(EXECUTION_LOCATIONS))
            raise ValueError(f"execution_location names where a step runs ({where}), not a "
                             "host: put the host in inputs.target")
        return v

    @property
    def failure(self) -> FailureReading:
        return interpret_failure_handling(self.failure_handling)

    @property
    def target(self) -> str | None:
        """The asset this step acts on as written (None: this machine, or a template that
        only run time resolves). `execution_location` is never a host."""
        return step_target(self.inputs, self.tool)


class SafetyCheck(BaseModel):
    model_config = ConfigDict(extra="allow")
    check: str | dict[str, Any]
    stage: Literal["before", "during", "after"] = "before"
    failure_action: Literal["abort", "warn", "continue"] = "abort"
    target: str | None = None


class RollbackEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    step_id: str
    rollback_action: str = Field(min_length=1)
    timeout_seconds: float | None = Field(default=None, gt=0)


class Plan(BaseModel):
    model_config = ConfigDict(extra="allow")
    steps: list[PlanStep] = Field(min_length=1, max_length=MAX_PLAN_STEPS)
    safety_checks: list[SafetyCheck] = Field(default_factory=list)
    rollback_plan: list[RollbackEntry] = Field(default_factory=list)
    observability: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _dialect(cls, v: Any) -> Any:
        """Upstream's step shapes become ours; wildcard dependencies expand over step ids."""
        if not isinstance(v, dict) or not isinstance(v.get("steps"), list):
            return v
        steps = [normalize_step(s, i)[0] if isinstance(s, dict) else s
                 for i, s in enumerate(v["steps"])]
        ids = [s.get("id") for s in steps if isinstance(s, dict)]
        known = [i for i in ids if isinstance(i, str)]
        for step in steps:
            if isinstance(step, dict) and isinstance(step.get("depends_on"), list):
                expanded, _problems, had_wildcard = expand_dependencies(
                    step["depends_on"], known, step.get("id"))
                if had_wildcard:
                    step["depends_on_written"] = list(step["depends_on"])
                    step["depends_on"] = expanded
        return {**v, "steps": steps}


class ExecutionMetadata(BaseModel):
    """Upstream's execution metadata: `approval_points` are bare step ids (each becomes an
    approval point), `checkpoint_steps` are recorded on their steps."""

    model_config = ConfigDict(extra="allow")
    total_estimated_time: float | None = None
    risk_factors: list[str] = Field(default_factory=list)
    approval_points: list[str | dict[str, Any]] = Field(default_factory=list)
    checkpoint_steps: list[str] = Field(default_factory=list)


class PlanV1(BaseModel):
    """The whole document the upstream planner produces; we keep every field it sends."""

    model_config = ConfigDict(extra="allow")
    plan: Plan
    execution_metadata: ExecutionMetadata = Field(default_factory=ExecutionMetadata)
    stage: str | None = None
    version: str | None = None
    timestamp: datetime | str | None = None
    processing_time_ms: float | None = None


class ApprovalPoint(BaseModel):
    model_config = ConfigDict(extra="allow")
    step_id: str
    reason: str = ""
    risk_level: Literal["low", "medium", "high", "critical"] = "medium"
    approver_role: str | None = None


class TimeoutOverrides(BaseModel):
    """Per-request overrides of the timeout policy, clamped by `safety/timeouts.py` to limits."""

    model_config = ConfigDict(extra="forbid")
    step_timeout_seconds: float | None = Field(default=None, gt=0)
    execution_timeout_seconds: float | None = Field(default=None, gt=0)
    approval_timeout_seconds: float | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    heartbeat_timeout_seconds: float | None = Field(default=None, gt=0)


class ExecutionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    actor: str = Field(min_length=1, max_length=200)
    environment: Environment
    approval_level: int = Field(default=0, ge=0, le=3)
    approval_points: list[ApprovalPoint] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    trace_id: str | None = None
    # Stage D's retry key: the same key with a different request is refused, never merged.
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    # The actor's SSH signature over this envelope (schema/submissions.py): proves `actor`.
    signature: SubmissionSignature | None = None
    sla_class: SlaClass | None = None
    mode: ExecutionMode | None = None
    timeouts: TimeoutOverrides | None = None
    max_parallel: int | None = Field(default=None, ge=1, le=64)
    plan: PlanV1

    @field_validator("plan", mode="before")
    @classmethod
    def _accept_bare_plan(cls, v: Any) -> Any:
        """Accept the whole PlanV1 document or just its `plan` object."""
        if isinstance(v, dict) and "plan" not in v and "steps" in v:
            return {"plan": v}
        return v

    @field_validator("environment", "sla_class", "mode", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @property
    def steps(self) -> list[PlanStep]:
        return self.plan.plan.steps
