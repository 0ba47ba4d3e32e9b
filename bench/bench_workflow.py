"""Benchmark: our ExecutionWorkflow against bare Temporal, in one process, on one server.

Baseline: a bare workflow running 3 no-op activities in sequence. Ours: a 3-step no-op plan
(a dependency chain) submitted through the starter client, mirror writes included. Prints
latency of one run alone (p50 over N runs) and throughput with M started at once, and the
ratios ours/bare. Targets: latency ratio <= 1.5, throughput ratio >= 0.6.

    python bench/bench_workflow.py [--runs 30] [--burst 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import timedelta

from stack import bench_stack  # bench/stack.py: the servers every benchmark runs on
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from opsconductor.schema.payloads import DATA_CONVERTER

TASK_QUEUE_BARE = "bench-bare"
TASK_QUEUE_OURS = "bench-ours"


@activity.defn(name="bench_noop")
async def bench_noop(n: int) -> int:
    return n


@workflow.defn(name="BareThreeActivities")
class BareThreeActivities:
    @workflow.run
    async def run(self, n: int) -> int:
        for i in range(3):
            await workflow.execute_activity(bench_noop, n + i,
                                            start_to_close_timeout=timedelta(seconds=30))
        return n


def plan(nonce: str) -> dict:
    steps = [{"id": f"s{i}", "tool": "noop", "inputs": {}, "description": f"no-op {i}",
              "depends_on": [f"s{i - 1}"] if i else []} for i in range(3)]
    return {"tenant": "bench", "actor": "bench", "environment": "dev",
            "plan": {"plan": {"steps": steps}, "execution_metadata": {"nonce": nonce}}}


async def time_bare(client: Client, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        await client.execute_workflow(BareThreeActivities.run, 1, id=f"bare-{uuid.uuid4()}",
                                      task_queue=TASK_QUEUE_BARE)
        out.append(time.perf_counter() - t)
    return out


async def time_ours(engine: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        resp = await engine.execute(plan(uuid.uuid4().hex), wait=True)  # type: ignore[attr-defined]
        assert resp.result.status.value == "completed", resp.result
        out.append(time.perf_counter() - t)
    return out


async def burst_bare(client: Client, n: int) -> float:
    t = time.perf_counter()
    handles = await asyncio.gather(*[
        client.start_workflow(BareThreeActivities.run, i, id=f"bare-{uuid.uuid4()}",
                              task_queue=TASK_QUEUE_BARE) for i in range(n)])
    await asyncio.gather(*[h.result() for h in handles])
    return n / (time.perf_counter() - t)


async def burst_ours(engine: object, n: int) -> float:
    t = time.perf_counter()
    responses = await asyncio.gather(*[
        engine.execute(plan(uuid.uuid4().hex), wait=False)  # type: ignore[attr-defined]
        for _ in range(n)])
    results = await asyncio.gather(*[
        engine.result(r.execution_id) for r in responses])  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - t
    bad = [r for r in results if r.status.value != "completed"]
    assert not bad, bad[:1]
    return n / elapsed


async def main(runs: int, burst: int) -> None:
    from opsconductor.schema.config import Settings
    from opsconductor.starter.client import ExecutionClient
    from opsconductor.starter.worker import build_worker

    async with bench_stack() as stack:
        pool = stack.pool
        client = await Client.connect(stack.temporal_address,
                                      data_converter=DATA_CONVERTER)
        settings = Settings(home=stack.home, task_queue=TASK_QUEUE_OURS,
                            temporal_address=stack.temporal_address,
                            database_url=stack.database_url)
        engine = ExecutionClient(temporal=client, pool=pool, settings=settings)
        bare_worker = Worker(client, task_queue=TASK_QUEUE_BARE,
                             workflows=[BareThreeActivities], activities=[bench_noop])
        ours_worker = build_worker(client, TASK_QUEUE_OURS, pool=pool, settings=settings)
        async with bare_worker, ours_worker:
            await time_bare(client, 3)  # warm up both paths
            await time_ours(engine, 3)
            bare_lat = statistics.median(await time_bare(client, runs))
            ours_lat = statistics.median(await time_ours(engine, runs))
            bare_tput = await burst_bare(client, burst)
            ours_tput = await burst_ours(engine, burst)

    print(f"latency p50 over {runs} runs (one at a time)")
    print(f"  bare Temporal, 3 no-op activities : {bare_lat * 1000:7.1f} ms")
    print(f"  ExecutionWorkflow, 3 no-op steps  : {ours_lat * 1000:7.1f} ms")
    print(f"  ratio ours/bare                   : {ours_lat / bare_lat:7.2f}x  (target <= 1.5x)")
    print(f"throughput, {burst} started at once")
    print(f"  bare Temporal                     : {bare_tput:7.1f} workflows/s")
    print(f"  ExecutionWorkflow (mirror incl.)  : {ours_tput:7.1f} executions/s")
    print(f"  ratio ours/bare                   : {ours_tput / bare_tput:7.2f}x  (target >= 0.6x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.burst))
