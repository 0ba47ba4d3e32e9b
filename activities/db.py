"""Opening the Postgres pool a worker or a client holds and hands to whatever needs it, and
the one-off connections of health checks and the dry run."""

from __future__ import annotations

import asyncio
import re
import ssl

import asyncpg

from opsconductor.schema.config import Settings


class DatabaseUnavailable(RuntimeError):
    pass


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without `RESET ALL`: our code leaves no session state behind (advisory locks
    are transaction-scoped, LISTENs are removed), and the reset cost a round trip on every
    release, i.e. several per step."""


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                         command_timeout=60, reset=_keep_session)
    except ssl.SSLCertVerificationError as err:
        raise DatabaseUnavailable(
            f"PostgreSQL at {_redact(url)} failed TLS verification: {err.verify_message} "
            "(the server's certificate must be signed by the CA in sslrootcert and name the "
            "host in the URL)") from err
    except (OSError, asyncpg.PostgresError) as err:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {_redact(url)}: {err}") from err


def _redact(url: str) -> str:
    """The URL without its password (in the user part or a `password=` parameter)."""
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url


async def open_pool(settings: Settings, *, min_size: int = 2,
                    max_size: int = 20) -> asyncpg.Pool:
    """The pool for the configured database; DatabaseUnavailable when none is configured."""
    if not settings.database_url:
        raise DatabaseUnavailable("no database configured: set OPSC_DATABASE_URL or "
                                  "start `opsconductor dev`")
    return await create_pool(settings.database_url, min_size=min_size, max_size=max_size)


async def connect_once(url: str | None, *, timeout: float = 5.0) -> asyncpg.Connection:
    """One short-lived connection (health checks, the dry run's reads), bounded in time."""
    if not url:
        raise RuntimeError("no database configured")
    return await asyncio.wait_for(asyncpg.connect(url), timeout)
