"""Benchmark of the audit chain: the cost per audited write, chained against unchained.

Starts its own embedded PostgreSQL in a temporary directory, migrates it, then alternates
rounds with the chain triggers enabled and disabled (interleaved, so the shared machine's
drift hits both alike) of the two write paths the chain sits on:
- the mirror's event batch (`write_events`, 5 events per statement, one transaction each),
  spread over 8 executions of one tenant written concurrently (the chain is per tenant);
- RBAC audit rows (`rbac.audit_many`, 1 row per statement).
Prints µs per row (median over rounds) for each, the difference, and how fast `verify`
walks the chained rows.
Run: `.venv/bin/python bench/bench_audit.py [rounds] [batches-per-round] [writers]`.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opsconductor.activities.mirror import write_events
from opsconductor.safety import rbac
from opsconductor.schema.messages import EventRecord
from opsconductor.schema.migrate import migrate
from opsconductor.starter.embedded_postgres import EmbeddedPostgres

TRIGGERS = (("execution.event_log", "execution_events_zz_chain"),
            ("execution.rbac_audit", "rbac_audit_zz_chain"))
WRITERS = 8
EVENTS_PER_BATCH = 5


async def chained(pool: asyncpg.Pool, on: bool) -> None:
    for table, trigger in TRIGGERS:
        await pool.execute(f"ALTER TABLE {table} {'ENABLE' if on else 'DISABLE'} "
                           f"TRIGGER {trigger}")


async def events_round(pool: asyncpg.Pool, tenant: str, batches: int) -> float:
    """Seconds per event row: WRITERS executions each writing `batches` batches."""
    eids = []
    for _ in range(WRITERS):
        eid = uuid.uuid4()
        await pool.execute(
            "INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor,"
            " environment, mode, sla_class, idempotency_key, plan_hash, spec) VALUES"
            " ($1, $2, $3, 'bench', 'dev', 'background', 'fast', $2, 'h', '{}')",
            eid, f"bench-{eid}", tenant)
        eids.append(str(eid))

    async def writer(eid: str) -> None:
        for b in range(batches):
            await write_events(pool, eid, [EventRecord(key=f"{b}:{i}", type="bench",
                                                       message="x", data={"i": i})
                                           for i in range(EVENTS_PER_BATCH)])

    start = time.perf_counter()
    await asyncio.gather(*(writer(e) for e in eids))
    return (time.perf_counter() - start) / (WRITERS * batches * EVENTS_PER_BATCH)


async def audit_round(pool: asyncpg.Pool, tenant: str, rows: int) -> float:
    decision = rbac.Decision(True, "allowed by rule bench", "bench", "v", ("sre",))
    entry = rbac.AuditEntry(decision, tenant, "bench", "execute", "dev", "host", "shell")

    async def writer(n: int) -> None:
        for _ in range(n):
            await rbac.audit_many(pool, [entry])

    start = time.perf_counter()
    await asyncio.gather(*(writer(rows // WRITERS) for _ in range(WRITERS)))
    return (time.perf_counter() - start) / (rows // WRITERS * WRITERS)


async def main(rounds: int, batches: int) -> None:
    with tempfile.TemporaryDirectory(prefix="opsc-bench-audit-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        url = pg.start()
        try:
            await migrate(url)
            pool = await asyncpg.create_pool(url, min_size=WRITERS, max_size=WRITERS + 2)
            results: dict[str, dict[bool, list[float]]] = {
                "event": {True: [], False: []}, "audit": {True: [], False: []}}
            for r in range(rounds):
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    await chained(pool, on)
                    tenant = f"bench-{r}-{on}"
                    results["event"][on].append(await events_round(pool, tenant, batches))
                    results["audit"][on].append(await audit_round(pool, tenant, batches * 4))
            await chained(pool, True)
            from opsconductor.safety.audit_chain import verify

            start = time.perf_counter()
            report = await verify(pool)
            verify_s = time.perf_counter() - start
            checked = sum(c.rows for c in report.chains)
            await pool.close()
        finally:
            pg.stop()
    print(f"audit chain cost, {rounds} interleaved rounds, {WRITERS} concurrent writers of "
          "one tenant (median µs per row):")
    for kind, label in (("event", f"mirror event batch ({EVENTS_PER_BATCH}/statement)"),
                        ("audit", "RBAC audit row (1/statement)")):
        on = statistics.median(results[kind][True]) * 1e6
        off = statistics.median(results[kind][False]) * 1e6
        print(f"  {label:<34} chained {on:8.1f}  unchained {off:8.1f}  "
              f"cost {on - off:+8.1f} µs ({(on / off - 1) * 100:+.0f}%)")
    print(f"  verify: {checked} chained rows in {verify_s:.2f} s "
          f"({checked / verify_s:,.0f} rows/s; the unchained rounds' rows are not in a chain)")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]]
    if len(args) == 3:
        WRITERS = args.pop()
    asyncio.run(main(*(args + [6, 40][len(args):])))
