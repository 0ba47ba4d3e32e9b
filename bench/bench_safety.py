"""Benchmark of the safety layer on this machine, against the old and our targets.

Starts its own embedded PostgreSQL in a temporary directory, migrates it, then measures:
masking (log records through MaskingLogFilter, and Masker.mask_text), lock acquire+release
(uncontended: distinct assets, 8 concurrent clients), mirror-style batched event inserts,
and idempotency claims. Masking and locks report the best of 3 rounds (shared machine).
Run: `.venv/bin/python bench/bench_safety.py`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opsconductor.safety import idempotency, mutex
from opsconductor.safety.masking import Masker, MaskingLogFilter
from opsconductor.schema.migrate import migrate
from opsconductor.starter.embedded_postgres import EmbeddedPostgres

OLD = {"masking": 2_000, "locks": 500, "events": 1_000, "idempotency": 1_000}
OURS = {"masking": 200_000, "locks": 5_000, "events": 50_000, "idempotency": None}

LINES = [
    ("step %s finished in %.2f s (exit %d)", ("restart-nginx", 0.52, 0)),
    ("execution %s acquired locks on %s", (str(uuid.uuid4()), "web-1")),
    ("worker polling task queue %s", ("opsconductor-execution",)),
    ("GET %s -> %d in %d ms", ("https://status.internal/health", 200, 12)),
    ("connecting to %s", ("postgresql://app:s3cr3t@db.internal:5432/app",)),
    ("retrying step %s attempt %d: %s", ("deploy", 2, "connection refused")),
    ("http call with headers %s", ({"Authorization": "Bearer abc.def.ghi"},)),
    ("heartbeat for %s", ("run_step",)),
    ("mirror wrote %d events for %s", (12, str(uuid.uuid4()))),
    ("approval %s granted by %s", ("gate-1", "alice")),
]


def bench_masking(n: int = 100_000, rounds: int = 3) -> tuple[float, float]:
    """Best of `rounds`: this 2-core machine is shared, so single runs are noisy."""
    masker = Masker().with_secrets(["canary-secret-value-1", "another-live-secret"])
    filt = MaskingLogFilter(masker)
    texts = [msg % args for msg, args in LINES]
    m = len(texts)
    best_rec = best_text = 0.0
    for _ in range(rounds):
        records = [logging.LogRecord("opsc", logging.INFO, __file__, 1, msg, args, None)
                   for msg, args in (LINES[i % len(LINES)] for i in range(n))]
        gc.collect()
        t = time.perf_counter()
        for r in records:
            filt.filter(r)
        best_rec = max(best_rec, n / (time.perf_counter() - t))
        t = time.perf_counter()
        for i in range(n):
            masker.mask_text(texts[i % m])
        best_text = max(best_text, n / (time.perf_counter() - t))
    return best_rec, best_text


async def bench_locks(pool: asyncpg.Pool, seconds: float = 3.0, clients: int = 8) -> float:
    tenant = "bench"
    count = 0
    stop = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal count
        eid = f"bench-exec-{c}"
        async with pool.acquire() as conn:
            i = 0
            while time.perf_counter() < stop:
                asset = f"host-{c}-{i % 50}"
                att = await mutex.try_acquire(conn, tenant, [asset], eid, "bench", 30)
                assert att.acquired
                await mutex.release(conn, tenant, eid, [asset])
                count += 1
                i += 1

    t = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return count / (time.perf_counter() - t)


async def bench_events(pool: asyncpg.Pool, total: int = 200_000, batch: int = 1_000,
                       clients: int = 2) -> float:
    exec_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor, environment,"
        " mode, sla_class, idempotency_key, plan_hash, spec) VALUES ($1, $2, 'bench', 'bench',"
        " 'dev', 'background', 'fast', 'k', 'h', '{}')", exec_id, f"bench-{exec_id}")
    data = json.dumps({"attempt": 1, "exit_code": 0})
    per_client = total // clients

    async def client(c: int) -> None:
        async with pool.acquire() as conn:
            for start in range(0, per_client, batch):
                rows = [(exec_id, f"c{c}:e{start + j}", "step.status", "s1", "running",
                         "completed", "attempt finished", data) for j in range(batch)]
                await conn.executemany(
                    "INSERT INTO execution.event_log (execution_id, event_key, event_type,"
                    " step_id, from_status, to_status, message, data)"
                    " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[],"
                    " $5::text[], $6::text[], $7::text[], $8::jsonb[])"
                    " ON CONFLICT (execution_id, event_key) DO NOTHING",
                    [tuple(list(col) for col in zip(*rows, strict=True))])

    t = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return per_client * clients / (time.perf_counter() - t)


async def bench_idempotency(pool: asyncpg.Pool, n: int = 5_000, clients: int = 4) -> float:
    keys = [idempotency.idempotency_key({"i": i % 500}, "bench", "actor") for i in range(n)]
    per = n // clients

    async def client(c: int) -> None:
        async with pool.acquire() as conn:
            for k in keys[c * per:(c + 1) * per]:
                await idempotency.claim(conn, "bench", k)

    t = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return per * clients / (time.perf_counter() - t)


def report(name: str, rate: float, unit: str = "/s") -> None:
    old = OLD[name]
    ours = OURS[name]
    line = f"{name:<12} {rate:>12,.0f}{unit}   vs old target {old:,}/s: {rate / old:6.1f}x"
    if ours:
        line += (f"   vs our target {ours:,}/s: {rate / ours:5.2f}x "
                 f"{'OK' if rate >= ours else 'BELOW'}")
    print(line, flush=True)


async def main() -> None:
    rec_rate, text_rate = bench_masking()
    report("masking", rec_rate)
    print(f"{'':<12} (Masker.mask_text alone: {text_rate:,.0f} strings/s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="opsc-bench-") as d:
        server = EmbeddedPostgres(Path(d) / "pg")
        url = server.start()
        try:
            await migrate(url)
            pool = await asyncpg.create_pool(url, min_size=8, max_size=8)
            try:
                report("locks", max([await bench_locks(pool, 2.0) for _ in range(3)]))
                report("events", await bench_events(pool))
                report("idempotency", await bench_idempotency(pool))
            finally:
                await pool.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
