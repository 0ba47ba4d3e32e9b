"""A worker of its own with telemetry on: metrics served at a real `/metrics`, spans kept by
the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from opsconductor.schema.payloads import DATA_CONVERTER
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.telemetry import Telemetry, tracing_interceptors
from opsconductor.starter.worker import build_worker
from tests.helpers import unique_queue


@dataclass
class Observed:
    engine: ExecutionClient
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics_url: str

    async def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample at `/metrics`, keyed by name and labels."""
        async with httpx.AsyncClient() as http:
            text = (await http.get(self.metrics_url, timeout=10)).text
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture
async def observed(temporal_server: Any, db_pool: asyncpg.Pool,
                   engine: ExecutionClient) -> AsyncIterator[Observed]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry.create(tracer_provider=provider)
    client = await Client.connect(temporal_server.address,
                                  data_converter=DATA_CONVERTER,
                                  runtime=telemetry.runtime,
                                  interceptors=tracing_interceptors(provider))
    queue = unique_queue("opsc-observed")
    settings = engine.settings.model_copy(update={"task_queue": queue})
    worker = build_worker(client, queue, pool=db_pool, settings=settings, telemetry=telemetry)
    url = telemetry.serve_metrics("127.0.0.1:0")
    assert url is not None
    async with telemetry.running(), worker:
        yield Observed(engine=ExecutionClient(temporal=client, pool=db_pool, settings=settings,
                                              tracer=provider.get_tracer("opsc-tests")),
                       telemetry=telemetry, spans=spans, metrics_url=url)
    provider.shutdown()
