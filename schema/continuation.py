"""What one run of an execution hands to the next when it continues as new.

A plan of thousands of steps would grow one workflow history past what Temporal keeps well
(it suggests continuing as new at a few thousand events). The run then stops launching,
lets its running steps finish, and starts the next run of the same workflow id with the
same spec and this: the statuses, results and counters the next run must not lose. Locks
stay held (they belong to the execution, not to the run) and the fencing tokens carry over.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from opsconductor.schema.enums import ApprovalState, ExecutionStatus, StepStatus
from opsconductor.schema.messages import ResolveRequest, StepResult, TimeoutPolicy


class CarriedStepState(BaseModel):
    """A step that ended in an earlier run of this execution, as that run left it."""

    step_id: str
    status: StepStatus
    attempts: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    result: StepResult | None = None


class Continuation(BaseModel):
    """The run's state at a hand-over point, where no step was running or waiting."""

    run: int = Field(ge=1)  # runs of this execution so far (the one handing over included)
    status: ExecutionStatus
    approval_state: ApprovalState
    started_at: datetime
    deadline: datetime
    execution_seconds: float
    journal_seq: int  # event keys go on from here: the mirror's writes stay idempotent
    fencing: dict[str, int] = Field(default_factory=dict)
    policies: dict[str, TimeoutPolicy] = Field(default_factory=dict)
    approval_seconds: float | None = None
    lock_seconds: float | None = None
    steps: list[CarriedStepState] = Field(default_factory=list)
    resolutions: dict[str, ResolveRequest] = Field(default_factory=dict)
