"""Least-privilege database roles (migrations 015/016) on the session's real PostgreSQL: login
users made here, each a member of one group role, as a deployment would make them.

Each role does its job for real (a worker whose pool logs in as `opsc_worker` runs plans that
an `opsc_operator` client submits, approves, cancels and takes out of the DLQ; the API reader
reads them) and nothing more: every role x operation of the matrix is tried, in a transaction
rolled back, and compared with what docs/security.md promises.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from opsconductor.activities.db import create_pool
from opsconductor.schema.config import Settings
from opsconductor.starter import dlq
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.worker import build_worker
from tests.helpers import request, shell, step, unique_queue, wait_status
from tests.pg_prod.conftest import database_url

GROUPS = ("opsc_owner", "opsc_worker", "opsc_api_reader", "opsc_operator", "opsc_keys_admin",
          "opsc_pruner")
EXECUTION_ID = "00000000-0000-4000-8000-00000000f00d"

# operation -> SQL run as each role (inside a transaction that is rolled back)
OPERATIONS: dict[str, str] = {
    "read executions": "SELECT count(*) FROM execution.executions",
    "read audit": "SELECT count(*) FROM execution.rbac_audit",
    "write the mirror": (
        "INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor,"
        " environment, status, mode, sla_class, idempotency_key, plan_hash, spec)"
        " SELECT $1::uuid, 'wf-roles-' || $1, 'roles', 'alice', 'dev', 'running',"
        " 'background', 'fast', 'k', 'h', '{}'"),
    "append audit": (
        "INSERT INTO execution.rbac_audit (tenant, actor, action, environment, decision,"
        " reason, policy_version) VALUES ('roles', 'alice', 'execute', 'dev', 'allow', 'test',"
        " 'v1')"),
    "rewrite audit": "UPDATE execution.rbac_audit SET reason = 'forged'",
    "delete audit": "DELETE FROM execution.rbac_audit WHERE at < now() - interval '100 years'",
    "truncate audit": "TRUNCATE execution.rbac_audit",
    "rewrite events": "UPDATE execution.event_log SET message = 'forged'",
    "edit signer registry": (
        "INSERT INTO execution.rbac_signers (principal, public_key)"
        " VALUES ('mallory', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIForged')"),
    "disable a signer": "UPDATE execution.rbac_signers SET enabled = false",
    "edit RBAC rules": (
        "INSERT INTO execution.rbac_rules (id, effect) VALUES ('roles-test-allow-all',"
        " 'allow')"),
    "claim idempotency (submit)": (
        "SELECT * FROM execution.idempotency_claim('roles', 'k-' || $1, 60, $1::uuid, 'wf-r')"),
    "close DLQ entries": "UPDATE execution.execution_dlq SET requeued_by = requeued_by",
    "prune outputs": (
        "DELETE FROM execution.step_outputs WHERE created_at < now() - interval '100 years'"),
    "take a lock": "UPDATE execution.execution_locks SET renewed_at = renewed_at WHERE false",
    "DDL in the schema": "CREATE TABLE execution.roles_test_intruder (x int)",
    "change timeout policy": "UPDATE execution.timeout_policies SET max_attempts = max_attempts",
}
WK, RD, OP, KA, PR, OW = ("opsc_worker", "opsc_api_reader", "opsc_operator", "opsc_keys_admin",
                          "opsc_pruner", "opsc_owner")
ALLOWED: dict[str, set[str]] = {
    "read executions": {WK, RD, OP, KA, PR, OW},
    "read audit": {WK, RD, OP, KA, PR, OW},
    "write the mirror": {WK, OW},
    "append audit": {WK, OP, KA, OW},
    "rewrite audit": {OW},
    "delete audit": {PR, OW},
    "truncate audit": {OW},
    "rewrite events": {OW},
    "edit signer registry": {KA, OW},
    "disable a signer": {KA, OW},
    "edit RBAC rules": {OW},
    "claim idempotency (submit)": {OP, OW},
    "close DLQ entries": {OP, OW},
    "prune outputs": {PR, OW},
    "take a lock": {WK, OW},
    "DDL in the schema": {OW},
    "change timeout policy": {OW},
}


@pytest.fixture(scope="module")
async def role_urls(migrated_pg: str) -> AsyncIterator[dict[str, str]]:
    """A login user per group role (`CREATE ROLE ... LOGIN IN ROLE opsc_x`), dropped after."""
    suffix = uuid.uuid4().hex[:8]
    users = {group: f"t_{group.removeprefix('opsc_')}_{suffix}" for group in GROUPS}
    admin = await asyncpg.connect(migrated_pg)
    try:
        for group, user in users.items():
            await admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD 'unused-{suffix}'"
                                f" IN ROLE {group}")
        dbname = await admin.fetchval("SELECT current_database()")
        yield {group: database_url(migrated_pg, dbname, user=user)
               for group, user in users.items()}
    finally:
        for user in users.values():
            await admin.execute(f"DROP OWNED BY {user}")
            await admin.execute(f"DROP ROLE IF EXISTS {user}")
        await admin.close()


async def _try(url: str, sql: str) -> str:
    """'allowed' or 'denied' (permission denied), never leaving a change behind."""
    conn = await asyncpg.connect(url)
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("SET LOCAL lock_timeout = '5s'")
            args = [EXECUTION_ID] if "$1" in sql else []
            await conn.execute(sql, *args)
            return "allowed"
        except asyncpg.InsufficientPrivilegeError:
            return "denied"
        finally:
            await tx.rollback()
    finally:
        await conn.close()


async def test_each_role_may_do_exactly_what_the_matrix_says(role_urls: dict[str, str]) -> None:
    got = {op: {g: await _try(role_urls[g], sql) for g in GROUPS}
           for op, sql in OPERATIONS.items()}
    width = max(map(len, OPERATIONS))
    print("\n" + " " * width + "  " + " ".join(f"{g.removeprefix('opsc_'):>10}" for g in GROUPS))
    for op, row in got.items():
        print(f"{op:<{width}}  " + " ".join(
            f"{'allowed' if row[g] == 'allowed' else '-':>10}" for g in GROUPS))
    wrong = {(op, g): row[g] for op, row in got.items() for g in GROUPS
             if (row[g] == "allowed") != (g in ALLOWED[op])}
    allowed = sum(v == "allowed" for row in got.values() for v in row.values())
    print(f"{len(OPERATIONS) * len(GROUPS)} role x operation checks: {allowed} allowed, "
          f"{len(OPERATIONS) * len(GROUPS) - allowed} denied, {len(wrong)} unexpected")
    assert wrong == {}


async def test_every_table_is_readable_and_no_unlisted_role_writes(migrated_pg: str) -> None:
    """Every table of the schema (those added later too) is owned by opsc_owner and readable
    by every role; a write grant to the API reader exists nowhere."""
    conn = await asyncpg.connect(migrated_pg)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner,"
            "  has_table_privilege('opsc_api_reader', c.oid, 'SELECT') AS readable,"
            "  has_table_privilege('opsc_api_reader', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')"
            "    AS reader_writes"
            " FROM pg_class c WHERE c.relnamespace = 'execution'::regnamespace"
            "   AND c.relkind IN ('r', 'p', 'v')")
        definers = await conn.fetch(
            "SELECT p.oid::regprocedure::text AS fn,"
            "  has_function_privilege('opsc_worker', p.oid, 'EXECUTE') AS worker_may"
            " FROM pg_proc p WHERE p.pronamespace = 'execution'::regnamespace AND p.prosecdef"
            "   AND p.prorettype <> 'trigger'::regtype")
    finally:
        await conn.close()
    assert rows and {r["owner"] for r in rows} == {"opsc_owner"}, rows
    assert all(r["readable"] and not r["reader_writes"] for r in rows), rows
    assert [d["fn"] for d in definers if d["worker_may"]] == []
    print(f"{len(rows)} tables owned by opsc_owner, all readable, none writable by the reader; "
          f"{len(definers)} SECURITY DEFINER functions closed to the worker")


async def test_a_table_created_later_is_readable_by_every_role_and_writable_by_none(
        migrated_pg: str, role_urls: dict[str, str]) -> None:
    conn = await asyncpg.connect(migrated_pg)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE opsc_owner")
            await conn.execute("CREATE TABLE execution.roles_test_later (x int)")
            grants = {g: (await conn.fetchval(
                f"SELECT has_table_privilege('{g}', 'execution.roles_test_later', 'SELECT')"),
                await conn.fetchval(
                f"SELECT has_table_privilege('{g}', 'execution.roles_test_later', 'INSERT')"))
                for g in GROUPS if g != "opsc_owner"}
            await conn.execute("DROP TABLE execution.roles_test_later")
    finally:
        await conn.close()
    assert grants == {g: (True, False) for g in grants}, grants


@pytest.fixture
async def role_pools(role_urls: dict[str, str]) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    pools = {g: await create_pool(role_urls[g], min_size=1, max_size=5)
             for g in ("opsc_worker", "opsc_operator", "opsc_api_reader")}
    try:
        yield pools
    finally:
        for pool in pools.values():
            await pool.close()


async def test_worker_operator_and_reader_do_their_jobs_with_their_grants_only(
        temporal_client: Client, role_pools: dict[str, asyncpg.Pool], session_dir: Path,
        db_pool: asyncpg.Pool) -> None:
    queue = unique_queue("roles")
    settings = Settings(home=session_dir / "roles-home", task_queue=queue,
                        temporal_address="unused", database_url="unused")
    worker = build_worker(temporal_client, queue, pool=role_pools["opsc_worker"],
                          settings=settings)
    operator = ExecutionClient(temporal=temporal_client, pool=role_pools["opsc_operator"],
                               settings=settings)
    reader = ExecutionClient(temporal=temporal_client, pool=role_pools["opsc_api_reader"],
                             settings=settings)
    tenant = f"roles-{uuid.uuid4().hex[:6]}"
    async with worker:
        # approved, runs a command on a locked asset, stores its output, completes
        gated = await operator.execute(request([shell("s", "echo role-ok")], tenant=tenant,
                                               approval_level=1, environment="staging"),
                                       wait=False)
        assert (await _until_pending(operator, gated.execution_id))
        assert (await operator.approve(gated.execution_id, "bob", "fine")).accepted
        done = await wait_status(operator, gated.execution_id, "completed", timeout=60)
        # cancelled while waiting
        waiting = await operator.execute(request([step("a")], tenant=tenant, approval_level=1,
                                                 environment="staging"), wait=False)
        assert (await _until_pending(operator, waiting.execution_id))
        assert (await operator.cancel(waiting.execution_id, "alice", "roles test")).accepted
        await wait_status(operator, waiting.execution_id, "cancelled", timeout=60)
        # failed into the DLQ, requeued, the new run failing again, then discarded
        failed = await operator.execute(request([shell("f", "exit 4")], tenant=tenant,
                                                timeouts={"max_attempts": 1}), wait=True)
        assert failed.status.value == "failed"
        (entry,) = await dlq.list_dlq(operator, tenant=tenant)
        again = await dlq.requeue(operator, entry["id"], "bob")
        await wait_status(operator, again.execution_id, "failed", timeout=60)
        (second,) = await dlq.list_dlq(operator, tenant=tenant)
        assert await dlq.discard(operator, second["id"], "bob") == 1
        # the API reader sees all of it
        view = await reader.status(gated.execution_id)
        listed = await reader.list(tenant=tenant)
    assert view["status"] == "completed" and done["status"] == "completed"
    assert {s["id"]: s["status"] for s in view["steps"]} == {"s": "completed"}
    assert len(listed) == 4
    audit = await db_pool.fetchval("SELECT count(*) FROM execution.rbac_audit WHERE tenant = $1",
                                   tenant)
    output = await db_pool.fetchval(
        "SELECT count(*) FROM execution.step_outputs WHERE execution_id = $1",
        uuid.UUID(gated.execution_id))
    assert audit > 0 and output > 0
    print(f"as opsc_worker/opsc_operator/opsc_api_reader: 4 executions (completed, cancelled, "
          f"failed, requeued), {audit} audit rows, {output} output rows")


async def _until_pending(client: ExecutionClient, ident: str) -> bool:
    from tests.helpers import pending, until

    return bool(await until(client, ident, pending, timeout=30))


async def test_a_migrator_that_is_no_superuser_migrates_a_database_it_owns(
        migrated_pg: str) -> None:
    """The documented production path: the DBA makes the group roles (deploy/postgres/
    roles.sql) and a login migrator in opsc_owner owning the database; the migrator, with
    neither SUPERUSER nor CREATEROLE, applies every migration from nothing."""
    suffix = uuid.uuid4().hex[:8]
    user, dbname = f"t_migrator_{suffix}", f"opsc_t_mig_{suffix}"
    admin = await asyncpg.connect(migrated_pg)
    try:
        await admin.execute(f"CREATE ROLE {user} LOGIN IN ROLE opsc_owner")
        await admin.execute(f"CREATE DATABASE {dbname} OWNER {user}")
        from opsconductor.schema.migrate import migrate, migrations

        url = database_url(migrated_pg, dbname, user=user)
        applied = await migrate(url)
        conn = await asyncpg.connect(database_url(migrated_pg, dbname))
        try:
            owners = {r["owner"] for r in await conn.fetch(
                "SELECT pg_get_userbyid(relowner) AS owner FROM pg_class"
                " WHERE relnamespace = 'execution'::regnamespace")}
            super_, createrole = await conn.fetchrow(
                "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1", user)
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {user}")
        await admin.close()
    assert applied == [m.version for m in migrations()]
    assert owners == {"opsc_owner"} and not super_ and not createrole
