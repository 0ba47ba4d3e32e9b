"""Asset leases: taken after approval, renewed while a gate waits mid-run, released at the end.

The fencing tokens granted here go to every step, which re-checks them in the transaction
that records its start; running steps renew their own leases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from opsconductor.schema.locks import (
    AcquireLocksInput,
    AcquireLocksResult,
    ReleaseLocksInput,
    RenewLocksInput,
)
from opsconductor.schema.messages import WaitKind
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.workflows.options import (
    LEASE_SECONDS,
    LOCK_EXTRA,
    LOCK_HEARTBEAT,
    LOCK_RETRY,
    RELEASE_RETRY,
    RELEASE_TIMEOUT,
    RENEW_RETRY,
    RENEW_TIMEOUT,
)
from opsconductor.workflows.state import RunState, Wait


def failure_text(err: ActivityError) -> str:
    """The activity's own message when it has one."""
    cause = err.cause
    return str(getattr(cause, "message", None) or cause or err)


class Leases:
    """The run's fencing tokens and the three lock activities."""

    def __init__(self, spec: ExecutionSpec, state: RunState) -> None:
        self.spec = spec
        self.state = state
        self.fencing: dict[str, int] = {}

    async def acquire(self, wait_seconds: float) -> str | None:
        """Take every asset's lease (all or nothing); the error when that failed."""
        assets = self.spec.assets
        journal = self.state.journal
        self.state.wait = Wait(WaitKind.LOCKS, f"locks on {', '.join(assets)}")
        journal.emit("locks.requested", data={"assets": assets})
        try:
            grant = await workflow.execute_activity(
                "acquire_locks",
                AcquireLocksInput(tenant=self.spec.tenant, assets=assets,
                                  execution_id=self.spec.execution_id,
                                  wait_timeout_seconds=wait_seconds, lease_seconds=LEASE_SECONDS),
                result_type=AcquireLocksResult,
                start_to_close_timeout=timedelta(seconds=wait_seconds) + LOCK_EXTRA,
                heartbeat_timeout=LOCK_HEARTBEAT, retry_policy=LOCK_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"locks on {', '.join(assets)}"[:200])
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError() from None
            error = f"could not lock {', '.join(assets)}: {failure_text(err)}"
            journal.emit("locks.failed", message=error)
            return error
        finally:
            self.state.wait = None
        self.fencing = dict(grant.tokens)
        journal.emit("locks.acquired", data={"tokens": self.fencing})
        return None

    async def keep(self, done: Callable[[], bool]) -> None:
        """Renew held leases while nothing else does (a gate in the middle of a run)."""
        every = timedelta(seconds=LEASE_SECONDS / 3)
        while not done():
            try:
                await workflow.wait_condition(done, timeout=every)
                return
            except TimeoutError:
                pass
            try:
                await workflow.execute_activity(
                    "renew_locks",
                    RenewLocksInput(tenant=self.spec.tenant, execution_id=self.spec.execution_id,
                                    assets=sorted(self.fencing), lease_seconds=LEASE_SECONDS),
                    start_to_close_timeout=RENEW_TIMEOUT, retry_policy=RENEW_RETRY,
                    summary="renew asset leases")
            except ActivityError as err:
                self.state.journal.emit("locks.lost",
                                        message=str(getattr(err.cause, "message", err)))
                return

    async def release(self) -> None:
        if not self.fencing:
            return
        try:
            await workflow.execute_activity(
                "release_locks",
                ReleaseLocksInput(tenant=self.spec.tenant, execution_id=self.spec.execution_id,
                                  tokens=self.fencing),
                start_to_close_timeout=RELEASE_TIMEOUT, retry_policy=RELEASE_RETRY)
            self.state.journal.emit("locks.released", data={"assets": sorted(self.fencing)})
        except ActivityError as err:
            self.state.journal.emit("locks.release_failed", message=str(err.cause or err))
        self.fencing = {}
