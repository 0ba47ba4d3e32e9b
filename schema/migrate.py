"""Apply the SQL migrations in `migrations/` in order, once each, under an advisory lock, and
say where a database stands against them.

Each applied migration's sha256 is recorded in `execution.schema_migrations`; a database
migrated before checksums existed gets them backfilled from the files as they are. A file
changed after it was applied is refused by name (write a new migration instead), and so is a
database holding migrations this build does not have (it is newer than the code).

Once the owner role exists in a database (migration 015 makes `opsc_owner` own the schema),
every migration runs under `SET LOCAL ROLE opsc_owner`, so the tables it creates belong to the
owner role and pick up its default privileges, whichever login user runs `db migrate`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from importlib import resources

import asyncpg
from pydantic import BaseModel

MIGRATION_LOCK = 7_423_001  # advisory lock id: two migrators never interleave
OWNER_ROLE = "opsc_owner"


class Migration(BaseModel):
    version: str
    sql: str
    checksum: str


class AppliedMigration(BaseModel):
    version: str
    applied_at: datetime
    checksum: str | None
    state: str  # ok | changed (file differs) | unknown (no such file in this build)


class MigrationStatus(BaseModel):
    """Where a database stands against this build's migrations."""

    code_version: str
    database_version: str | None
    applied: list[AppliedMigration]
    pending: list[str]
    changed: list[str]
    unknown: list[str]

    @property
    def clean(self) -> bool:
        return not (self.pending or self.changed or self.unknown)


class MigrationError(RuntimeError):
    """The database and this build's migrations disagree; the message names what and how."""


def checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("opsconductor.schema") / "migrations"
    files = sorted((p.name, p.read_text()) for p in folder.iterdir() if p.name.endswith(".sql"))
    return files


def migrations() -> list[Migration]:
    return [Migration(version=name.removesuffix(".sql"), sql=sql, checksum=checksum(sql))
            for name, sql in migration_files()]


def code_version() -> str:
    """The newest migration this build carries: the schema version its code expects."""
    return migrations()[-1].version


def changed_message(versions: list[str], rows: dict[str, str | None]) -> str:
    files = {m.version: m.checksum for m in migrations()}
    named = "; ".join(f"{v} (applied sha256 {str(rows.get(v))[:12]}, file now {files[v][:12]})"
                      for v in versions)
    return (f"applied migration changed since it was applied: {named}. Restore the file as it "
            "was applied and put the change in a new migration")


def unknown_message(versions: list[str]) -> str:
    return (f"the database has migrations this build does not know: {', '.join(versions)} "
            f"(database at {versions[-1]}, this build at {code_version()}): upgrade opsconductor "
            "before migrating")


async def _migrations_table_exists(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('execution.schema_migrations') "
                                    "IS NOT NULL"))


async def _owner_role(conn: asyncpg.Connection) -> str | None:
    """`opsc_owner` once it owns this database's schema and we may act as it (else None:
    before migration 015, or as the owner role itself)."""
    return await conn.fetchval(
        "SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"
        " WHERE n.nspname = 'execution' AND r.rolname = $1 AND r.rolname <> current_user"
        "   AND pg_has_role(current_user, r.oid, 'MEMBER')", OWNER_ROLE)


async def _applied(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT version, applied_at, checksum"
                            " FROM execution.schema_migrations ORDER BY version")


async def _prepare(conn: asyncpg.Connection, role: str | None) -> None:
    """The bookkeeping table with its checksum column; checksums backfilled from the files
    for migrations applied before they were recorded."""
    async with conn.transaction():
        if role:  # the schema exists (the owner role owns it)
            await conn.execute(f"SET LOCAL ROLE {role}")
        else:
            await conn.execute("CREATE SCHEMA IF NOT EXISTS execution")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS execution.schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        await conn.execute("ALTER TABLE execution.schema_migrations"
                           " ADD COLUMN IF NOT EXISTS checksum text")
        files = {m.version: m.checksum for m in migrations()}
        for row in await _applied(conn):
            if row["checksum"] is None and row["version"] in files:
                await conn.execute("UPDATE execution.schema_migrations SET checksum = $2"
                                   " WHERE version = $1 AND checksum IS NULL",
                                   row["version"], files[row["version"]])


async def status(conn: asyncpg.Connection) -> MigrationStatus:
    """Applied, pending, changed and unknown migrations. Reads only: a row without a checksum
    (applied before checksums were recorded) counts as matching, as `migrate` would backfill
    it."""
    rows: list[asyncpg.Record] = []
    if await _migrations_table_exists(conn):
        has_checksum = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema ="
            " 'execution' AND table_name = 'schema_migrations' AND column_name = 'checksum')")
        rows = await (_applied(conn) if has_checksum else conn.fetch(
            "SELECT version, applied_at, NULL::text AS checksum"
            " FROM execution.schema_migrations ORDER BY version"))
    ours = migrations()
    files = {m.version: m.checksum for m in ours}
    applied: list[AppliedMigration] = []
    for row in rows:
        version, recorded = row["version"], row["checksum"]
        state = ("unknown" if version not in files
                 else "changed" if recorded is not None and recorded != files[version]
                 else "ok")
        applied.append(AppliedMigration(version=version, applied_at=row["applied_at"],
                                        checksum=recorded, state=state))
    done = {a.version for a in applied}
    return MigrationStatus(
        code_version=ours[-1].version,
        database_version=applied[-1].version if applied else None,
        applied=applied,
        pending=[m.version for m in ours if m.version not in done],
        changed=[a.version for a in applied if a.state == "changed"],
        unknown=[a.version for a in applied if a.state == "unknown"])


async def migrate(dsn_or_conn: str | asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the versions applied by this call. Refuses (nothing
    applied) a database whose applied migrations changed or that is newer than this build."""
    conn = (await asyncpg.connect(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await _prepare(conn, await _owner_role(conn))
            state = await status(conn)
            if state.unknown:
                raise MigrationError(unknown_message(state.unknown))
            if state.changed:
                recorded = {a.version: a.checksum for a in state.applied}
                raise MigrationError(changed_message(state.changed, recorded))
            pending = set(state.pending)
            for m in migrations():
                if m.version not in pending:
                    continue
                role = await _owner_role(conn)
                try:
                    async with conn.transaction():
                        if role:
                            await conn.execute(f"SET LOCAL ROLE {role}")
                        await conn.execute(m.sql)
                        await conn.execute(
                            "INSERT INTO execution.schema_migrations (version, checksum)"
                            " VALUES ($1, $2)", m.version, m.checksum)
                except asyncpg.PostgresError as err:
                    raise MigrationError(f"migration {m.version} failed (nothing of it "
                                         f"applied): {err}") from err
                applied.append(m.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        if isinstance(dsn_or_conn, str):
            await conn.close()
    return applied
