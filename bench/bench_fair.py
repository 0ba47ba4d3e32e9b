"""Benchmark: our ExecutionWorkflow against bare Temporal, fairly, in one process.

Interleaved rounds (bare, ours, bare, ours ...), the median of the per-round ratios, identical
worker options on both sides (sandbox, activity slots, sticky queue), like-for-like baselines
(a bare activity that runs the same `true` our steps run), CPU-ms per execution of the Temporal
server, the worker process (with the commands it reaped) and PostgreSQL from /proc, history
bytes per step as the slope between two plan sizes, and PostgreSQL round trips per step and per
fleet target, counted statement by statement in the worker's connections.

    python bench/bench_fair.py [--rounds 5] [--runs 5] [--burst 50] [--targets 40] [--durable]

`--durable` runs PostgreSQL with its defaults (synchronous_commit on, fsync on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from fair import (
    Comparison,
    Processes,
    RoundTrips,
    activity_calls,
    history_bytes,
    interleaved,
    load_line,
    postmaster_pid,
)
from stack import bench_stack  # bench/stack.py: the servers every benchmark runs on
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from opsconductor.schema.payloads import DATA_CONVERTER

QUEUE_BARE = "bench-fair-bare"
QUEUE_OURS = "bench-fair-ours"
TRIPS = RoundTrips()
POLICY = """version: bench
roles:
  - {actor: bench, tenant: "*", roles: [sre]}
rules:
  - id: bench-dev
    effect: allow
    subjects: ["role:sre"]
    actions: [execute, approve, reject, cancel, resolve, requeue]
    environments: [dev]
"""


@activity.defn(name="fair_noop")
async def fair_noop(n: int) -> int:
    return n


@activity.defn(name="fair_command")
async def fair_command(command: str) -> int:
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command)
    return await proc.wait()


@workflow.defn(name="FairSequence")
class FairSequence:
    """`count` activities in sequence: no-ops, or each running `true`."""

    @workflow.run
    async def run(self, shape: list[int]) -> int:
        count, command = shape
        for i in range(count):
            if command:
                await workflow.execute_activity(fair_command, "true",
                                                start_to_close_timeout=timedelta(seconds=60))
            else:
                await workflow.execute_activity(fair_noop, i,
                                                start_to_close_timeout=timedelta(seconds=30))
        return count


@workflow.defn(name="FairParallel")
class FairParallel:
    """`count` activities running `true`, at most `parallel` at once (a fleet's baseline)."""

    @workflow.run
    async def run(self, shape: list[int]) -> int:
        count, parallel = shape
        gate = asyncio.Semaphore(parallel)

        async def one() -> int:
            async with gate:
                return await workflow.execute_activity(
                    fair_command, "true", start_to_close_timeout=timedelta(seconds=60))

        codes = await asyncio.gather(*[one() for _ in range(count)])
        return sum(1 for c in codes if c == 0)


def plan(steps: list[dict[str, Any]], parallel: int = 1) -> dict[str, Any]:
    return {"tenant": "bench", "actor": "bench", "environment": "dev", "max_parallel": parallel,
            "plan": {"plan": {"steps": steps}, "execution_metadata": {"nonce": uuid.uuid4().hex}}}


def noop_chain(n: int) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "tool": "noop", "inputs": {}, "description": f"no-op {i}",
             "depends_on": [f"s{i - 1}"] if i else []} for i in range(n)]


def true_chain(n: int, asset: str) -> list[dict[str, Any]]:
    """`true` on a locked target, with a value masking must look at."""
    return [{"id": f"s{i}", "tool": "shell", "inputs": {"command": "true"}, "target": asset,
             "description": f"true {i}", "depends_on": [f"s{i - 1}"] if i else []}
            for i in range(n)]


