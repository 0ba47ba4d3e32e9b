"""Execution metrics, recorded by the workflow through Temporal's replay-safe metric meter.

The worker's Temporal runtime forwards them (with Temporal's own SDK metrics) to the
process's OpenTelemetry meter provider, which serves them at `/metrics` and to OTLP when
configured. Recorded once per run, when it ends; nothing is recorded again on replay.
"""

from __future__ import annotations

import warnings
from datetime import datetime

from temporalio import workflow
from temporalio.contrib.opentelemetry.workflow import completed_span

from opsconductor.schema.enums import ExecutionStatus
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.workflows.state import RunState


class Waits:
    """How long the run waited for approval and for its asset locks (workflow time)."""

    def __init__(self) -> None:
        self.approval_seconds: float | None = None
        self.lock_seconds: float | None = None


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else max(0.0, (end - start).total_seconds())


def ending_span(spec: ExecutionSpec, status: ExecutionStatus, duration: float | None,
                queue: float | None, waits: Waits) -> None:
    """An `opsc.execution.end` span under the run's workflow span (Temporal's tracing
    interceptor makes it replay-safe; without tracing it goes to a no-op tracer)."""
    attributes: dict[str, str | float] = {
        "opsc.execution_id": spec.execution_id, "opsc.workflow_id": spec.workflow_id,
        "opsc.tenant": spec.tenant, "opsc.environment": spec.environment.value,
        "opsc.sla_class": spec.sla_class.value, "opsc.actor": spec.actor,
        "opsc.outcome": status.value}
    for key, value in (("opsc.duration_seconds", duration), ("opsc.queue_wait_seconds", queue),
                       ("opsc.lock_wait_seconds", waits.lock_seconds),
                       ("opsc.approval_wait_seconds", waits.approval_seconds)):
        if value is not None:
            attributes[key] = value
    with warnings.catch_warnings():  # "prefer the plugin" when no interceptor is installed
        warnings.simplefilter("ignore", DeprecationWarning)
        completed_span("opsc.execution.end", attributes=attributes)


def record_ending(spec: ExecutionSpec, state: RunState, waits: Waits) -> None:
    """Count the run by status, tenant, environment and SLA class; its duration, its waits
    (queue: submitted to first step; locks; approval) and whether it met its SLA deadline."""
    status, started_at, completed_at = state.status, state.started_at, state.completed_at
    deadline = state.deadline
    first_step_at = min((s.started_at for s in state.steps.values()
                         if s.started_at is not None), default=None)
    meter = workflow.metric_meter()
    sla = spec.sla_class.value
    meter.create_counter(
        "opsc_executions_total", "Executions ended, by status, tenant, environment and SLA "
        "class").add(1, {"status": status.value, "tenant": spec.tenant,
                         "environment": spec.environment.value, "sla_class": sla})
    submitted = spec.submitted_at or started_at
    duration = seconds_between(submitted, completed_at)
    if duration is not None:
        meter.create_histogram_float(
            "opsc_execution_duration_seconds", "Submission to end of an execution",
            "s").record(duration, {"status": status.value, "sla_class": sla})
    queue = seconds_between(submitted, first_step_at)
    if queue is not None:
        meter.create_histogram_float(
            "opsc_queue_wait_seconds", "Submission to the first step's start",
            "s").record(queue, {"sla_class": sla})
    if waits.lock_seconds is not None:
        meter.create_histogram_float(
            "opsc_lock_wait_seconds", "Time spent acquiring the plan's asset locks",
            "s").record(waits.lock_seconds, {"sla_class": sla})
    if waits.approval_seconds is not None:
        meter.create_histogram_float(
            "opsc_approval_wait_seconds", "Time spent waiting for the execution's approval",
            "s").record(waits.approval_seconds, {"sla_class": sla})
    ending_span(spec, status, duration, queue, waits)
    if status is not ExecutionStatus.CANCELLED and started_at is not None:
        met = status is not ExecutionStatus.TIMEOUT and (
            deadline is None or completed_at is None or completed_at <= deadline)
        meter.create_counter(
            "opsc_sla_outcomes_total", "Ended executions that met (met=true) or missed their "
            "SLA deadline").add(1, {"sla_class": sla, "met": "true" if met else "false"})
