"""The worker process: ExecutionWorkflow plus every activity, with log masking installed.

The activities are methods of objects built here, once, with their dependencies (settings,
the Postgres pool, the RBAC engine, the secret resolver, the masker); nothing they use is a
module global, so a test builds them with its own pool and settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.runtime import Runtime
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from opsconductor.activities import db
from opsconductor.activities.authz import RbacActivities
from opsconductor.activities.cleanup import CleanupActivities
from opsconductor.activities.failures import TrimFailures
from opsconductor.activities.locks import LockActivities
from opsconductor.activities.mirror import MirrorActivities
from opsconductor.activities.plan_checks import CheckActivities
from opsconductor.activities.run_control import RunControlActivities
from opsconductor.activities.schema_check import require_schema
from opsconductor.activities.sla import SlaMonitor
from opsconductor.activities.steps import StepActivities
from opsconductor.activities.submissions import SubmissionActivities
from opsconductor.activities.telemetry import SCOPE, MirrorGauges
from opsconductor.activities.windows import WindowActivities
from opsconductor.safety.command_env import worker_held_secrets
from opsconductor.safety.masking import LiveSecrets, Masker, install_log_masking
from opsconductor.safety.rbac import RbacEngine
from opsconductor.safety.secrets import SecretResolver
from opsconductor.schema.config import Settings, load_settings
from opsconductor.starter.telemetry import Telemetry, tracing_interceptors
from opsconductor.workflows.execution import ExecutionWorkflow

log = logging.getLogger("opsconductor.worker")

PASSTHROUGH = ("opsconductor.schema", "pydantic", "pydantic_core", "annotated_types",
               "opentelemetry")


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
        strict = load_settings().workflow_sandbox == "strict"
    modules = PASSTHROUGH if strict else (*PASSTHROUGH, "opsconductor.workflows")
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*modules))


async def connect(settings: Settings, *, runtime: Runtime | None = None,
                  interceptors: Sequence[ClientInterceptor] = ()) -> Client:
    """A client of the configured server (`opsconductor.starter.connect`: the `temporal` CLI's
    TEMPORAL_* variables and profiles, then OPSC_*, then stack.json)."""
    from opsconductor.starter.connect import connect as connect_temporal

    return await connect_temporal(settings, runtime=runtime, interceptors=interceptors)


async def ready_namespace(client: Client, settings: Settings) -> None:
    """Refuse to start on a namespace without our search attributes: every workflow task
    would fail when it upserts one, and the executions would hang."""
    from opsconductor.starter.namespace_setup import NamespaceProblem, missing_search_attributes

    missing = await missing_search_attributes(client, client.namespace)
    if missing:
        raise NamespaceProblem(
            f"namespace {client.namespace!r} lacks the search attributes {', '.join(missing)}: "
            "run `opsconductor setup` (once per namespace) before starting workers")


def build_activities(settings: Settings, pool: asyncpg.Pool, *,
                     live: LiveSecrets | None = None) -> list[Callable[..., Any]]:
    """Every activity the workflow calls (by name), bound to objects built with their
    dependencies. Secret values a step uses are registered with `live` (default: the
    registry of the masking filter on the root logger, installed here if missing)."""
    held = worker_held_secrets(settings)  # the worker's own tokens, database password, ...
    masker = Masker.from_settings(settings).with_secrets(held)
    if live is None:
        live = install_log_masking(masker=masker).live
    live.register(held)
    secrets = SecretResolver.from_settings(settings)
    engine = RbacEngine.from_settings(settings)
    steps = StepActivities(settings=settings, pool=pool, rbac=engine, secrets=secrets,
                           masker=masker, live=live)
    mirror = MirrorActivities(pool=pool)
    rbac = RbacActivities(pool=pool, rbac=engine)
    cleanup = CleanupActivities(settings=settings, secrets=secrets, masker=masker, rbac=engine,
                                pool=pool)
    checks = CheckActivities(settings=settings, masker=masker, rbac=engine, pool=pool)
    locks = LockActivities(pool=pool)
    submissions = SubmissionActivities(settings=settings, pool=pool, rbac=engine)
    return [steps.run_step, mirror.mirror_write, rbac.authorize, cleanup.run_cleanup,
            checks.run_plan_safety_checks, locks.acquire_locks, locks.renew_locks,
            locks.release_locks, RunControlActivities().cancel_own_run,
            submissions.verify_submission, WindowActivities(settings=settings).window_policies]


def build_worker(client: Client, task_queue: str, *, pool: asyncpg.Pool,
                 settings: Settings | None = None, max_concurrent_activities: int = 200,
                 telemetry: Telemetry | None = None, **kwargs: Any) -> Worker:
    """The worker, draining on shutdown: it stops polling, lets running steps finish for up
    to `graceful_shutdown_seconds` (heartbeating), then cancels what is left; a short sticky
    queue timeout lets another worker take a dead one's workflows in seconds. `telemetry`
    adds step metrics and spans; Temporal's tracing and the workflow's own metrics come with
    the client (its interceptors and runtime)."""
    settings = settings or load_settings()
    kwargs.setdefault("graceful_shutdown_timeout",
                      timedelta(seconds=settings.graceful_shutdown_seconds))
    kwargs.setdefault("sticky_queue_schedule_to_start_timeout",
                      timedelta(seconds=settings.sticky_queue_timeout_seconds))
    interceptors = [*kwargs.pop("interceptors", ()),
                    *(telemetry.interceptors if telemetry is not None else ()), TrimFailures()]
    return Worker(client, task_queue=task_queue, workflows=[ExecutionWorkflow],
                  activities=build_activities(settings, pool),
                  workflow_runner=workflow_runner(settings.workflow_sandbox == "strict"),
                  max_concurrent_activities=max_concurrent_activities,
                  interceptors=interceptors, **kwargs)


@contextlib.asynccontextmanager
async def every(seconds: float, fn: Callable[[], Awaitable[Any]],
                what: str) -> AsyncIterator[None]:
    """Run `fn` every `seconds` while the block runs; a database error is logged, not fatal."""
    async def loop() -> None:
        while True:
            try:
                await fn()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("%s failed: %s", what, err)
            await asyncio.sleep(seconds)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def refreshing(gauges: MirrorGauges, settings: Settings) -> Any:
    """Re-read the mirror's gauges every `metrics_refresh_seconds` while the block runs."""
    return every(settings.metrics_refresh_seconds, gauges.refresh, "mirror gauges refresh")


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM (what deploys and autoscalers send) and SIGINT start the drain."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)


