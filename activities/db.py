"""The worker's Postgres pool, shared by every activity in the process."""

from __future__ import annotations

import asyncio

import asyncpg

from opsconductor.schema.config import load_settings

_pool: asyncpg.Pool | None = None
_lock = asyncio.Lock()


class DatabaseUnavailable(RuntimeError):
    pass


def set_pool(pool: asyncpg.Pool | None) -> None:
    global _pool
    _pool = pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without `RESET ALL`: our code leaves no session state behind (advisory locks
    are transaction-scoped, LISTENs are removed), and the reset cost a round trip on every
    release, i.e. several per step."""


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                         command_timeout=60, reset=_keep_session)
    except (OSError, asyncpg.PostgresError) as err:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {_redact(url)}: {err}") from err


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url


async def get_pool() -> asyncpg.Pool:
    global _pool
    if _pool is not None:
        return _pool
    async with _lock:
        if _pool is None:
            url = load_settings().database_url
            if not url:
                raise DatabaseUnavailable("no database configured: set OPSC_DATABASE_URL or "
                                          "start `opsconductor dev`")
            _pool = await create_pool(url)
    return _pool
