"""The worker's start-up check that the database schema is the one its code was written for.

A worker against an older schema would fail mid-step on a missing column; one against a newer
schema may write rows a newer build reads differently. Either way it refuses to start, in one
line naming both versions, before it polls any task.
"""

from __future__ import annotations

import asyncpg

from opsconductor.schema.migrate import MigrationStatus, status


class SchemaMismatch(RuntimeError):
    """The database's schema version is not this build's."""


def mismatch(state: MigrationStatus) -> str | None:
    """Why a worker of this build must not run on a database in `state` (None: it may)."""
    db = state.database_version or "empty (no migration applied)"
    if state.unknown:
        return (f"database schema is at {db}, newer than this worker's {state.code_version}: "
                f"deploy a worker build that has {', '.join(state.unknown)}")
    if state.pending:
        return (f"database schema is at {db}, older than this worker's {state.code_version}: "
                f"run `opsconductor db migrate` (pending: {', '.join(state.pending)})")
    if state.changed:
        return (f"database schema is at {db} but migration {', '.join(state.changed)} differs "
                f"from this worker's ({state.code_version}): see `opsconductor db status`")
    return None


async def require_schema(db: asyncpg.Pool | asyncpg.Connection) -> MigrationStatus:
    """The database's migration status when it matches this build; else SchemaMismatch."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            state = await status(conn)
    else:
        state = await status(db)
    problem = mismatch(state)
    if problem:
        raise SchemaMismatch(problem)
    return state