async def run_worker(settings: Settings | None = None,
                     stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (without one: until SIGTERM/SIGINT), then drain (`build_worker`);
    masking and the pool are set up first and closed last, after the drain."""
    settings = settings or load_settings()
    install_log_masking(masker=Masker.from_settings(settings))
    telemetry = Telemetry.create()
    pool = await db.open_pool(settings)
    try:
        await require_schema(pool)  # refuse a schema older or newer than this code
        client = await connect(settings, runtime=telemetry.runtime,
                               interceptors=tracing_interceptors(telemetry.tracer_provider))
        await ready_namespace(client, settings)
    except BaseException:
        await pool.close()
        raise
    worker = build_worker(client, settings.task_queue, pool=pool, settings=settings,
                          telemetry=telemetry)
    url = telemetry.serve_metrics(settings.metrics_address)
    if url:
        log.info("worker metrics at %s", url)
    meter = telemetry.meter_provider.get_meter(SCOPE)
    gauges = MirrorGauges(pool, meter)
    sla = SlaMonitor(pool, settings, meter)
    if stop is None:  # a caller that passes `stop` owns the signals (CLI, dev stack)
        stop = asyncio.Event()
        _stop_on_signals(stop)
    log.info("worker polling %s on %s", settings.task_queue,
             client.service_client.config.target_host)
    try:
        async with telemetry.running(), worker, refreshing(gauges, settings), \
                every(settings.sla_check_seconds, sla.check, "SLA check"):
            await stop.wait()
            log.info("worker draining: running steps get up to %gs to finish",
                     settings.graceful_shutdown_seconds)
    finally:
        from opsconductor.activities.executors.ssh import close_connections

        await close_connections()
        await pool.close()
