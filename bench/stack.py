"""The servers every benchmark runs against: a Temporal dev server and an embedded PostgreSQL
(migrated, with a pool), in a temporary directory, stopped when the benchmark ends."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class BenchStack:
    home: Path
    temporal_address: str
    database_url: str
    pool: Any  # asyncpg.Pool
    temporal: Any = None  # TemporalDevServer (its process: .proc)
    postgres: Any = None  # EmbeddedPostgres (its data directory: .data)


@contextlib.asynccontextmanager
async def bench_stack(prefix: str = "opsc-bench-", *,
                      durable: bool = False) -> AsyncIterator[BenchStack]:
    from opsconductor.activities import db
    from opsconductor.schema.migrate import migrate
    from opsconductor.starter.embedded_postgres import EmbeddedPostgres
    from opsconductor.starter.temporal_server import TemporalDevServer

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        temporal = TemporalDevServer(headless=True)
        postgres = EmbeddedPostgres(Path(tmp) / "pg", durable=durable)
        temporal.start()
        try:
            url = postgres.start()
            await migrate(url)
            pool = await db.create_pool(url, min_size=4, max_size=20)
            try:
                yield BenchStack(Path(tmp), temporal.address, url, pool, temporal, postgres)
            finally:
                await pool.close()
        finally:
            temporal.stop()
            postgres.stop()
