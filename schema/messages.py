"""Pydantic contracts between starter, workflow and activities: one model per call."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from opsconductor.schema.decisions import Signable, SignatureCheck, SignatureVerdict
from opsconductor.schema.enums import (
    ActionClass,
    ApprovalState,
    Environment,
    ExecutionStatus,
    SlaClass,
    StepStatus,
)
from opsconductor.schema.locks import AcquireLocksInput as LockRequest  # noqa: F401  (older names)
from opsconductor.schema.locks import AcquireLocksResult as LockGrant  # noqa: F401
from opsconductor.schema.locks import ReleaseLocksInput as LockRelease  # noqa: F401
from opsconductor.schema.request import SafetyCheck
from opsconductor.schema.spec import ExecutionSpec, StepSpec


class TimeoutPolicy(BaseModel):
    sla_class: SlaClass
    action_class: ActionClass
    step_timeout_seconds: float
    execution_timeout_seconds: float
    approval_timeout_seconds: float
    max_attempts: int
    heartbeat_timeout_seconds: float = 5.0
    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    backoff_coefficient: float = 2.0


class EventRecord(BaseModel):
    """One row of `execution_events`; `key` makes the write idempotent."""

    key: str
    type: str
    step_id: str | None = None
    from_status: str | None = None
    to_status: str | None = None
    actor: str | None = None
    message: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    at: datetime | None = None


class StepRecord(BaseModel):
    """A step row of the mirror as the workflow knows it."""

    step_id: str
    status: StepStatus
    attempts: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    exit_code: int | None = None
    output: Any = None
    error: str | None = None


class ApprovalRecord(BaseModel):
    gate: str  # "execution" or the step id of an approval point
    state: ApprovalState
    plan_hash: str
    required_approvals: int
    required_role: str | None = None
    senior_role: str | None = None
    requested_at: datetime
    expires_at: datetime | None = None
    decided_at: datetime | None = None
    decisions: list[dict[str, Any]] = Field(default_factory=list)


class DeadLetter(BaseModel):
    step_id: str | None
    reason: str
    error_type: str | None = None


class MirrorWrite(BaseModel):
    """A batch for the mirror, written in one transaction by a local activity."""

    execution_id: str
    workflow_id: str
    run_id: str | None = None
    status: ExecutionStatus | None = None
    approval_state: ApprovalState | None = None
    spec: ExecutionSpec | None = None  # only on the first write: creates the row
    steps: list[StepRecord] = Field(default_factory=list)
    events: list[EventRecord] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel_actor: str | None = None
    cancel_reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    deadline_at: datetime | None = None
    dead_letters: list[DeadLetter] = Field(default_factory=list)
    resolutions: list[ResolveRequest] = Field(default_factory=list)  # close crashed attempts
    load_policies: bool = False  # return the timeout policy rows for the spec's SLA class


class MirrorWriteResult(BaseModel):
    policies: dict[str, TimeoutPolicy] = Field(default_factory=dict)


class StepRunInput(BaseModel):
    execution_id: str
    workflow_id: str
    tenant: str
    actor: str
    environment: Environment
    step: StepSpec
    policy: TimeoutPolicy
    fencing_tokens: dict[str, int] = Field(default_factory=dict)
    lease_seconds: float = 60.0
    prior_outputs: dict[str, Any] = Field(default_factory=dict)  # for validate steps
    rbac_required: bool = True
    override_unknown_outcome: bool = False  # an operator resolved an unknown outcome: retry
    attempt_offset: int = 0  # attempts this step used in earlier activity invocations


class OutputRef(BaseModel):
    """One stream of a step's output, stored in full in `execution.step_outputs`.

    History and results carry this summary and a head/tail excerpt, never the whole stream:
    `opsconductor logs` reads the stored bytes by `execution_id`, `step_id`, `attempt`.
    """

    stream: Literal["stdout", "stderr", "output"]
    execution_id: str
    step_id: str
    attempt: int
    size: int  # bytes stored (uncompressed), the truncation marker included
    sha256: str
    truncated: bool = False  # the stream outgrew the per-step cap; its end is marked
    complete: bool = True  # the result's excerpt is the whole stream


class StepResult(BaseModel):
    step_id: str
    status: StepStatus
    attempts: int = 1
    exit_code: int | None = None
    stdout: str = ""  # the whole stream when small, else a head/tail excerpt (see outputs)
    stderr: str = ""
    output: Any = None
    outputs: dict[str, OutputRef] = Field(default_factory=dict)  # stream -> stored copy
    error: str | None = None
    error_type: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None


class CleanupInput(BaseModel):
    execution_id: str
    workflow_id: str
    tenant: str
    environment: Environment
    step_id: str
    target: str | None
    command: str
    timeout_seconds: float
    reason: Literal["rollback", "cleanup"] = "rollback"
    actor: str = ""  # whose plan it undoes: RBAC decides for them (empty: nothing may run)


# Signals and updates. Decisions are strict: unknown fields are refused, not ignored.

# Each may be signed (`Signable`: execution_id, gate, plan_hash, issued_at, nonce, signature).

class ApprovalDecision(Signable):
    model_config = ConfigDict(extra="forbid")
    approver: str = Field(min_length=1, max_length=200)
    comment: str | None = Field(default=None, max_length=4000)
    plan_hash: str | None = None


class CancelRequest(Signable):
    model_config = ConfigDict(extra="forbid")
    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=4000)


class ResolveRequest(Signable):
    model_config = ConfigDict(extra="forbid")
    actor: str = Field(min_length=1, max_length=200)
    action: Literal["retry", "skip", "fail"]
    step_id: str | None = None
    comment: str | None = None


class DecisionOutcome(BaseModel):
    accepted: bool
    reason: str
    approval_state: ApprovalState | None = None
    approvals_counted: int = 0
    approvals_required: int = 0


class WaitKind(StrEnum):
    """What a run is blocked on; `Progress.waiting_on` says the same for people."""

    APPROVAL = "approval"
    LOCKS = "locks"
    RESOLUTION = "resolution"  # an unknown outcome waits for an operator's resolve
    WINDOW = "window"  # outside its change window: waits until it opens (schema/windows.py)


class StepProgress(BaseModel):
    id: str
    description: str = ""
    status: StepStatus
    attempts: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None


class Progress(BaseModel):
    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    approval_state: ApprovalState
    steps_total: int
    steps_completed: int
    steps_failed: int
    steps_running: int
    percent: float
    current_step: str | None = None
    waiting_on: str | None = None
    waiting_kind: WaitKind | None = None
    estimated_completion: datetime | None = None
    started_at: datetime | None = None
    deadline: datetime | None = None  # the execution deadline, once the steps may start
    steps: list[StepProgress] = Field(default_factory=list)


class ExecutionResult(BaseModel):
    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    approval_state: ApprovalState
    error: str | None = None
    cancel_actor: str | None = None
    cancel_reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    steps: list[StepResult] = Field(default_factory=list)
    # The result stays bounded whatever the plan: past a size budget, steps keep their
    # status and output references but lose excerpts, and past a count they are left out
    # (failed ones first kept); the mirror and `opsconductor logs` have everything.
    steps_total: int = 0
    steps_omitted: int = 0


class OwnCancel(BaseModel):
    """Ask Temporal to cancel this run, so that a run cancelled by a signal or an update
    closes as Canceled there too (a workflow may not cancel itself directly)."""

    workflow_id: str
    run_id: str
    reason: str


class AuthorizeInput(BaseModel):
    """Ask RBAC whether `actor` may take `action` (approve, reject, cancel, resolve)."""

    tenant: str
    environment: Environment
    actor: str
    action: str
    execution_id: str
    resource: str = "*"
    step_id: str | None = None
    signature: SignatureCheck | None = None  # a decision's proof, verified before RBAC


class AuthorizeResult(BaseModel):
    allowed: bool
    reason: str
    roles: list[str] = Field(default_factory=list)
    rule_id: str | None = None
    policy_version: str | None = None
    signature: SignatureVerdict | None = None  # present when a proof was asked for


class SafetyChecksInput(BaseModel):
    execution_id: str
    stage: Literal["before", "during", "after"]
    checks: list[SafetyCheck]
    prior_outputs: dict[str, Any] = Field(default_factory=dict)
    # who runs the plan: command checks are authorized for them (absent: no command runs)
    tenant: str = ""
    actor: str = ""
    environment: Environment | None = None


class CheckVerdict(BaseModel):
    """What one check found: `informational` checks are recorded, never evaluated."""

    passed: bool
    expr: str
    detail: str
    informational: bool = False


class SafetyCheckOutcome(BaseModel):
    """One plan safety check with its verdict and what the workflow must do about it."""

    check: SafetyCheck
    result: CheckVerdict
    action: Literal["ok", "abort", "warn", "continue"]

    @property
    def kind(self) -> str:
        """The event suffix: informational, passed, failed (abort), warning or ignored."""
        if self.result.informational:
            return "informational"
        if self.action == "ok":
            return "passed"
        return {"abort": "failed", "warn": "warning"}.get(self.action, "ignored")


class SafetyChecksResult(BaseModel):
    abort: bool
    outcomes: list[SafetyCheckOutcome] = Field(default_factory=list)


class GateDecision(BaseModel):
    """One decision on an approval gate, accepted or refused, as the gate's record keeps it."""

    approver: str | None
    decision: Literal["approve", "reject", "cancel", "resolve"]
    accepted: bool
    comment: str | None = None
    roles: list[str] = Field(default_factory=list)
    reason: str | None = None  # why a refused decision was refused
    at: datetime
    signed: bool | None = None  # None: refused before its proof was looked at
    key_fingerprint: str | None = None
    signature: str | None = None  # kept with accepted signed decisions
