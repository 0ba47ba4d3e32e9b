"""`opsconductor prune` against the session's PostgreSQL: old outputs, events and audit rows
go, a running execution's and an open DLQ entry's stay, the chains still verify from the
signed prune checkpoints (holes and all), and the scheduled prune checkpoints every chain."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from opsconductor.safety.audit_chain import AuditError, trusted_audit_keys, verify
from opsconductor.safety.retention import RetentionPolicy, prune, run_scheduled
from tests.audit.helpers import (
    add_approval,
    add_events,
    chain_rows,
    dump,
    execution,
    make_key,
    tenant,
)
from tests.integration.helpers import run_cli
from tests.pg_prod.conftest import database_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

OLD = datetime.now(UTC) - timedelta(days=100)
POLICY = RetentionPolicy(outputs_days=30, events_days=30, audit_days=60)


@pytest.fixture(scope="module")
def audit_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("prune-key"), "audit")


async def old_audit(pool: asyncpg.Pool, t: str, eid: str | None, n: int) -> None:
    await pool.executemany(
        "INSERT INTO execution.rbac_audit (at, tenant, actor, action, environment,"
        " execution_id, decision, reason, policy_version)"
        " VALUES ($1, $2, 'alice', 'execute', 'prod', $3, 'allow', 'old', 'v1')",
        [(OLD, t, eid)] * n)


async def output(pool: asyncpg.Pool, eid: str, at: datetime) -> None:
    await pool.execute(
        "INSERT INTO execution.step_outputs (execution_id, step_id, attempt, stream, size,"
        " sha256, encoding, data, created_at) VALUES ($1, 's', 1, 'stdout', 2, 'x',"
        " 'identity', 'ok', $2)", uuid.UUID(eid), at)


async def scene(pool: asyncpg.Pool) -> dict[str, str]:
    """One tenant, interleaved in its chains: a running execution first (old rows kept), a
    finished one (old rows go), one with an open DLQ entry (kept), another finished one and
    a recent one (kept: young)."""
    t = tenant()
    ids = {"tenant": t}
    for name, status in [("running", "running"), ("done", "completed"), ("dlq", "failed"),
                         ("done2", "completed"), ("new", "completed")]:
        eid = ids[name] = await execution(pool, t, status, OLD)
        young = name == "new"
        at = datetime.now(UTC) if young else OLD
        await add_events(pool, eid, 5, at=at)
        if not young:
            await old_audit(pool, t, eid, 3)
            await add_approval(pool, eid, [{"approver": "bob", "accepted": True}], at=OLD,
                               state="approved")
        await output(pool, eid, at)
    await pool.execute("INSERT INTO execution.execution_dlq (execution_id, workflow_id, step_id,"
                       " reason) VALUES ($1, 'wf', 's', 'failed')", uuid.UUID(ids["dlq"]))
    await old_audit(pool, t, None, 2)  # submission-time rows, no execution: go by age alone
    return ids


async def counts(pool: asyncpg.Pool, eid: str) -> tuple[int, int, int, int]:
    u = uuid.UUID(eid)
    return (await pool.fetchval("SELECT count(*) FROM execution.event_log"
                                " WHERE execution_id = $1", u),
            await pool.fetchval("SELECT count(*) FROM execution.rbac_audit"
                                " WHERE execution_id = $1", eid),
            await pool.fetchval("SELECT count(*) FROM execution.approvals"
                                " WHERE execution_id = $1", u),
            await pool.fetchval("SELECT count(*) FROM execution.step_outputs"
                                " WHERE execution_id = $1", u))


async def test_prune_keeps_running_and_dlq_rows_and_the_chain_verifies(
        db_pool: asyncpg.Pool, audit_key: Path) -> None:
    ids = await scene(db_pool)
    t = ids["tenant"]
    trusted = await trusted_audit_keys(audit_key, None)
    assert (await verify(db_pool, tenant=t, trusted=trusted)).ok

    dry = await prune(db_pool, POLICY, key=None, dry_run=True, tenant=t)
    assert dry.outputs == 2
    assert dry.total("execution_events") == 10 and dry.total("rbac_audit") == 8
    assert dry.total("approvals") == 2
    assert (await counts(db_pool, ids["done"])) == (5, 3, 1, 1)  # nothing deleted

    with pytest.raises(AuditError, match="OPSC_AUDIT_SIGNING_KEY"):
        await prune(db_pool, POLICY, key=None, tenant=t)

    report = await prune(db_pool, POLICY, key=audit_key, tenant=t)
    by_stream = {c.stream: c for c in report.chains}
    print(f"prune: outputs {report.outputs}, events {by_stream['events'].deleted} in "
          f"{by_stream['events'].ranges} ranges, audit {by_stream['audit'].deleted} in "
          f"{by_stream['audit'].ranges} ranges; kept old events "
          f"{by_stream['events'].kept_dlq_or_running}, audit "
          f"{by_stream['audit'].kept_dlq_or_running}; checkpoints {report.checkpoints}")
    assert report.outputs == 2 and by_stream["events"].deleted == {"execution_events": 10}
    assert by_stream["audit"].deleted == {"approvals": 2, "rbac_audit": 8}
    assert by_stream["events"].ranges == 2  # done, done2: split by the DLQ execution's rows
    assert by_stream["events"].kept_dlq_or_running == 10
    assert len(report.checkpoints) == 2
    for name in ("done", "done2"):
        assert await counts(db_pool, ids[name]) == (0, 0, 0, 0), name
    for name in ("running", "dlq"):
        assert await counts(db_pool, ids[name]) == (5, 3, 1, 1), name
    assert await counts(db_pool, ids["new"]) == (5, 0, 0, 1)

    after = await verify(db_pool, tenant=t, trusted=trusted)
    assert after.ok, dump(after)
    print("after prune: " + "; ".join(f"{c.stream} {c.rows} rows, {c.gaps} gaps, "
                                      f"{c.checkpoints} checkpoints" for c in after.chains))
    again = await prune(db_pool, POLICY, key=audit_key, tenant=t)
    assert not any(c.deleted for c in again.chains) and again.outputs == 0

    # the prune's own evidence is guarded too: a removed gap record is named
    await db_pool.execute("DELETE FROM execution.audit_gaps WHERE id = (SELECT max(id) FROM"
                          " execution.audit_gaps WHERE tenant = $1 AND stream = 'events')", t)
    tampered = await verify(db_pool, tenant=t, trusted=trusted)
    kinds = {p.kind for p in tampered.problems}
    assert {"deleted", "checkpoint"} <= kinds, dump(tampered)
    print(f"gap record removed: {tampered.problems[0].message}")


async def test_a_chain_that_does_not_verify_is_not_pruned(db_pool: asyncpg.Pool,
                                                          audit_key: Path) -> None:
    ids = await scene(db_pool)
    t = ids["tenant"]
    victim = (await chain_rows(db_pool, t, "events"))[7]
    await db_pool.execute("UPDATE execution.event_log SET message = 'x' WHERE id = $1",
                          victim["id"])
    report = await prune(db_pool, POLICY, key=audit_key, tenant=t)
    events = next(c for c in report.chains if c.stream == "events")
    assert events.refused and "was edited" in events.refused and not events.deleted
    assert await counts(db_pool, ids["done"]) == (5, 0, 0, 0)  # audit pruned, events kept


async def test_scheduled_prune_and_the_cli(db_pool: asyncpg.Pool, migrated_pg: str,
                                           audit_key: Path, tmp_path: Path) -> None:
    ids = await scene(db_pool)
    t = ids["tenant"]
    env = {**os.environ, "OPSC_DATABASE_URL": migrated_pg, "OPSC_HOME": str(tmp_path / "h"),
           "OPSC_AUDIT_SIGNING_KEY": str(audit_key)}
    run = ["prune", "--tenant", t, "--json"]
    none = await run_cli(env, *run)
    assert none.code == 2 and "no retention configured" in none.stdout
    dry = await run_cli(env, *run, "--dry-run", "--events-days", "30")
    assert dry.code == 0, dry.stderr
    assert json.loads(dry.stdout)["chains"][0]["deleted"] == {"execution_events": 10}

    reports = await run_scheduled(db_pool, POLICY, key=audit_key, every_seconds=0.05,
                                  rounds=2, tenant=t)
    # round 1: the prune's checkpoints; round 2: nothing moved, nothing to sign
    assert [len(r.checkpoints) for r in reports] == [2, 0]
    await add_events(db_pool, ids["new"], 2, prefix="later")
    [later] = await run_scheduled(db_pool, POLICY, key=audit_key, every_seconds=0.05,
                                  rounds=1, tenant=t)
    kinds = [(r["stream"], r["kind"]) for r in await db_pool.fetch(
        "SELECT stream, kind FROM execution.audit_checkpoints WHERE tenant = $1 ORDER BY id",
        t)]
    assert kinds == [("audit", "prune"), ("events", "prune"), ("events", "scheduled")]
    assert len(later.checkpoints) == 1
    report = await verify(db_pool, tenant=t, trusted=await trusted_audit_keys(audit_key, None))
    assert report.ok, dump(report)


@pytest.fixture(scope="module")
async def as_role(migrated_pg: str) -> AsyncIterator[dict[str, str]]:
    """A login user in the pruner and in the worker group role (migration 015), dropped after."""
    suffix = uuid.uuid4().hex[:8]
    users = {g: f"t_aud_{g.removeprefix('opsc_')}_{suffix}" for g in ("opsc_pruner",
                                                                       "opsc_worker")}
    admin = await asyncpg.connect(migrated_pg)
    try:
        for group, user in users.items():
            await admin.execute(f"CREATE ROLE {user} LOGIN IN ROLE {group}")
        dbname = await admin.fetchval("SELECT current_database()")
        yield {g: database_url(migrated_pg, dbname, user=u) for g, u in users.items()}
    finally:
        for user in users.values():
            await admin.execute(f"DROP OWNED BY {user}")
            await admin.execute(f"DROP ROLE IF EXISTS {user}")
        await admin.close()


async def test_the_pruner_role_prunes_and_the_worker_cannot_touch_the_chain(
        db_pool: asyncpg.Pool, audit_key: Path, as_role: dict[str, str]) -> None:
    ids = await scene(db_pool)
    t = ids["tenant"]
    pruner = await asyncpg.create_pool(as_role["opsc_pruner"], min_size=1, max_size=2)
    try:
        report = await prune(pruner, POLICY, key=audit_key, tenant=t)
    finally:
        await pruner.close()
    assert report.total("execution_events") == 10 and len(report.checkpoints) == 2
    assert (await verify(db_pool, tenant=t,
                         trusted=await trusted_audit_keys(audit_key, None))).ok
    worker = await asyncpg.connect(as_role["opsc_worker"])
    refused = []
    try:
        for sql in ("SELECT execution.audit_link('x', 'audit', 'forged')",
                    "UPDATE execution.audit_chain_heads SET seq = 0",
                    "INSERT INTO execution.audit_gaps (tenant, stream, from_seq, to_seq,"
                    " prev_hash, last_hash, reason) VALUES ('x', 'audit', 1, 1, '', '', 'pruned')",
                    "DELETE FROM execution.audit_checkpoints",
                    "DELETE FROM execution.event_log",
                    "UPDATE execution.rbac_audit SET reason = 'forged'",
                    "INSERT INTO execution.rbac_signers (principal, public_key)"
                    " VALUES ('x', 'ssh-ed25519 AAAA')"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await worker.execute(sql)
            refused.append(sql.split()[0])
    finally:
        await worker.close()
    print(f"worker role refused {len(refused)} of 7 writes to the chain and the registry")
