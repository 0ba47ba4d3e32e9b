"""Step telemetry, recorded where steps run: metrics and spans around every `run_step`.

An activity interceptor (cross-cutting, so the step code stays free of it) that, for each
attempt of a step, keeps the in-flight gauge, records the step's duration by tool and outcome,
counts retries and unknown outcomes, and opens the span tree step → target → attempt under
Temporal's own RunActivity span, with the attributes an operator filters on. Instruments come
from the meter and tracer it is given: with OpenTelemetry's no-op providers it costs nothing.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from opentelemetry import metrics, trace
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import StepResult, StepRunInput

SCOPE = "opsconductor"
# Seconds: steps take from milliseconds (noop) to an hour (long deploys).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600, 1800, 3600)


class StepInstruments:
    """The step metrics, created once per meter."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.duration = meter.create_histogram(
            "opsc_step_duration_seconds", unit="s",
            description="One attempt of a step, by tool and outcome",
            explicit_bucket_boundaries_advisory=list(SECONDS_BUCKETS))
        self.in_flight = meter.create_up_down_counter(
            "opsc_steps_in_flight", description="Step attempts running on this worker")
        self.retries = meter.create_counter(
            "opsc_step_retries_total", description="Step attempts after the first")
        self.unknown = meter.create_counter(
            "opsc_unknown_outcomes_total",
            description="Steps whose outcome was unknown after a crash or lost connection")


def outcome_of(result: Any) -> tuple[str, str | None]:
    """The outcome label and error type of what `run_step` returned."""
    if isinstance(result, StepResult):
        return result.status.value, result.error_type
    return "unknown", None


class _StepTelemetry(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, owner: StepTelemetry) -> None:
        super().__init__(next)
        self.owner = owner

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if info.activity_type != "run_step" or not input.args \
                or not isinstance(input.args[0], StepRunInput):
            return await super().execute_activity(input)
        req: StepRunInput = input.args[0]
        step = req.step
        attempt = info.attempt + req.attempt_offset
        labels = {"tool": step.tool}
        inst, tracer = self.owner.instruments, self.owner.tracer
        inst.in_flight.add(1, labels)
        if info.attempt > 1:
            inst.retries.add(1, labels)
        common: dict[str, Any] = {
                  "opsc.execution_id": req.execution_id, "opsc.workflow_id": req.workflow_id,
                  "opsc.tenant": req.tenant, "opsc.environment": req.environment.value,
                  "opsc.step_id": step.id, "opsc.tool": step.tool}
        asset = step.target or "localhost"
        start = time.monotonic()
        outcome, error_type = "error", None
        try:
            with contextlib.ExitStack() as stack:
                spans = [stack.enter_context(tracer.start_as_current_span(name, attributes=attrs))
                         for name, attrs in (
                             (f"opsc.step {step.id}", common),
                             (f"opsc.target {asset}", {**common, "opsc.asset": asset}),
                             (f"opsc.attempt {attempt}", {**common, "opsc.asset": asset,
                                                          "opsc.attempt": attempt}))]
                try:
                    result = await super().execute_activity(input)
                except ApplicationError as err:
                    error_type = err.type
                    raise
                outcome, error_type = outcome_of(result)
                for span in spans:
                    span.set_attribute("opsc.outcome", outcome)
                    if error_type:
                        span.set_attribute("opsc.error_type", error_type)
                return result
        finally:
            inst.in_flight.add(-1, labels)
            inst.duration.record(time.monotonic() - start, {**labels, "outcome": outcome})
            if error_type == ErrorType.UNKNOWN_OUTCOME.value:
                inst.unknown.add(1, labels)


class StepTelemetry(Interceptor):
    """Worker interceptor: step metrics on `meter`, step spans on `tracer` (default: the
    global OpenTelemetry providers)."""

    def __init__(self, meter: metrics.Meter | None = None,
                 tracer: trace.Tracer | None = None) -> None:
        self.instruments = StepInstruments(meter or metrics.get_meter(SCOPE))
        self.tracer = tracer or trace.get_tracer(SCOPE)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _StepTelemetry(next, self)


class MirrorGauges:
    """Gauges read from the mirror: executions in flight by status and tenant, and the open
    dead-letter entries. Every worker reports the same cluster-wide values (aggregate with
    `max`, never `sum`); `refresh` reads them, the gauges' callbacks report the last read."""

    IN_FLIGHT = ("queued", "pending_approval", "approved", "running")

    def __init__(self, pool: Any, meter: metrics.Meter) -> None:
        self.pool = pool
        self.in_flight: dict[tuple[str, str], int] = {}
        self.dlq_open = 0
        meter.create_observable_gauge(
            "opsc_executions_in_flight", callbacks=[self._observe_in_flight],
            description="Executions not yet ended, by status and tenant (from the mirror)")
        meter.create_observable_gauge(
            "opsc_dlq_depth", callbacks=[self._observe_dlq],
            description="Open dead-letter entries (from the mirror)")

    async def refresh(self) -> None:
        rows = await self.pool.fetch(
            "SELECT status::text AS status, tenant, count(*) AS n FROM execution.executions "
            "WHERE status::text = ANY($1::text[]) GROUP BY 1, 2", list(self.IN_FLIGHT))
        seen = {(r["status"], r["tenant"]): int(r["n"]) for r in rows}
        # A combination that emptied reports 0 rather than disappearing with its last value.
        self.in_flight = {key: seen.get(key, 0) for key in {*self.in_flight, *seen}}
        self.dlq_open = int(await self.pool.fetchval(
            "SELECT count(*) FROM execution.execution_dlq WHERE status = 'open'"))

    def _observe_in_flight(self, _options: Any) -> list[metrics.Observation]:
        return [metrics.Observation(n, {"status": status, "tenant": tenant})
                for (status, tenant), n in self.in_flight.items()]

    def _observe_dlq(self, _options: Any) -> list[metrics.Observation]:
        return [metrics.Observation(self.dlq_open)]
