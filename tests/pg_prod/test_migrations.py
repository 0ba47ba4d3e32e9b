"""Migration checksums, `opsconductor db status`, and the worker's refusal of a schema older or
newer than its code, on real throw-away databases of the session's PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from opsconductor.activities.schema_check import SchemaMismatch, require_schema
from opsconductor.schema.migrate import MigrationError, checksum, migrate, migrations, status
from opsconductor.starter import cli
from tests.integration.helpers import OPSCONDUCTOR, opsc_env
from tests.pg_prod.conftest import NewDatabase

LATEST = migrations()[-1].version


async def _db_status(url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any,
                     tmp_path: Path) -> tuple[int, dict[str, Any]]:
    monkeypatch.setenv("OPSC_DATABASE_URL", url)
    monkeypatch.setenv("OPSC_HOME", str(tmp_path))
    code = await cli.cmd_db_status(argparse.Namespace(json=True))
    return code, json.loads(capsys.readouterr().out)


async def test_checksums_are_recorded_and_status_is_clean_only_when_migrated(
        new_database: NewDatabase, monkeypatch: pytest.MonkeyPatch, capsys: Any,
        tmp_path: Path) -> None:
    url = await new_database()
    code, before = await _db_status(url, monkeypatch, capsys, tmp_path)
    assert code == cli.EXIT_FAILED and before["database_version"] is None
    assert before["pending"] == [m.version for m in migrations()]

    applied = await migrate(url)
    assert applied == [m.version for m in migrations()]
    assert await migrate(url) == []  # idempotent
    conn = await asyncpg.connect(url)
    try:
        recorded = dict(await conn.fetch(
            "SELECT version, checksum FROM execution.schema_migrations"))
    finally:
        await conn.close()
    assert recorded == {m.version: checksum(m.sql) for m in migrations()}

    code, after = await _db_status(url, monkeypatch, capsys, tmp_path)
    assert code == cli.EXIT_OK, after
    assert after["clean"] and after["pending"] == [] and after["changed"] == []
    assert after["database_version"] == after["code_version"] == LATEST
    print(f"migrations applied and checksummed: {len(recorded)}")


async def test_a_database_migrated_before_checksums_is_backfilled(
        new_database: NewDatabase) -> None:
    url = await new_database()
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER TABLE execution.schema_migrations DROP COLUMN checksum")
        old = await status(conn)  # readable before the column exists
        assert old.clean and all(a.checksum is None for a in old.applied)
        assert await migrate(conn) == []
        missing = await conn.fetchval(
            "SELECT count(*) FROM execution.schema_migrations WHERE checksum IS NULL")
        state = await status(conn)
    finally:
        await conn.close()
    assert missing == 0 and state.clean
    assert {a.version: a.checksum for a in state.applied} == {
        m.version: m.checksum for m in migrations()}


async def test_a_changed_applied_migration_is_refused_by_name(
        new_database: NewDatabase, monkeypatch: pytest.MonkeyPatch, capsys: Any,
        tmp_path: Path) -> None:
    url = await new_database()
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE execution.schema_migrations SET checksum = $1"
                           " WHERE version = '003_attempts'", "0" * 64)
        # a pending migration too: the refusal applies none of it
        await conn.execute(f"DELETE FROM execution.schema_migrations WHERE version = '{LATEST}'")
        with pytest.raises(MigrationError) as refused:
            await migrate(conn)
        still_pending = (await status(conn)).pending
    finally:
        await conn.close()
    message = str(refused.value)
    assert "003_attempts" in message and "changed" in message and "new migration" in message
    assert still_pending == [LATEST]
    code, report = await _db_status(url, monkeypatch, capsys, tmp_path)
    assert code == cli.EXIT_FAILED and report["changed"] == ["003_attempts"]
    assert report["pending"] == [LATEST]
    print(f"refused: {message}")


async def test_the_worker_check_names_both_versions(new_database: NewDatabase) -> None:
    url = await new_database()
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        assert (await require_schema(conn)).database_version == LATEST
        await conn.execute("INSERT INTO execution.schema_migrations (version, checksum)"
                           " VALUES ('999_from_a_newer_build', $1)", "f" * 64)
        with pytest.raises(SchemaMismatch) as newer:
            await require_schema(conn)
        with pytest.raises(MigrationError) as migrate_refused:
            await migrate(conn)
        await conn.execute("DELETE FROM execution.schema_migrations"
                           " WHERE version IN ('999_from_a_newer_build', $1)", LATEST)
        with pytest.raises(SchemaMismatch) as older:
            await require_schema(conn)
    finally:
        await conn.close()
    assert "999_from_a_newer_build" in str(newer.value) and LATEST in str(newer.value)
    assert "newer" in str(newer.value)
    assert "999_from_a_newer_build" in str(migrate_refused.value)
    previous = migrations()[-2].version
    assert f"at {previous}, older than this worker's {LATEST}" in str(older.value)
    assert "opsconductor db migrate" in str(older.value)
    print(f"newer: {newer.value}\nolder: {older.value}")


async def test_a_worker_process_refuses_an_older_schema_in_one_line(
        new_database: NewDatabase, tmp_path: Path) -> None:
    url = await new_database()
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await conn.execute(f"DELETE FROM execution.schema_migrations WHERE version = '{LATEST}'")
    finally:
        await conn.close()
    env = opsc_env(temporal_address="127.0.0.1:9", database_url=url,
                   task_queue="never-polled", home=tmp_path, OPSC_METRICS_ADDRESS="")
    run = await asyncio.to_thread(
        subprocess.run, [OPSCONDUCTOR, "worker"], env=env, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode != 0, run.stderr
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert LATEST in errors[0] and migrations()[-2].version in errors[0], errors
    print(errors[0])
