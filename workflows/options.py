"""Activity options: timeouts and retry policies, derived from the timeout policy.

Every non-retryable error type is named from `ErrorType`, so renaming an error can never
silently make it retryable. Pure: nothing here touches the workflow's state.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio.common import RetryPolicy

from opsconductor.schema.errors import ErrorType, names
from opsconductor.schema.messages import TimeoutPolicy
from opsconductor.schema.request import RollbackEntry
from opsconductor.schema.spec import StepSpec

LEASE_SECONDS = 60.0  # asset leases: renewed by running steps and during approval gates
# The activity's own command timeout fires first; the grace lets it report the timeout.
STEP_TIMEOUT_GRACE = timedelta(seconds=10)
MIRROR_TIMEOUT = timedelta(seconds=30)
# How often a mirror batch is tried as a local activity (invisible outside the worker; about
# 20 s of backoff) before it goes on as a regular activity, retried for as long as it takes
# and shown by Temporal and `opsconductor health`. (A local activity's schedule-to-close
# timeout would bound it by time, but panics this SDK's core when it fires.)
MIRROR_LOCAL_ATTEMPTS = 8
MIRROR_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=10),
                           non_retryable_error_types=names(ErrorType.ILLEGAL_TRANSITION))
MIRROR_LOCAL_RETRY = dataclasses.replace(MIRROR_RETRY, maximum_attempts=MIRROR_LOCAL_ATTEMPTS)
# A cancel reaches a waiting activity with its next heartbeat (at most 0.8 x this timeout).
LOCK_HEARTBEAT = timedelta(seconds=3)
LOCK_EXTRA = timedelta(seconds=30)  # beyond the lock wait itself: the activity's own work
LOCK_RETRY = RetryPolicy(maximum_attempts=3,
                         non_retryable_error_types=names(ErrorType.LOCK_TIMEOUT))
RENEW_TIMEOUT = timedelta(seconds=20)
RENEW_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=names(ErrorType.LOCK_LOST))
RELEASE_TIMEOUT = timedelta(seconds=30)
# Released until it succeeds: a PostgreSQL outage never leaves an asset locked until its
# lease runs out.
RELEASE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))
CLEANUP_RETRY = RetryPolicy(maximum_attempts=2,
                            non_retryable_error_types=names(ErrorType.CLEANUP_FAILED))
AUTHZ_TIMEOUT = timedelta(seconds=30)
AUTHZ_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=5))
SAFETY_CHECKS_TIMEOUT = timedelta(minutes=5)
SAFETY_CHECKS_RETRY = RetryPolicy(maximum_attempts=2)
NON_RETRYABLE_STEP_ERRORS = names(ErrorType.RBAC_DENIED, ErrorType.LOCK_LOST,
                                  ErrorType.UNKNOWN_OUTCOME, ErrorType.SECRET_NOT_FOUND,
                                  ErrorType.UNKNOWN_ASSET, ErrorType.INVALID_STEP)


def step_timeout(step: StepSpec, policy: TimeoutPolicy) -> timedelta:
    """The step's own timeout, never longer than its policy's (which fits the deadline)."""
    own = step.timeout_seconds or policy.step_timeout_seconds
    return timedelta(seconds=min(own, policy.step_timeout_seconds))


def step_start_to_close(step: StepSpec, policy: TimeoutPolicy) -> timedelta:
    return step_timeout(step, policy) + STEP_TIMEOUT_GRACE


def heartbeat_timeout(policy: TimeoutPolicy) -> timedelta:
    return timedelta(seconds=policy.heartbeat_timeout_seconds)


def step_retry(policy: TimeoutPolicy) -> RetryPolicy:
    """Backoff and attempts from the policy row; safety refusals are never retried."""
    return RetryPolicy(initial_interval=timedelta(seconds=policy.initial_backoff_seconds),
                       backoff_coefficient=policy.backoff_coefficient,
                       maximum_interval=timedelta(seconds=policy.max_backoff_seconds),
                       maximum_attempts=policy.max_attempts,
                       non_retryable_error_types=NON_RETRYABLE_STEP_ERRORS)


def cleanup_seconds(entry: RollbackEntry, policy: TimeoutPolicy) -> float:
    """A rollback entry's own timeout, else the modify policy's step timeout."""
    return entry.timeout_seconds or policy.step_timeout_seconds


def lock_wait_seconds(longest_step_seconds: float) -> float:
    """How long to queue for the assets: two of the plan's longest steps."""
    return longest_step_seconds * 2
