"""Apply the SQL migrations in `migrations/` in order, once each, under an advisory lock."""

from __future__ import annotations

from importlib import resources

import asyncpg

MIGRATION_LOCK = 7_423_001  # advisory lock id: two migrators never interleave


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("opsconductor.schema") / "migrations"
    files = sorted((p.name, p.read_text()) for p in folder.iterdir() if p.name.endswith(".sql"))
    return files


async def migrate(dsn_or_conn: str | asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the versions applied by this call."""
    conn = (await asyncpg.connect(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute("CREATE SCHEMA IF NOT EXISTS execution")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS execution.schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["version"] for r in
                    await conn.fetch("SELECT version FROM execution.schema_migrations")}
            for name, sql in migration_files():
                version = name.removesuffix(".sql")
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO execution.schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        if isinstance(dsn_or_conn, str):
            await conn.close()
    return applied
