"""Benchmark: the live event stream against the old 0.3 s poll, and what telemetry costs.

1. Event-to-follower latency: events are committed to the mirror one at a time (random gaps);
   a LISTEN/NOTIFY follower (`EventHub.follow`) and a follower polling every 0.3 s (what
   `watch` did before) read the same stream. Prints p50/p99 of commit-to-delivery for each.
2. Throughput cost of tracing + metrics: bursts of 3-step no-op executions on a worker
   without telemetry and on one with it (Temporal's tracing interceptor on client and worker,
   our step spans into an SDK tracer provider with a batch processor, step metrics, the
   workflow's metrics through the Temporal runtime's buffer into the Prometheus registry).
   Bursts alternate off/on; prints executions/s for each and the ratio on/off.

    python bench/bench_observability.py [--events 100] [--burst 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.3


def plan(nonce: str, **envelope: Any) -> dict[str, Any]:
    steps = [{"id": f"s{i}", "tool": "noop", "inputs": {}, "description": f"no-op {i}",
              "depends_on": [f"s{i - 1}"] if i else []} for i in range(3)]
    return {"tenant": "bench", "actor": "bench", "environment": "dev",
            "plan": {"plan": {"steps": steps}, "execution_metadata": {"nonce": nonce}},
            **envelope}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def poll_follower(pool: Any, execution_id: str, seen: dict[int, float],
                        stop: asyncio.Event, after: int) -> None:
    """The old way: read what is new every 0.3 s."""
    while not stop.is_set():
        rows = await pool.fetch("SELECT id FROM execution.event_log WHERE "
                                "execution_id = $1 AND id > $2 ORDER BY id",
                                uuid.UUID(execution_id), after)
        now = time.perf_counter()
        for r in rows:
            seen.setdefault(r["id"], now)
            after = r["id"]
        await asyncio.sleep(POLL_SECONDS)


async def event_latency(engine: Any, n: int) -> tuple[list[float], list[float]]:
    from opsconductor.activities.mirror import write_events
    from opsconductor.schema.messages import EventRecord
    from opsconductor.starter.events import EventHub

    resp = await engine.execute(plan(uuid.uuid4().hex, approval_level=1,
                                     environment="staging"), wait=False)
    execution_id = resp.execution_id
    hub = EventHub(engine.pool)
    stream = hub.follow(execution_id, until_ended=False)
    base = (await anext(stream))["id"]  # the execution's row exists once it has an event
    await stream.aclose()
    listened: dict[int, float] = {}
    polled: dict[int, float] = {}
    stop = asyncio.Event()
    delivered = asyncio.Event()

    async def listen() -> None:
        async for event in hub.follow(execution_id, base, until_ended=False):
            listened[event["id"]] = time.perf_counter()
            if len(listened) >= n:
                delivered.set()

    listener = asyncio.create_task(listen())
    poller = asyncio.create_task(poll_follower(engine.pool, execution_id, polled, stop, base))
    await asyncio.sleep(0.5)  # both followers are reading before the first commit
    committed: dict[int, float] = {}
    for i in range(n):
        await asyncio.sleep(random.uniform(0.05, 0.15))
        committed_at = time.perf_counter()  # before the INSERT: its round trip counts too
        await write_events(engine.pool, execution_id, [EventRecord(
            key=f"bench:{i}", type="bench.tick", message=str(i), at=datetime.now(UTC))])
        new_id = await engine.pool.fetchval(
            "SELECT id FROM execution.event_log WHERE execution_id = $1 AND "
            "event_key = $2", uuid.UUID(execution_id), f"bench:{i}")
        committed[new_id] = committed_at
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(delivered.wait(), 5)
    await asyncio.sleep(POLL_SECONDS * 2)  # the poller's last round
    stop.set()
    listener.cancel()
    await asyncio.gather(listener, poller, return_exceptions=True)
    await hub.close()
    await engine.cancel(execution_id, "bench", "benchmark done")
    lat_listen = [max(0.0, listened[i] - t) for i, t in committed.items() if i in listened]
    lat_poll = [max(0.0, polled[i] - t) for i, t in committed.items() if i in polled]
    return lat_listen, lat_poll


async def burst(engine: Any, n: int) -> float:
    t = time.perf_counter()
    responses = await asyncio.gather(*[engine.execute(plan(uuid.uuid4().hex), wait=False)
                                       for _ in range(n)])
    results = await asyncio.gather(*[engine.result(r.execution_id) for r in responses])
    elapsed = time.perf_counter() - t
    assert all(r.status.value == "completed" for r in results), results[:1]
    return n / elapsed


async def main(events: int, size: int, rounds: int) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from stack import bench_stack  # bench/stack.py: the servers every benchmark runs on
    from temporalio.client import Client

    from opsconductor.schema.config import Settings
    from opsconductor.schema.payloads import DATA_CONVERTER
    from opsconductor.starter.client import ExecutionClient
    from opsconductor.starter.telemetry import Telemetry, tracing_interceptors
    from opsconductor.starter.worker import build_worker

    async with bench_stack("opsc-bench-obs-") as stack:
        pool, tmp = stack.pool, stack.home
        plain = await Client.connect(stack.temporal_address, data_converter=DATA_CONVERTER)
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(spans))
        telemetry = Telemetry.create(tracer_provider=provider)
        traced = await Client.connect(stack.temporal_address,
                                      data_converter=DATA_CONVERTER,
                                      runtime=telemetry.runtime,
                                      interceptors=tracing_interceptors(provider))
        off_settings = Settings(home=Path(tmp), task_queue="bench-off",
                                temporal_address=stack.temporal_address,
                                database_url=stack.database_url)
        on_settings = off_settings.model_copy(update={"task_queue": "bench-on"})
        off = ExecutionClient(temporal=plain, pool=pool, settings=off_settings)
        on = ExecutionClient(temporal=traced, pool=pool, settings=on_settings,
                             tracer=provider.get_tracer("bench"))
        off_worker = build_worker(plain, "bench-off", pool=pool, settings=off_settings)
        on_worker = build_worker(traced, "bench-on", pool=pool, settings=on_settings,
                                 telemetry=telemetry)
        async with telemetry.running(), off_worker, on_worker:
            lat_listen, lat_poll = await event_latency(off, events)
            await burst(off, 10)  # warm up both paths
            await burst(on, 10)
            tput_off, tput_on = [], []
            for _ in range(rounds):
                tput_off.append(await burst(off, size))
                tput_on.append(await burst(on, size))
            exported = len(spans.get_finished_spans())
            scraped = telemetry.render().count("\nopsc_")
        provider.shutdown()

    print(f"event-to-follower latency over {events} events (INSERT sent -> delivered)")
    print(f"  LISTEN/NOTIFY follower : p50 {pct(lat_listen, 0.5) * 1000:7.1f} ms   "
          f"p99 {pct(lat_listen, 0.99) * 1000:7.1f} ms   ({len(lat_listen)} delivered)")
    print(f"  0.3 s poll follower    : p50 {pct(lat_poll, 0.5) * 1000:7.1f} ms   "
          f"p99 {pct(lat_poll, 0.99) * 1000:7.1f} ms   ({len(lat_poll)} delivered)")
    off_mean, on_mean = statistics.mean(tput_off), statistics.mean(tput_on)
    print(f"throughput, bursts of {size} three-step executions, {rounds} round(s) each")
    print(f"  telemetry off          : {off_mean:7.1f} executions/s  "
          f"({', '.join(f'{x:.1f}' for x in tput_off)})")
    print(f"  tracing + metrics on   : {on_mean:7.1f} executions/s  "
          f"({', '.join(f'{x:.1f}' for x in tput_on)})")
    print(f"  ratio on/off           : {on_mean / off_mean:7.2f}x   "
          f"({exported} spans exported, {scraped} opsc_ samples at /metrics)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.burst, args.rounds))
