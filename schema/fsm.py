"""The execution and step status machines: the one place that says which transitions are legal.

Both the workflow (before it changes status) and the mirror (before it writes a row) call
`check_transition`, so a bug that tries an illegal move fails loudly in either place.
"""

from opsconductor.schema.enums import ExecutionStatus as S
from opsconductor.schema.enums import StepStatus as T

EXECUTION_TRANSITIONS: dict[S, frozenset[S]] = {
    S.QUEUED: frozenset(
        {S.PENDING_APPROVAL, S.RUNNING, S.FAILED, S.CANCELLED, S.TIMEOUT, S.REJECTED}
    ),
    S.PENDING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.CANCELLED, S.TIMEOUT, S.FAILED}),
    S.APPROVED: frozenset({S.RUNNING, S.PENDING_APPROVAL, S.FAILED, S.CANCELLED, S.TIMEOUT}),
    S.RUNNING: frozenset(
        {S.PENDING_APPROVAL, S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.PARTIAL}
    ),
    S.REJECTED: frozenset(),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TIMEOUT: frozenset(),
    S.PARTIAL: frozenset(),
}

STEP_TRANSITIONS: dict[T, frozenset[T]] = {
    T.PENDING: frozenset({T.WAITING, T.RUNNING, T.SKIPPED, T.CANCELLED, T.TIMEOUT, T.FAILED}),
    T.WAITING: frozenset({T.RUNNING, T.SKIPPED, T.CANCELLED, T.TIMEOUT, T.FAILED}),
    T.RUNNING: frozenset({T.WAITING, T.COMPLETED, T.FAILED, T.CANCELLED, T.TIMEOUT}),
    T.COMPLETED: frozenset(),
    T.FAILED: frozenset(),
    T.SKIPPED: frozenset(),
    T.CANCELLED: frozenset(),
    T.TIMEOUT: frozenset(),
}


class IllegalTransition(ValueError):
    """Raised when code tries a status change the machine does not allow."""


def can_transition(current: S, new: S) -> bool:
    return new in EXECUTION_TRANSITIONS[current]


def check_transition(current: S, new: S) -> None:
    if not can_transition(current, new):
        raise IllegalTransition(f"execution status {current.value} -> {new.value} is not allowed")


def can_step_transition(current: T, new: T) -> bool:
    return new in STEP_TRANSITIONS[current]


def check_step_transition(current: T, new: T) -> None:
    if not can_step_transition(current, new):
        raise IllegalTransition(f"step status {current.value} -> {new.value} is not allowed")
