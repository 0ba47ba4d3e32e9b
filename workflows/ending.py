"""How a run closes in Temporal, so that its status there tells what the mirror tells.

Completed and partial runs return their result. Failed, timed-out and rejected runs close as
*Failed*, the result carried in the failure's details (and already in the mirror). A run
cancelled by the `cancel` signal or update closes as *Canceled*, like one cancelled through
Temporal: it asks Temporal to cancel this very run (one activity: a run may not cancel
itself) and ends with the cancellation that arrives. Called after the final mirror write and
once every handler has finished, so nothing is lost by raising.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

from opsconductor.schema.enums import ExecutionStatus
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import ExecutionResult, OwnCancel

# The patch that introduced these endings: runs recorded before it replay their old ending.
TRUTHFUL_ENDING = "truthful-temporal-ending"
FAILURE_TYPES = {ExecutionStatus.FAILED: ErrorType.EXECUTION_FAILED,
                 ExecutionStatus.TIMEOUT: ErrorType.EXECUTION_TIMEOUT,
                 ExecutionStatus.REJECTED: ErrorType.EXECUTION_REJECTED}
OWN_CANCEL_TIMEOUT = timedelta(seconds=30)
OWN_CANCEL_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=5))
# The cancel request is in history once the activity returns; this only bounds a lost one.
OWN_CANCEL_ARRIVAL = timedelta(seconds=60)


def failure_for(result: ExecutionResult) -> ApplicationError | None:
    """The failure a failed, timed-out or rejected run closes with; None for the others."""
    error_type = FAILURE_TYPES.get(result.status)
    if error_type is None:
        return None
    message = f"execution {result.status.value}"
    if result.error:
        message += f": {result.error}"
    return ApplicationError(message[:2000], result.model_dump(mode="json"),
                            type=error_type.value, non_retryable=True)


async def close(result: ExecutionResult) -> ExecutionResult:
    """Return `result` for a run that completed; otherwise end the run as Failed (raise) or
    Canceled (wait for the cancellation this run requested and let it end the run)."""
    if result.status is ExecutionStatus.CANCELLED:
        info = workflow.info()
        reason = f"cancelled by {result.cancel_actor}: {result.cancel_reason}"
        try:
            await workflow.execute_activity(
                "cancel_own_run", OwnCancel(workflow_id=info.workflow_id, run_id=info.run_id,
                                            reason=reason),
                start_to_close_timeout=OWN_CANCEL_TIMEOUT, retry_policy=OWN_CANCEL_RETRY,
                summary="close as Canceled")
            await workflow.wait_condition(lambda: False, timeout=OWN_CANCEL_ARRIVAL,
                                          timeout_summary="cancellation arriving")
        except ActivityError as err:
            if is_cancelled_exception(err):  # the cancellation overtook the activity's result
                raise
            workflow.logger.warning("could not close %s as Canceled (%s); closing as Completed",
                                    info.workflow_id, err)
        except TimeoutError:
            workflow.logger.warning("could not close %s as Canceled; closing as Completed",
                                    info.workflow_id)
        return result
    failure = failure_for(result)
    if failure is not None:
        raise failure
    return result
