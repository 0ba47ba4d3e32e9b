"""Temporal's buffered metric updates reach OpenTelemetry under their own labels, even when an
attribute set's object lives at an address an earlier, freed set used (what a workflow's
`record(value, {...})` produces: a fresh set per call)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from temporalio.runtime import BUFFERED_METRIC_KIND_COUNTER, BUFFERED_METRIC_KIND_HISTOGRAM

from opsconductor.starter.telemetry import MetricBufferDrain


@dataclass
class Metric:
    name: str
    kind: int
    description: str | None = None
    unit: str | None = None


@dataclass
class Update:
    metric: Metric
    value: float
    attributes: dict[str, Any]


class Buffer:
    def __init__(self) -> None:
        self.pending: list[Update] = []

    def retrieve_updates(self) -> list[Update]:
        out, self.pending = self.pending, []
        return out


def points(reader: InMemoryMetricReader, name: str) -> dict[str, float]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, float] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    for p in m.data.data_points:
                        out[str(p.attributes["status"])] = getattr(p, "count", None) or \
                            getattr(p, "value", 0)
    return out


def test_a_reused_attribute_object_is_recorded_under_its_current_labels() -> None:
    reader = InMemoryMetricReader()
    buffer = Buffer()
    drain = MetricBufferDrain(buffer, MeterProvider(metric_readers=[reader]),  # type: ignore[arg-type]
                              meter_name="temporalio", poll_interval=timedelta(seconds=1))
    duration = Metric("opsc_execution_duration_seconds", BUFFERED_METRIC_KIND_HISTOGRAM)
    ended = Metric("opsc_executions_total", BUFFERED_METRIC_KIND_COUNTER)
    attrs = {"status": "completed"}
    buffer.pending = [Update(duration, 1.5, attrs), Update(ended, 1, attrs)]
    drain.drain()
    attrs["status"] = "failed"  # the same object (address) now holds another run's labels
    buffer.pending = [Update(duration, 2.5, attrs), Update(ended, 1, attrs)]
    drain.drain()
    assert points(reader, "opsc_execution_duration_seconds") == {"completed": 1, "failed": 1}
    assert points(reader, "opsc_executions_total") == {"completed": 1, "failed": 1}
