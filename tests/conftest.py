"""Session-wide real servers: one embedded PostgreSQL and one Temporal dev server per run."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from opsconductor.schema.migrate import migrate
from opsconductor.schema.payloads import DATA_CONVERTER
from opsconductor.starter.embedded_postgres import EmbeddedPostgres
from opsconductor.starter.temporal_server import TemporalDevServer

# The whole session's worker and client use the test RBAC policy (approver roles).
os.environ["OPSC_RBAC_POLICY"] = str(Path(__file__).resolve().parent / "rbac_policy.yaml")
# Hermetic Temporal connections: no TEMPORAL_* variable or temporal.toml of the machine's
# (the `temporal` CLI's, which every client reads first) leaks into a test.
for _name in [k for k in os.environ if k.startswith("TEMPORAL_")]:
    del os.environ[_name]
os.environ["TEMPORAL_CONFIG_FILE"] = str(Path(__file__).resolve().parent / "data"
                                         / "no-temporal-profiles.toml")
# Tests run the workflow in the strict sandbox: a non-deterministic call fails them.
os.environ.setdefault("OPSC_WORKFLOW_SANDBOX", "strict")


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="opsc-tests-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def pg_url(session_dir: Path) -> Iterator[str]:
    """A migrated PostgreSQL: OPSC_TEST_DATABASE_URL if set, else an embedded server."""
    external = os.environ.get("OPSC_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(session_dir / "pg")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def migrated_pg(pg_url: str) -> str:
    await migrate(pg_url)
    return pg_url


@pytest.fixture(scope="session")
async def db_pool(migrated_pg: str) -> AsyncIterator[asyncpg.Pool]:
    from opsconductor.activities.db import create_pool

    pool = await create_pool(migrated_pg, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def temporal_server(session_dir: Path) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(headless=True, log_file=session_dir / "temporal.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def temporal_client(temporal_server: TemporalDevServer) -> Client:
    return await Client.connect(temporal_server.address,
                                data_converter=DATA_CONVERTER)


@pytest.fixture(scope="session")
async def engine(temporal_client: Client, db_pool: asyncpg.Pool,
                 session_dir: Path) -> AsyncIterator[Any]:
    """One worker for the whole session plus an ExecutionClient bound to its task queue."""
    from opsconductor.schema.config import Settings
    from opsconductor.starter.client import ExecutionClient
    from opsconductor.starter.worker import build_worker

    task_queue = "opsc-tests"
    # One settings object for the worker and the client: a test that points them elsewhere
    # (an inventory, say) sets it on `engine.settings`.
    settings = Settings(home=session_dir / "home", task_queue=task_queue,
                        temporal_address="unused", database_url="unused")
    worker = build_worker(temporal_client, task_queue, pool=db_pool, settings=settings)
    async with worker:
        yield ExecutionClient(temporal=temporal_client, pool=db_pool, settings=settings)
