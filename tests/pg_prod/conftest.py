"""Throw-away databases in the session's PostgreSQL, for tests that migrate from nothing or
tamper with the migration record."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

NewDatabase = Callable[[], Awaitable[str]]


def database_url(url: str, name: str, user: str | None = None) -> str:
    """`url` pointing at database `name` (and logging in as `user` when given)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.rsplit('@', 1)[-1]}"
    return urlunsplit((parts.scheme, netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture
async def new_database(migrated_pg: str) -> AsyncIterator[NewDatabase]:
    """Make empty databases on the session's server; all are dropped after the test."""
    made: list[str] = []

    async def make() -> str:
        name = f"opsc_t_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(migrated_pg)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        made.append(name)
        return database_url(migrated_pg, name)

    yield make
    conn = await asyncpg.connect(migrated_pg)
    try:
        for name in made:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()
