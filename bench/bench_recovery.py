"""Recovery after a worker `kill -9`: from the new worker's start to the step done.

Starts its own Temporal dev server and embedded PostgreSQL, then, for each heartbeat timeout
and round: an `opsconductor worker` subprocess starts an idempotent step (a 1-second command),
is killed with SIGKILL while the command runs (its supervisor stops the command at once), and
a new worker is started. Printed per heartbeat timeout: the new worker's start-up (process
start to polling), recovery (process start to the step completed in the mirror), and what is
left once the start-up, the heartbeat timeout and the command's own second are taken out (the
retry backoff, the sticky-queue hand-over and the round trips).
Run: `.venv/bin/python bench/bench_recovery.py [--rounds N] [--heartbeats 2,5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opsconductor.starter.client import ExecutionClient

COMMAND_SECONDS = 1.0
OPSCONDUCTOR = str(Path(sys.executable).parent / "opsconductor")


def worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen([OPSCONDUCTOR, "worker"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


async def until(cond: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    """Await a condition (polled every 20 ms), or fail naming it."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def polling(log: Path) -> bool:
    return log.exists() and "worker polling" in log.read_text(errors="replace")


async def one_round(client: ExecutionClient, env: dict[str, str], work: Path,
                    heartbeat: float) -> tuple[float, float]:
    """(new worker's start-up, recovery) in seconds, for one kill -9."""
    rid = uuid.uuid4().hex[:8]
    pidfile = work / f"{rid}.pid"
    first_log, second_log = work / f"{rid}-1.log", work / f"{rid}-2.log"
    first = worker(env, first_log)
    await until(lambda: polling(first_log), 60, "the first worker")
    request = {"tenant": "bench", "actor": "bench", "environment": "dev",
               "timeouts": {"heartbeat_timeout_seconds": heartbeat, "max_attempts": 3},
               "plan": {"plan": {"steps": [{
                   "id": "act", "tool": "shell", "description": "recover me",
                   "inputs": {"command": f"echo $$ >> {pidfile}; sleep {COMMAND_SECONDS}",
                              "idempotent": True}}]},
                   "execution_metadata": {"nonce": rid}}}
    resp = await client.execute(request, wait=False)
    await until(pidfile.exists, 60, "the step to start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    began = time.monotonic()
    second = worker(env, second_log)
    try:
        await until(lambda: polling(second_log), 60, "the new worker")
        ready = time.monotonic() - began

        async def done() -> bool:
            status = await client.pool.fetchval(
                "SELECT status::text FROM execution.step_runs WHERE execution_id = $1 "
                "AND step_id = 'act'", uuid.UUID(resp.execution_id))
            return status == "completed"

        await until(done, 120, "the step to complete on the new worker")
        return ready, time.monotonic() - began
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(10)


async def main(rounds: int, heartbeats: list[float]) -> None:
    from temporalio.client import Client

    from opsconductor.activities.db import create_pool
    from opsconductor.schema.config import Settings
    from opsconductor.schema.migrate import migrate
    from opsconductor.schema.payloads import DATA_CONVERTER
    from opsconductor.starter.embedded_postgres import EmbeddedPostgres
    from opsconductor.starter.temporal_server import TemporalDevServer

    with tempfile.TemporaryDirectory(prefix="opsc-bench-recovery-") as tmp:
        work = Path(tmp)
        temporal = TemporalDevServer(headless=True)
        postgres = EmbeddedPostgres(work / "pg")
        temporal.start()
        url = postgres.start()
        try:
            await migrate(url)
            queue = f"bench-recovery-{uuid.uuid4().hex[:6]}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("OPSC_")}
            env.update(OPSC_TEMPORAL_ADDRESS=temporal.address, OPSC_DATABASE_URL=url,
                       OPSC_TASK_QUEUE=queue, OPSC_HOME=str(work / "home"))
            settings = Settings(home=work / "home", task_queue=queue,
                                temporal_address=temporal.address, database_url=url)
            pool = await create_pool(url, min_size=1, max_size=4)
            temporal_client = await Client.connect(temporal.address,
                                                   data_converter=DATA_CONVERTER)
            client = ExecutionClient(temporal=temporal_client, pool=pool, settings=settings)
            print(f"recovery after a worker kill -9 (command {COMMAND_SECONDS:g}s, sticky queue "
                  f"timeout {settings.sticky_queue_timeout_seconds:g}s, {rounds} rounds)")
            print(f"{'heartbeat timeout':>18} {'worker start-up':>16} {'recovery median':>16} "
                  f"{'recovery max':>13} {'overhead median':>16}")
            results = {}
            for hb in heartbeats:
                got = [await one_round(client, env, work, hb) for _ in range(rounds)]
                ready = statistics.median(r for r, _ in got)
                rec = [t for _, t in got]
                overhead = statistics.median(t - r - hb - COMMAND_SECONDS for r, t in got)
                results[hb] = {"startup": ready, "median": statistics.median(rec),
                               "max": max(rec), "overhead": overhead}
                print(f"{hb:>17g}s {ready:>15.2f}s {statistics.median(rec):>15.2f}s "
                      f"{max(rec):>12.2f}s {overhead:>15.2f}s")
            print(json.dumps({"recovery": {str(k): {m: round(v, 3) for m, v in r.items()}
                                           for k, r in results.items()}}))
            await pool.close()
        finally:
            temporal.stop()
            postgres.discard()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--heartbeats", default="2,5",
                        help="heartbeat timeouts in seconds, comma separated")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, [float(h) for h in args.heartbeats.split(",")]))
