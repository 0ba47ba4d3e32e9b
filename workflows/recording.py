"""What the run tells the world: its event journal, mirror batches and search attributes.

Events collect in the journal and leave in the next mirror batch (one local activity), so a
status change costs no round trip of its own. Search attributes are upserted at most once per
batch, and only when the status changed since the last one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

from opsconductor.schema import search_attributes as sa
from opsconductor.schema.enums import ApprovalState, ExecutionStatus, StepStatus
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import MirrorWrite, MirrorWriteResult
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.workflows.options import MIRROR_LOCAL_RETRY, MIRROR_RETRY, MIRROR_TIMEOUT

VISIBLE_MIRROR_RETRY = "mirror-retry-visible"
NEVER_RETRIED = (ErrorType.ILLEGAL_TRANSITION.value, ErrorType.MIRROR_WRITE_REFUSED.value)

if TYPE_CHECKING:
    from opsconductor.workflows.state import RunState


def search_attribute_updates(spec: ExecutionSpec, status: ExecutionStatus,
                             approval_state: ApprovalState, *,
                             identity: bool) -> list[SearchAttributeUpdate[Any]]:
    """Status and approval state always; the identity attributes when asked for."""
    updates: list[SearchAttributeUpdate[Any]] = [
        sa.STATUS.value_set(status.value), sa.APPROVAL_STATE.value_set(approval_state.value)]
    if identity:
        updates += [sa.TENANT.value_set(spec.tenant),
                    sa.ENVIRONMENT.value_set(spec.environment.value),
                    sa.ACTOR.value_set(spec.actor),
                    sa.SLA_CLASS.value_set(spec.sla_class.value),
                    sa.ASSETS.value_set(spec.assets or ["localhost"])]
    return updates


def current_details(state: RunState) -> str:
    """Status, steps done, the running steps or what the run waits on, and the error
    (markdown, as the Web UI renders it); counted without building the progress view."""
    counts: dict[StepStatus, int] = {}
    running: list[str] = []
    for step in state.steps.values():
        counts[step.status] = counts.get(step.status, 0) + 1
        if step.status is StepStatus.RUNNING and len(running) < 10:
            running.append(step.spec.id)
    lines = [f"**{state.status.value}** · {counts.get(StepStatus.COMPLETED, 0)}/"
             f"{len(state.steps)} steps completed"]
    failed = sum(counts.get(s, 0) for s in (StepStatus.FAILED, StepStatus.TIMEOUT))
    if failed:
        lines.append(f"failed steps: {failed}")
    if running:
        lines.append("running: " + ", ".join(running))
    if state.wait is not None:
        lines.append(f"waiting: {state.wait.text}")
    if state.error:
        lines.append(f"error: {state.error[:500]}")
    return "\n\n".join(lines)


class Recorder:
    """Mirror batches, serialised: the mirror sees status events in the order they happened."""

    def __init__(self, spec: ExecutionSpec, state: RunState) -> None:
        self.spec = spec
        self.state = state
        self.lock = asyncio.Lock()

    def upsert_search_attributes(self, initial: bool = False) -> None:
        """Each upsert is a visibility write on the server; the identity attributes go only
        when the starter did not set them already."""
        self.state.search_attributes_stale = False
        identity = initial and workflow.info().typed_search_attributes.get(sa.TENANT) is None
        workflow.upsert_search_attributes(search_attribute_updates(
            self.spec, self.state.status, self.state.approval_state, identity=identity))

    def show_where(self) -> None:
        """The Web UI's "current details": where the run is now (no history event)."""
        workflow.set_current_details(current_details(self.state))

    async def flush(self, **fields: Any) -> MirrorWriteResult:
        """One mirror batch with the journal's events and the current status."""
        async with self.lock:
            self.show_where()
            if self.state.search_attributes_stale:
                self.upsert_search_attributes()
            write = MirrorWrite(execution_id=self.spec.execution_id,
                                workflow_id=self.spec.workflow_id, status=self.state.status,
                                approval_state=self.state.approval_state,
                                events=self.state.journal.take(), **fields)
            try:
                return await workflow.execute_local_activity(
                    "mirror_write", write, result_type=MirrorWriteResult,
                    start_to_close_timeout=MIRROR_TIMEOUT, retry_policy=MIRROR_LOCAL_RETRY,
                    summary="mirror")
            except ActivityError as err:
                if not (transient(err) and workflow.patched(VISIBLE_MIRROR_RETRY)):
                    raise
            # PostgreSQL has failed this batch for a while: keep trying where it shows (a
            # pending activity with its attempts and last failure; `opsconductor health`).
            return await workflow.execute_activity(
                "mirror_write", write, result_type=MirrorWriteResult,
                start_to_close_timeout=MIRROR_TIMEOUT, retry_policy=MIRROR_RETRY,
                summary="mirror (PostgreSQL failing: retrying)")


def transient(err: ActivityError) -> bool:
    """A batch that ran out of its local window (or failed retryably), not one refused."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return not cause.non_retryable and cause.type not in NEVER_RETRIED
    return isinstance(cause, ActivityTimeoutError)