class Bench:
    def __init__(self, client: Client, engine: Any, assets: list[str]) -> None:
        self.client = client
        self.engine = engine
        self.assets = assets
        self.next_asset = 0

    def asset(self) -> str:  # distinct assets: uncontended locks
        self.next_asset = (self.next_asset + 1) % len(self.assets)
        return self.assets[self.next_asset]

    async def bare_latency(self, runs: int, command: int) -> tuple[float, int]:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            await self.client.execute_workflow(FairSequence.run, [3, command],
                                               id=f"bare-{uuid.uuid4()}", task_queue=QUEUE_BARE)
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2] * 1000, runs

    async def ours_latency(self, runs: int, command: int) -> tuple[float, int]:
        times = []
        for _ in range(runs):
            steps = true_chain(3, self.asset()) if command else noop_chain(3)
            t = time.perf_counter()
            resp = await self.engine.execute(plan(steps), wait=True)
            assert resp.result.status.value == "completed", resp.result.error
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2] * 1000, runs

    async def bare_burst(self, n: int, command: int) -> tuple[float, int]:
        t = time.perf_counter()
        handles = await asyncio.gather(*[
            self.client.start_workflow(FairSequence.run, [3, command],
                                       id=f"bare-{uuid.uuid4()}", task_queue=QUEUE_BARE)
            for _ in range(n)])
        await asyncio.gather(*[h.result() for h in handles])
        return n / (time.perf_counter() - t), n

    async def ours_burst(self, n: int, command: int) -> tuple[float, int]:
        t = time.perf_counter()
        responses = await asyncio.gather(*[
            self.engine.execute(plan(true_chain(3, self.asset()) if command else noop_chain(3)),
                                wait=False) for _ in range(n)])
        results = await asyncio.gather(*[self.engine.result(r.execution_id)
                                         for r in responses])
        bad = [r for r in results if r.status.value != "completed"]
        assert not bad, bad[0].error
        return n / (time.perf_counter() - t), n

    async def bare_fleet(self, targets: int, concurrency: int) -> tuple[float, int]:
        t = time.perf_counter()
        await self.client.execute_workflow(FairParallel.run, [targets, concurrency],
                                           id=f"bare-{uuid.uuid4()}", task_queue=QUEUE_BARE)
        return targets / (time.perf_counter() - t), 1

    async def ours_fleet(self, targets: int, concurrency: int) -> tuple[float, int]:
        step = {"id": "fleet", "tool": "shell", "description": "fleet",
                "inputs": {"command": "true"}, "targets": self.assets[:targets],
                "max_concurrency": concurrency}
        t = time.perf_counter()
        resp = await self.engine.execute(plan([step]), wait=True)
        assert resp.result.status.value == "completed", resp.result.error
        return targets / (time.perf_counter() - t), 1

    async def histories(self, workflow_id: str) -> list[Any]:
        out = []
        async for run in self.client.list_workflows(f"WorkflowId = '{workflow_id}'"):
            out.append(await self.client.get_workflow_handle(
                workflow_id, run_id=run.run_id).fetch_history())
        return out

    async def counted(self, steps: list[dict[str, Any]], parallel: int = 1,
                      ) -> tuple[Counter[str], Counter[str], int]:
        """(round trips by activity type, activity calls by type, history bytes)."""
        before = TRIPS.snapshot()
        resp = await self.engine.execute(plan(steps, parallel), wait=True)
        assert resp.result.status.value == "completed", resp.result.error
        trips = TRIPS.snapshot()
        trips.subtract(before)
        calls: Counter[str] = Counter()
        size = 0
        for h in await self.histories(resp.workflow_id):
            calls.update(activity_calls(h))
            size += history_bytes(h)
        return trips, calls, size


def trips_lines(label: str, trips: Counter[str], calls: Counter[str], per: int,
                unit: str) -> list[str]:
    mine = {k: v for k, v in trips.items() if k != "-" and v > 0}
    total = sum(mine.values())
    parts = ", ".join(f"{k} {v / calls[k]:.1f}/call x{calls[k]}" if calls.get(k)
                      else f"{k} {v} in all (local activity)" for k, v in sorted(mine.items()))
    return [f"{label}: {total / per:5.2f} PostgreSQL round trips per {unit} from activities "
            f"({parts}); {trips.get('-', 0) / per:.2f} per {unit} from the client side"]


