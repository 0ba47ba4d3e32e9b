"""Enumerations shared by the request model, the workflow and the Postgres mirror.

Values match the Postgres enums in `migrations/001_core.sql` one to one.
"""

from enum import StrEnum


class ExecutionStatus(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    PARTIAL = "partial"


class StepStatus(StrEnum):
    PENDING = "pending"
    WAITING = "waiting"  # waiting for an approval gate, a lock or an operator's resolution
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


class ExecutionMode(StrEnum):
    IMMEDIATE = "immediate"
    BACKGROUND = "background"


class SlaClass(StrEnum):
    FAST = "fast"
    MEDIUM = "medium"
    LONG = "long"


class ApprovalState(StrEnum):
    NOT_REQUIRED = "not_required"  # search-attribute value only; NULL in Postgres
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class ActionClass(StrEnum):
    READ = "read"
    MODIFY = "modify"
    DEPLOY = "deploy"


class Environment(StrEnum):
    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


class FailureHandling(StrEnum):
    ABORT = "abort"
    CONTINUE = "continue"
    ROLLBACK = "rollback"  # abort, then run the rollback plan for the steps that completed


class StepKind(StrEnum):
    COMMAND = "command"
    HTTP = "http"
    SQL = "sql"
    FILE_TRANSFER = "file_transfer"
    VALIDATE = "validate"
    NOOP = "noop"
    ASSET_QUERY = "asset_query"
    SERVICE = "service"  # sent to an OpsConductor service: POST {service}/execute-plan


TERMINAL_STATUSES = frozenset(
    {
        ExecutionStatus.REJECTED,
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.TIMEOUT,
        ExecutionStatus.PARTIAL,
    }
)
TERMINAL_STEP_STATUSES = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
        StepStatus.TIMEOUT,
    }
)
