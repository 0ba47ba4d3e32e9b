"""Run control: asking Temporal to cancel the calling workflow's own run.

A workflow cannot cancel itself (Temporal refuses a cancel request from a run to itself), yet
an execution cancelled by the `cancel` signal or update must close as Canceled, as one
cancelled with `temporal workflow cancel` does. This activity sends the request through the
worker's client; the workflow then receives an ordinary cancellation and ends with it.
"""

from __future__ import annotations

from temporalio import activity

from opsconductor.schema.messages import OwnCancel


class RunControlActivities:
    """`cancel_own_run`, through the client of the worker that runs it."""

    @activity.defn(name="cancel_own_run")
    async def cancel_own_run(self, req: OwnCancel) -> None:
        """Request cancellation of exactly that run (a later run of the id is never hit)."""
        handle = activity.client().get_workflow_handle(req.workflow_id, run_id=req.run_id)
        await handle.cancel(reason=req.reason)