async def main(args: argparse.Namespace) -> None:
    from opsconductor.schema.config import Settings
    from opsconductor.starter.client import ExecutionClient
    from opsconductor.starter.worker import build_worker, workflow_runner

    TRIPS.install()
    lines: list[str] = [load_line() + " at start", f"PostgreSQL durable: {args.durable}"]
    async with bench_stack("opsc-fair-", durable=args.durable) as stack:
        home = stack.home
        names = [f"node-{i:04d}" for i in range(max(args.targets, 2 * args.burst, 8))]
        inventory = home / "inventory.json"
        inventory.write_text(json.dumps({"assets": [
            {"id": n, "hostname": f"{n}.bench", "connector": "local"} for n in names]}))
        policy = home / "rbac.yaml"
        policy.write_text(POLICY)
        client = await Client.connect(stack.temporal_address, data_converter=DATA_CONVERTER)
        settings = Settings(home=home, task_queue=QUEUE_OURS,
                            temporal_address=stack.temporal_address,
                            database_url=stack.database_url, inventory=inventory,
                            rbac_policy=policy)
        engine = ExecutionClient(temporal=client, pool=stack.pool, settings=settings)
        same = {"max_concurrent_activities": 200,
                "sticky_queue_schedule_to_start_timeout":
                    timedelta(seconds=settings.sticky_queue_timeout_seconds),
                "graceful_shutdown_timeout":
                    timedelta(seconds=settings.graceful_shutdown_seconds)}
        bare_worker = Worker(client, task_queue=QUEUE_BARE, workflows=[FairSequence, FairParallel],
                             activities=[fair_noop, fair_command],
                             workflow_runner=workflow_runner(
                                 settings.workflow_sandbox == "strict"), **same)
        ours_worker = build_worker(client, QUEUE_OURS, pool=stack.pool, settings=settings,
                                   **same)
        import os
        procs = Processes(server=stack.temporal.proc.pid, worker=os.getpid(),
                          postgres=postmaster_pid(Path(stack.postgres.data)))
        b = Bench(client, engine, names)
        async with bare_worker, ours_worker:
            await b.bare_latency(2, 1)
            await b.ours_latency(2, 1)
            await b.ours_latency(2, 0)
            comparisons = [
                await interleaved(Comparison("latency, 3 no-op steps", "ms", False),
                                  args.rounds, procs, lambda: b.bare_latency(args.runs, 0),
                                  lambda: b.ours_latency(args.runs, 0)),
                await interleaved(Comparison("latency, 3 steps `true` on a locked target, "
                                             "RBAC and masking on", "ms", False),
                                  args.rounds, procs, lambda: b.bare_latency(args.runs, 1),
                                  lambda: b.ours_latency(args.runs, 1)),
                await interleaved(Comparison(f"throughput, {args.burst} at once, no-op",
                                             "exec/s", True),
                                  args.rounds, procs, lambda: b.bare_burst(args.burst, 0),
                                  lambda: b.ours_burst(args.burst, 0)),
                await interleaved(Comparison(f"throughput, {args.burst} at once, `true` on "
                                             "distinct locked assets", "exec/s", True),
                                  args.rounds, procs, lambda: b.bare_burst(args.burst, 1),
                                  lambda: b.ours_burst(args.burst, 1)),
                await interleaved(Comparison(f"fleet of {args.targets} local targets, "
                                             f"{args.concurrency} at once", "targets/s", True),
                                  args.rounds, procs,
                                  lambda: b.bare_fleet(args.targets, args.concurrency),
                                  lambda: b.ours_fleet(args.targets, args.concurrency)),
            ]
            for c in comparisons:
                lines += c.lines()
            small, large = args.slope
            _, _, s_bytes = await b.counted(noop_chain(small))
            trips, calls, l_bytes = await b.counted(noop_chain(large))
            lines.append(f"history per step, slope {small}->{large} no-op steps: "
                         f"{(l_bytes - s_bytes) / (large - small):,.0f} B/step (binary)")
            lines += trips_lines(f"no-op chain of {large}", trips, calls, large, "step")
            trips, calls, _ = await b.counted(true_chain(20, names[0]))
            lines += trips_lines("`true` chain of 20 on a locked target", trips, calls, 20,
                                 "step")
            step = {"id": "fleet", "tool": "shell", "description": "fleet",
                    "inputs": {"command": "true"}, "targets": names[:args.targets],
                    "max_concurrency": args.concurrency}
            trips, calls, _ = await b.counted([step])
            lines += trips_lines(f"fleet of {args.targets}", trips, calls, args.targets,
                                 "target")
    lines.append(load_line() + " at end")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5, help="latency runs per round")
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--slope", type=int, nargs=2, default=(10, 40))
    parser.add_argument("--durable", action="store_true")
    asyncio.run(main(parser.parse_args()))
