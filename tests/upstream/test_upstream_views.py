"""The views OpsConductor's readers read (`execution.execution_steps`, `execution_events`,
migration 017) under the roles of 015/016: every role reads them, none writes through them,
and the renamed tables keep exactly the grants the tables had. Run as each role (SET ROLE)
on the session's migrated database."""

from __future__ import annotations

import asyncpg
import pytest

ROLES = ("opsc_worker", "opsc_api_reader", "opsc_operator", "opsc_keys_admin", "opsc_pruner")
VIEWS = ("execution.execution_steps", "execution.execution_events")
WRITES = {
    "execution.execution_steps": "UPDATE execution.execution_steps SET step_name = 'x'",
    "execution.execution_events": "DELETE FROM execution.execution_events",
}
# what 016 granted on the tables, now under their new names
TABLE_GRANTS = {
    ("execution.step_runs", "opsc_worker"): {"SELECT", "INSERT", "UPDATE"},
    ("execution.event_log", "opsc_worker"): {"SELECT", "INSERT"},
    ("execution.event_log", "opsc_pruner"): {"SELECT", "DELETE"},
    ("execution.step_runs", "opsc_api_reader"): {"SELECT"},
    ("execution.event_log", "opsc_api_reader"): {"SELECT"},
}
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")


async def test_every_role_reads_the_views_and_none_writes_through_them(
        migrated_pg: str) -> None:
    conn = await asyncpg.connect(migrated_pg)
    refused = read = 0
    try:
        kinds = dict(await conn.fetch(
            "SELECT c.oid::regclass::text, c.relkind::text FROM pg_class c"
            " WHERE c.oid = ANY($1::regclass[])",
            [*VIEWS, "execution.step_runs", "execution.event_log"]))
        assert kinds == {"execution.execution_steps": "v", "execution.execution_events": "v",
                         "execution.step_runs": "r", "execution.event_log": "r"}, kinds
        for role in ROLES:
            for view in VIEWS:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL ROLE {role}")
                    await conn.fetchval(f"SELECT count(*) FROM {view}")
                    read += 1
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL ROLE {role}")
                        await conn.execute(WRITES[view])
                refused += 1
        got = {key: {p for p in PRIVILEGES if await conn.fetchval(
            "SELECT has_table_privilege($1, $2, $3)", key[1], key[0], p)}
            for key in TABLE_GRANTS}
    finally:
        await conn.close()
    assert got == TABLE_GRANTS, got
    print(f"views: {read} reads by {len(ROLES)} roles, {refused} writes through them refused; "
          f"{len(TABLE_GRANTS)} table grants kept across the rename")
