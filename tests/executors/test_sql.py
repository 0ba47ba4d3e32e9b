"""sql_query executor against the test PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from opsconductor.activities.executors.sql import SqlExecutor
from opsconductor.schema.assets import Asset
from opsconductor.schema.enums import ActionClass, StepKind
from tests.executors.conftest import set_secret
from tests.executors.helpers import make_ctx
from tests.helpers import wait_for


def db_asset(pg_url: str, **db: object) -> Asset:
    return Asset.model_validate({"id": "pg", "hostname": "pg.local", "connector": "local",
                                 "database": {"dsn": pg_url, **db}})


async def sql(pg_url: str, query: str, *, action_class: ActionClass = ActionClass.READ,
              timeout: float = 30, asset: Asset | None = None, **inputs: object):
    ctx = make_ctx(StepKind.SQL, {"query": query, **inputs}, asset=asset or db_asset(pg_url),
                   action_class=action_class, timeout=timeout)
    return await SqlExecutor().run(ctx)


async def test_select_types_and_row_cap(pg_url: str) -> None:
    out = await sql(pg_url, "SELECT g AS n FROM generate_series(1, 50) g", row_limit=10)
    assert out.ok, out.error
    assert out.output["row_count"] == 10 and out.output["truncated"] is True
    assert out.output["rows"][0] == {"n": 1} and out.output["columns"] == ["n"]
    out = await sql(pg_url, "SELECT g FROM generate_series(1, 5) g WHERE g > $1", params=[2])
    assert out.output["rows"] == [{"g": 3}, {"g": 4}, {"g": 5}]
    assert out.output["truncated"] is False and out.output["read_only"] is True
    out = await sql(pg_url, """SELECT 1.50::numeric AS num, '2026-01-02T03:04:05Z'::timestamptz
        AS ts, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, '{"k": [1]}'::jsonb AS doc,
        '\\x0102'::bytea AS raw, interval '90 seconds' AS iv, ARRAY[1,2] AS arr, NULL AS nothing""")
    row = out.output["rows"][0]
    assert row["num"] == "1.50" and row["ts"].startswith("2026-01-02T03:04:05")
    assert row["id"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" and row["doc"] == {"k": [1]}
    assert row["raw"] == "0102" and row["iv"] == 90.0 and row["arr"] == [1, 2]
    assert row["nothing"] is None


async def test_read_class_is_read_only(pg_url: str, db_pool: asyncpg.Pool) -> None:
    table = f"opsc_sqltest_{uuid.uuid4().hex[:8]}"
    await db_pool.execute(f"CREATE TABLE public.{table} (id int)")
    await db_pool.execute(f"INSERT INTO public.{table} VALUES (1), (2)")
    try:
        sneaky = f"WITH gone AS (DELETE FROM public.{table} RETURNING *) SELECT * FROM gone"
        out = await sql(pg_url, sneaky)
        assert not out.ok and out.error_type == "ReadOnlyViolation" and not out.retryable
        assert await db_pool.fetchval(f"SELECT count(*) FROM public.{table}") == 2
        out = await sql(pg_url, f"UPDATE public.{table} SET id = id + 10",
                        action_class=ActionClass.MODIFY)
        assert out.ok and out.output["row_count"] == 2 and out.output["command"] == "UPDATE"
        out = await sql(pg_url, f"INSERT INTO public.{table} VALUES ($1) RETURNING id",
                        params=[7], action_class=ActionClass.MODIFY)
        assert out.output["rows"] == [{"id": 7}]
        out = await sql(pg_url, f"SELECT count(*) AS c FROM public.{table}")
        assert out.output["rows"] == [{"c": 3}]
        out = await sql(pg_url, f"INSERT INTO public.{table} VALUES (1); "
                        f"DELETE FROM public.{table} WHERE id = 1",
                        action_class=ActionClass.MODIFY)
        assert out.ok, out.error
        assert await db_pool.fetchval(f"SELECT count(*) FROM public.{table}") == 3
    finally:
        await db_pool.execute(f"DROP TABLE public.{table}")


async def test_statement_timeout_and_errors(pg_url: str) -> None:
    out = await sql(pg_url, "SELECT pg_sleep(10)", timeout=0.5)
    assert not out.ok and out.error_type == "StepTimeout"
    out = await sql(pg_url, "SELECT * FROM no_such_table_here")
    assert out.error_type == "SqlError" and not out.retryable
    out = await sql(pg_url, "SELECT 1", asset=Asset.model_validate(
        {"id": "nodb", "hostname": "nodb", "connector": "local"}))
    assert out.error_type == "InvalidStep"
    dead = Asset.model_validate({"id": "dead", "hostname": "dead", "connector": "local",
                                 "database": {"host": "127.0.0.1", "port": 1, "dbname": "x",
                                              "user": "x", "connect_timeout": 2}})
    out = await sql(pg_url, "SELECT 1", asset=dead)
    assert out.error_type == "DatabaseUnavailable" and out.retryable


async def test_dsn_from_secret(pg_url: str) -> None:
    set_secret("test/db/dsn", pg_url)
    asset = Asset.model_validate({"id": "pg2", "hostname": "pg2", "connector": "local",
                                  "database": {"dsn": {"type": "secret", "path": "test/db/dsn"}}})
    out = await sql(pg_url, "SELECT current_database() AS db", asset=asset)
    assert out.ok, out.error
    assert out.output["rows"][0]["db"]


async def test_cancel_stops_the_query_on_the_server(pg_url: str, db_pool: asyncpg.Pool) -> None:
    marker = f"opsc_cancel_{uuid.uuid4().hex[:8]}"
    task = asyncio.create_task(sql(pg_url, f"SELECT pg_sleep(60) AS {marker}"))
    q = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()"

    async def running() -> int:
        return int(await db_pool.fetchval(q, f"%{marker}%"))

    assert await wait_for(running, timeout=10, what="the query to run on the server") == 1
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

    async def stopped() -> bool:
        return await running() == 0

    await wait_for(stopped, timeout=10, what="the cancelled query to leave the server")
