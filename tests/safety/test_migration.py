"""002_safety.sql is idempotent: applying it again over a migrated database changes nothing."""

from __future__ import annotations

import asyncpg

from opsconductor.schema.migrate import migration_files


async def test_002_applies_twice(db_pool: asyncpg.Pool) -> None:
    sql = dict(migration_files())["002_safety.sql"]
    async with db_pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute(sql)
            await conn.execute(sql)
            tables = {r["table_name"] for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'execution'")}
        finally:
            await tr.rollback()
    assert {"execution_locks", "execution_lock_waiters", "rbac_rules", "rbac_role_bindings",
            "rbac_audit", "rbac_policy_state", "idempotency_records"} <= tables
