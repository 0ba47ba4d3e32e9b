"""The lock activities on a real Temporal dev server with the workflow's own wire models:
a queued acquisition heartbeats, is cancelled by a workflow cancel, and leaves no waiter row."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from opsconductor.activities.locks import LockActivities
from opsconductor.safety import mutex
from opsconductor.schema.locks import RenewLocksInput
from opsconductor.schema.messages import LockGrant, LockRelease, LockRequest
from tests.helpers import wait_for


@workflow.defn(sandboxed=False)
class LockProbe:
    @workflow.run
    async def run(self, req: LockRequest) -> dict[str, int]:
        grant = await workflow.execute_activity(
            "acquire_locks", req, result_type=LockGrant,
            start_to_close_timeout=timedelta(seconds=60), heartbeat_timeout=timedelta(seconds=2),
            retry_policy=RetryPolicy(maximum_attempts=1),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED)
        await workflow.execute_activity(
            "renew_locks", RenewLocksInput(tenant=req.tenant, execution_id=req.execution_id,
                                           assets=list(grant.tokens), lease_seconds=30),
            start_to_close_timeout=timedelta(seconds=10))
        await workflow.execute_activity(
            "release_locks", LockRelease(tenant=req.tenant, execution_id=req.execution_id,
                                         tokens=grant.tokens),
            start_to_close_timeout=timedelta(seconds=10))
        return grant.tokens


async def test_lock_activities_on_real_temporal(temporal_client: Client,
                                                db_pool: asyncpg.Pool) -> None:
    locks = LockActivities(pool=db_pool)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    queue = f"locks-{uuid.uuid4().hex[:8]}"
    async with Worker(temporal_client, task_queue=queue, workflows=[LockProbe],
                      activities=[locks.acquire_locks, locks.renew_locks,
                                  locks.release_locks],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        # uncontended: tokens come back and the lease is released at the end
        eid = str(uuid.uuid4())
        tokens = await temporal_client.execute_workflow(
            LockProbe.run, LockRequest(tenant=tenant, execution_id=eid, assets=["b", "a"],
                                       wait_timeout_seconds=10),
            id=f"probe-{eid}", task_queue=queue)
        assert sorted(tokens) == ["a", "b"]
        assert await mutex.holder_of(db_pool, tenant, "a") is None

        # queued behind another holder, then the workflow is cancelled
        await mutex.acquire(db_pool, tenant, ["a"], "blocker", "w", 60, timeout=1)
        eid2 = str(uuid.uuid4())
        handle = await temporal_client.start_workflow(
            LockProbe.run, LockRequest(tenant=tenant, execution_id=eid2, assets=["a"],
                                       wait_timeout_seconds=60),
            id=f"probe-{eid2}", task_queue=queue)
        async def heartbeat_details() -> Any:
            desc = await handle.describe()
            pending = desc.raw_description.pending_activities
            return pending[0].heartbeat_details.payloads if pending else None

        payloads = await wait_for(heartbeat_details, timeout=15,
                                  what="a heartbeat of the queued acquire_locks activity")
        details = temporal_client.data_converter.payload_converter.from_payloads(payloads)[0]
        assert details["holder_execution_id"] == "blocker"
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        n = await db_pool.fetchval(
            "SELECT count(*) FROM execution.execution_lock_waiters WHERE tenant = $1", tenant)
        assert n == 0
        holder = await mutex.holder_of(db_pool, tenant, "a")
        assert holder is not None and holder.execution_id == "blocker"
        await mutex.release(db_pool, tenant, "blocker")
