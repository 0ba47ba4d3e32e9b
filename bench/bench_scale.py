"""Benchmark: what a plan costs in Temporal history, and a large plan against bare activities.

Prints, in one run, on a fresh dev server and embedded PostgreSQL:
- history bytes per step for no-op steps, for steps printing 200 KB and for steps printing
  10 MiB (outputs travel by reference: the last two should be close);
- the execution time of the largest plan a request may hold (`--steps`, default the plan
  limit) against the same number of bare activities run with the same parallelism;
- fleet throughput: one step over `--targets` local assets (`max_concurrency`
  `--concurrency`), each running `true`, in targets/s, against bare activities that run the
  same command with the same concurrency.

    python bench/bench_scale.py [--steps 5000] [--parallel 8] [--targets 200] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from stack import bench_stack  # bench/stack.py: the servers every benchmark runs on
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from opsconductor.schema.payloads import DATA_CONVERTER

TASK_QUEUE_BARE = "bench-scale-bare"
TASK_QUEUE_OURS = "bench-scale-ours"


@activity.defn(name="bench_scale_noop")
async def bench_scale_noop(n: int) -> int:
    return n


@activity.defn(name="bench_scale_command")
async def bench_scale_command(command: str) -> int:
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command)
    return await proc.wait()


@workflow.defn(name="BareCommands")
class BareCommands:
    @workflow.run
    async def run(self, shape: list[int]) -> int:
        count, parallel = shape
        gate = asyncio.Semaphore(parallel)

        async def one() -> int:
            async with gate:
                return await workflow.execute_activity(
                    bench_scale_command, "true", start_to_close_timeout=timedelta(seconds=60))

        codes = await asyncio.gather(*[one() for _ in range(count)])
        return sum(1 for c in codes if c == 0)


@workflow.defn(name="BareManyActivities")
class BareManyActivities:
    @workflow.run
    async def run(self, shape: list[int]) -> int:
        count, parallel = shape
        done = 0
        for start in range(0, count, parallel):
            batch = range(start, min(count, start + parallel))
            await asyncio.gather(*[workflow.execute_activity(
                bench_scale_noop, i, start_to_close_timeout=timedelta(seconds=30))
                for i in batch])
            done += len(batch)
        return done


def plan(steps: list[dict[str, Any]], parallel: int) -> dict[str, Any]:
    return {"tenant": "bench", "actor": "bench", "environment": "dev",
            "max_parallel": parallel,
            "plan": {"plan": {"steps": steps},
                     "execution_metadata": {"nonce": uuid.uuid4().hex}}}


def noop_steps(count: int) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "tool": "noop", "inputs": {}, "description": f"no-op {i}"}
            for i in range(count)]


def output_steps(count: int, size: int) -> list[dict[str, Any]]:
    line = "journal: web-01 nginx[4242]: GET /healthz 200 0.003s upstream=10.0.0.7:8080"
    return [{"id": f"dump{i}", "tool": "shell", "description": f"dump {i}",
             "inputs": {"command": f"yes '{line}' | head -c {size}"}} for i in range(count)]


async def run_plan(engine: Any, client: Client, steps: list[dict[str, Any]],
                   parallel: int) -> tuple[float, int, int]:
    """(seconds, history bytes, history events) of one plan run to completion."""
    t = time.perf_counter()
    resp = await engine.execute(plan(steps, parallel), wait=True)
    elapsed = time.perf_counter() - t
    assert resp.result.status.value == "completed", resp.result.error
    size = events = 0
    async for run in client.list_workflows(f"WorkflowId = '{resp.workflow_id}'"):
        history = await client.get_workflow_handle(resp.workflow_id,
                                                   run_id=run.run_id).fetch_history()
        size, events = size + len(history.to_json()), events + len(history.events)
    return elapsed, size, events


async def main(steps: int, parallel: int, targets: int, concurrency: int) -> None:
    from opsconductor.schema.config import Settings
    from opsconductor.starter.client import ExecutionClient
    from opsconductor.starter.worker import build_worker

    rows: list[tuple[str, int, float, int, int]] = []
    async with bench_stack() as stack:
        pool, tmp = stack.pool, stack.home
        client = await Client.connect(stack.temporal_address,
                                      data_converter=DATA_CONVERTER)
        inventory = Path(tmp) / "inventory.json"
        names = [f"node-{i:04d}" for i in range(targets)]
        inventory.write_text(json.dumps({"assets": [
            {"id": n, "hostname": f"{n}.bench", "connector": "local"} for n in names]}))
        settings = Settings(home=Path(tmp), task_queue=TASK_QUEUE_OURS,
                            temporal_address=stack.temporal_address,
                            database_url=stack.database_url, inventory=inventory)
        engine = ExecutionClient(temporal=client, pool=pool, settings=settings)
        bare_worker = Worker(client, task_queue=TASK_QUEUE_BARE,
                             workflows=[BareManyActivities, BareCommands],
                             activities=[bench_scale_noop, bench_scale_command],
                             max_concurrent_activities=max(100, concurrency))
        ours_worker = build_worker(client, TASK_QUEUE_OURS, pool=pool, settings=settings)
        async with bare_worker, ours_worker:
            await run_plan(engine, client, noop_steps(3), parallel)  # warm up
            for label, shape in (("no-op", noop_steps(100)),
                                 ("200 KB output", output_steps(20, 200 * 1024)),
                                 ("10 MiB output", output_steps(20, 10 * 1024 * 1024))):
                secs, size, events = await run_plan(engine, client, shape, parallel)
                rows.append((label, len(shape), secs, size, events))
            t = time.perf_counter()
            await client.execute_workflow(BareManyActivities.run, [steps, parallel],
                                          id=f"bare-{uuid.uuid4()}",
                                          task_queue=TASK_QUEUE_BARE)
            bare_secs = time.perf_counter() - t
            ours_secs, ours_size, ours_events = await run_plan(
                engine, client, noop_steps(steps), parallel)
            t = time.perf_counter()
            await client.execute_workflow(BareCommands.run, [targets, concurrency],
                                          id=f"bare-{uuid.uuid4()}",
                                          task_queue=TASK_QUEUE_BARE)
            bare_fleet = targets / (time.perf_counter() - t)
            fleet = [{"id": "fleet", "tool": "shell", "description": "fleet",
                      "inputs": {"command": "true"}, "targets": names,
                      "max_concurrency": concurrency}]
            fleet_secs, _, _ = await run_plan(engine, client, fleet, 1)
            ours_fleet = targets / fleet_secs

    print("history bytes per step (outputs by reference)")
    for label, count, secs, size, events in rows:
        print(f"  {label:<14} x {count:>3} steps: {size // count:>7,} B/step "
              f"({size:,} B, {events} events, {secs:.1f} s)")
    print(f"{steps}-step no-op plan, max_parallel {parallel}")
    print(f"  bare Temporal, {steps} activities : {bare_secs:7.1f} s")
    print(f"  ExecutionWorkflow, {steps} steps  : {ours_secs:7.1f} s  "
          f"(history {ours_size:,} B, {ours_events} events over every run)")
    print(f"  ratio ours/bare                : {ours_secs / bare_secs:7.2f}x")
    print(f"fleet of {targets} local targets running `true`, {concurrency} at once")
    print(f"  bare Temporal, one activity per target : {bare_fleet:7.1f} targets/s")
    print(f"  fleet step (authorized, leased, rows)  : {ours_fleet:7.1f} targets/s")
    print(f"  ratio ours/bare                        : {ours_fleet / bare_fleet:7.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.parallel, args.targets, args.concurrency))
