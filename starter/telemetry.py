"""Process telemetry: OpenTelemetry providers, Temporal's runtime metrics, `/metrics`.

One `Telemetry` per worker process. Its meter provider feeds a Prometheus registry (served at
`/metrics`) and, when `OTEL_EXPORTER_OTLP_*` names an endpoint, OTLP. Temporal's SDK metrics
and the workflow's own (`workflow.metric_meter()`) reach the same provider through a metric
buffer on the Temporal runtime the worker's client uses, so one endpoint shows both.
Tracing follows the standard `OTEL_*` variables: with no exporter configured there is no
tracer provider, no interceptor and no cost; tests pass their own provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, start_http_server
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_HISTOGRAM,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)

from opsconductor.activities.telemetry import SCOPE, SECONDS_BUCKETS, StepTelemetry

log = logging.getLogger("opsconductor.telemetry")

SERVICE = "opsconductor-worker"


def _observe(values: dict[frozenset[tuple[str, Any]], tuple[dict[str, Any], float]],
             _options: Any) -> list[Observation]:
    """A gauge's last value per attribute set, read when the exporter collects."""
    return [Observation(value, attributes=attrs) for attrs, value in list(values.values())]


def otlp_configured(signal: str) -> bool:
    """An OTLP endpoint is configured for `signal` (traces, metrics) and not switched off."""
    if os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip() == "none":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"))


@cache
def configured_tracer_provider() -> TracerProvider | None:
    """The process's tracer provider exporting by OTLP, when `OTEL_*` configures it; set as
    the global provider. None (tracing off) otherwise."""
    if not otlp_configured("traces"):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracing_interceptors(provider: trace.TracerProvider | None) -> list[TracingInterceptor]:
    """Temporal's tracing interceptor on `provider`; none when tracing is off."""
    if provider is None:
        return []
    return [TracingInterceptor(provider.get_tracer("temporalio"))]


def seconds_views() -> list[View]:
    """Second-scaled buckets for every `opsc_*_seconds` histogram (OpenTelemetry's default
    buckets are milliseconds-shaped)."""
    return [View(instrument_name="opsc_*_seconds",
                 aggregation=ExplicitBucketHistogramAggregation(list(SECONDS_BUCKETS)))]


class MetricBufferDrain:
    """Moves Temporal's buffered metric updates into an OpenTelemetry meter.

    Not `temporalio.contrib.opentelemetry.MetricsExporter`: it caches converted attributes by
    `id()`, but the attribute set of a workflow's `record(value, {...})` is a fresh object
    each time, freed once drained, so a later set can reuse the address and be recorded
    under the earlier set's labels (a failed run's duration counted as a completed one's).
    Here instruments are keyed by name and kind, and attributes are read on every update."""

    def __init__(self, buffer: MetricBuffer, meter_provider: MeterProvider, *,
                 meter_name: str, poll_interval: timedelta) -> None:
        self.buffer = buffer
        self.meter = meter_provider.get_meter(meter_name)
        self.poll_seconds = poll_interval.total_seconds()
        self.instruments: dict[tuple[str, int], Any] = {}
        self.gauges: dict[str, dict[frozenset[tuple[str, Any]], tuple[dict[str, Any], float]]] = {}

    def _instrument(self, metric: Any) -> Any:
        key = (metric.name, metric.kind)
        found = self.instruments.get(key)
        if found is None:
            unit, text = metric.unit or "", metric.description or ""
            if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
                found = self.meter.create_counter(metric.name, unit=unit, description=text)
            elif metric.kind == BUFFERED_METRIC_KIND_HISTOGRAM:
                found = self.meter.create_histogram(metric.name, unit=unit, description=text)
            else:
                values = self.gauges.setdefault(metric.name, {})
                found = self.meter.create_observable_gauge(
                    metric.name, unit=unit, description=text, callbacks=[
                        functools.partial(_observe, values)])
            self.instruments[key] = found
        return found

    def drain(self) -> None:
        for update in self.buffer.retrieve_updates():
            try:
                metric, attrs = update.metric, dict(update.attributes)
                instrument = self._instrument(metric)
                if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
                    instrument.add(update.value, attributes=attrs)
                elif metric.kind == BUFFERED_METRIC_KIND_HISTOGRAM:
                    instrument.record(update.value, attributes=attrs)
                else:
                    self.gauges[metric.name][frozenset(attrs.items())] = (attrs, update.value)
            except Exception:  # one bad update must not stop the others
                log.exception("could not export a buffered Temporal metric")

    async def run(self, stop: asyncio.Event) -> None:
        """Drain every `poll_interval` until `stop` is set, then once more."""
        while not stop.is_set():
            self.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
        self.drain()


@dataclass
class Telemetry:
    """Meter provider with its Prometheus registry, the Temporal runtime whose metrics feed
    it, the tracer provider (None: tracing off) and, once served, the `/metrics` URL."""

    meter_provider: MeterProvider
    registry: CollectorRegistry
    runtime: Runtime
    buffer: MetricBuffer
    tracer_provider: trace.TracerProvider | None = None
    metrics_url: str | None = None
    _servers: list[Any] = field(default_factory=list)

    @classmethod
    def create(cls, *, tracer_provider: trace.TracerProvider | None = None,
               extra_readers: Sequence[MetricReader] = ()) -> Telemetry:
        """Providers for one process; `tracer_provider` default: the one `OTEL_*` configures."""
        registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = [
            PrometheusMetricReader(registry=registry, scope_info_enabled=False), *extra_readers]
        if otlp_configured("metrics"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        provider = MeterProvider(metric_readers=readers, views=seconds_views(),
                                 resource=Resource.create({"service.name": SERVICE}))
        buffer = MetricBuffer(50_000, duration_format=MetricBufferDurationFormat.SECONDS)
        runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer))
        return cls(meter_provider=provider, registry=registry, runtime=runtime, buffer=buffer,
                   tracer_provider=tracer_provider or configured_tracer_provider())

    @property
    def interceptors(self) -> list[Any]:
        """The worker's own interceptors: step metrics and spans. Temporal's tracing goes on
        the client (`tracing_interceptors`), which hands it to its workers."""
        tracer = (self.tracer_provider.get_tracer(SCOPE) if self.tracer_provider is not None
                  else trace.NoOpTracer())
        return [StepTelemetry(self.meter_provider.get_meter(SCOPE), tracer)]

    def serve_metrics(self, address: str) -> str | None:
        """Serve `/metrics` at `address` (host:port; a port in use falls back to a free one);
        return its URL, None when `address` is empty."""
        if not address:
            return None
        host, _, port = address.rpartition(":")
        host = host or "127.0.0.1"
        try:
            server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        except OSError as err:
            log.warning("metrics port %s unavailable (%s): serving on a free port", port, err)
            server, _thread = start_http_server(0, addr=host, registry=self.registry)
        self._servers.append(server)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.metrics_url = f"http://{shown}:{server.server_port}/metrics"
        return self.metrics_url

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Telemetry]:
        """Drain Temporal's metric buffer into the meter provider while the block runs; on
        exit stop `/metrics` and flush the providers."""
        drain = MetricBufferDrain(self.buffer, self.meter_provider, meter_name="temporalio",
                                  poll_interval=timedelta(milliseconds=500))
        stop = asyncio.Event()
        task = asyncio.create_task(drain.run(stop))
        try:
            yield self
        finally:
            stop.set()
            await task
            for server in self._servers:
                server.shutdown()
                server.server_close()
            self._servers.clear()
            await asyncio.to_thread(self.meter_provider.force_flush)

    def render(self) -> str:
        """The Prometheus text exposition of everything recorded so far."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
