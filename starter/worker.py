"""The worker process: ExecutionWorkflow plus every activity, with log masking installed."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from opsconductor.activities import db
from opsconductor.activities.authz import authorize
from opsconductor.activities.cleanup import run_cleanup
from opsconductor.activities.locks import acquire_locks, release_locks, renew_locks
from opsconductor.activities.mirror import mirror_write
from opsconductor.activities.plan_checks import run_plan_safety_checks
from opsconductor.activities.steps import run_step
from opsconductor.safety.masking import install_log_masking
from opsconductor.schema.config import Settings, load_settings
from opsconductor.workflows.execution import ExecutionWorkflow

log = logging.getLogger("opsconductor.worker")

ACTIVITIES: Sequence[Any] = (run_step, mirror_write, authorize, run_cleanup,
                             run_plan_safety_checks, acquire_locks, renew_locks,
                             release_locks)
PASSTHROUGH = ("opsconductor.schema", "pydantic", "pydantic_core", "annotated_types")


def workflow_runner(strict: bool | None = None) -> SandboxedWorkflowRunner:
    """The sandbox, in one of two strengths.

    strict: our workflow modules are re-imported into the sandbox for every run, so any
    non-deterministic call in them fails loudly. The test suite runs this way
    (OPSC_WORKFLOW_SANDBOX=strict).
    fast (default): they are passed through like `schema`, which saves about a third of the
    worker's CPU per execution (the re-import dominated it); the workflow code is the same
    code the strict suite and the replay test have checked.
    """
    if strict is None:
        strict = os.environ.get("OPSC_WORKFLOW_SANDBOX", "fast").lower() == "strict"
    modules = PASSTHROUGH if strict else (*PASSTHROUGH, "opsconductor.workflows")
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*modules))


async def connect(settings: Settings) -> Client:
    if not settings.temporal_address:
        raise RuntimeError("no Temporal server configured: set OPSC_TEMPORAL_ADDRESS or start "
                           "`opsconductor dev`")
    return await Client.connect(settings.temporal_address, namespace=settings.namespace,
                                data_converter=pydantic_data_converter)


def build_worker(client: Client, task_queue: str, *, max_concurrent_activities: int = 200,
                 **kwargs: Any) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=[ExecutionWorkflow],
                  activities=list(ACTIVITIES), workflow_runner=workflow_runner(),
                  max_concurrent_activities=max_concurrent_activities, **kwargs)


async def run_worker(settings: Settings | None = None,
                     stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or forever); the pool and masking are set up first."""
    settings = settings or load_settings()
    install_log_masking()
    if not settings.database_url:
        raise RuntimeError("no database configured: set OPSC_DATABASE_URL or start "
                           "`opsconductor dev`")
    pool = await db.create_pool(settings.database_url)
    db.set_pool(pool)
    client = await connect(settings)
    worker = build_worker(client, settings.task_queue)
    log.info("worker polling %s on %s", settings.task_queue, settings.temporal_address)
    try:
        async with worker:
            await (stop.wait() if stop else asyncio.Event().wait())
    finally:
        from opsconductor.activities.executors.ssh import close_connections

        await close_connections()
        db.set_pool(None)
        await pool.close()
