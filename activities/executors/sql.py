"""The `sql_query` tool: one statement against the target asset's PostgreSQL (asyncpg).

* read action class (SELECT, WITH, SHOW, ...): a READ ONLY transaction, so a planner's
  mislabelled write fails in the database instead of changing data;
* `statement_timeout` is the step's timeout (the SLA/action-class policy), enforced by the
  server, so a runaway query stops even if this worker dies;
* at most `row_limit` rows are fetched (cursor), `truncated` says whether more existed;
* rows come back as JSON-able dicts (numerics as strings to keep precision, times in ISO
  8601, bytes as hex, json/jsonb parsed); the activity masks them like any output.

Template values arrive as bound parameters (`schema/template_contexts.py` turns each
placeholder of the query into `$N`), never as SQL text. A value from an earlier step is
usually text (its stdout): each parameter is converted to the type PostgreSQL infers for it
(`int4`, `numeric`, `bool`, `uuid`, `date`, ...; anything for `text`), and a value that is not
of that type fails the step naming the parameter, before the query runs.

A statement without rows (INSERT/UPDATE/DDL) reports the server's command tag and the
affected row count. Connection failures are retryable (nothing ran); errors the database
raises are not, except serialization failures and deadlocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import ipaddress
import json
import re
import uuid
from typing import Any

import asyncpg

from opsconductor.activities.assets import resolve_secret_refs, secret_failure
from opsconductor.activities.executors.base import StepContext, StepOutcome, parse_inputs
from opsconductor.safety.secrets import SecretError, SecretResolver
from opsconductor.schema.assets import Asset, DatabaseTarget
from opsconductor.schema.enums import ActionClass
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.tools import SqlInputs

_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock


def jsonable(value: Any) -> Any:
    """A PostgreSQL value as something json.dumps accepts without losing meaning."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(
            value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address
                  | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, asyncpg.Record):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


async def _connect(db: DatabaseTarget, timeout: float,
                   secrets: SecretResolver | None = None) -> asyncpg.Connection:
    resolved, _ = await resolve_secret_refs(db.model_dump(exclude_none=True), secrets)
    settings = {"application_name": "opsconductor-execution",
                "statement_timeout": str(max(1, int(timeout * 1000)))}
    kw: dict[str, Any] = {"timeout": min(db.connect_timeout, timeout),
                          "server_settings": settings}
    if resolved.get("dsn"):
        if resolved.get("password"):
            kw["password"] = resolved["password"]
        conn = await asyncpg.connect(str(resolved["dsn"]), **kw)
    else:
        conn = await asyncpg.connect(host=db.host or "localhost", port=db.port,
                                     database=db.dbname, user=db.user,
                                     password=resolved.get("password"),
                                     ssl=db.sslmode, **kw)
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads,
                                  schema="pg_catalog")
    return conn


_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "char", "citext", "unknown"})
_INT_TYPES = frozenset({"int2", "int4", "int8", "oid"})
_TRUE = frozenset({"t", "true", "yes", "y", "on", "1"})
_FALSE = frozenset({"f", "false", "no", "n", "off", "0"})


class ParamError(ValueError):
    """A parameter value that is not of the type its position in the query takes."""


def _coerce(value: Any, type_name: str) -> Any:
    """One parameter as the Python value asyncpg's codec for `type_name` takes."""
    if value is None or isinstance(value, list | dict):
        return value if type_name not in _TEXT_TYPES or value is None else json.dumps(value)
    text = value if isinstance(value, str) else str(value).lower() if isinstance(
        value, bool) else str(value)
    if type_name in _TEXT_TYPES:
        return text
    if type_name in _INT_TYPES:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if re.fullmatch(r"\s*[+-]?\d{1,19}\s*", text):
            return int(text)
    elif type_name == "numeric":
        with contextlib.suppress(decimal.InvalidOperation):
            return decimal.Decimal(text.strip())
    elif type_name in ("float4", "float8"):
        with contextlib.suppress(ValueError):
            return float(text)
    elif type_name == "bool":
        if isinstance(value, bool):
            return value
        if text.strip().lower() in _TRUE | _FALSE:
            return text.strip().lower() in _TRUE
    elif type_name == "uuid":
        with contextlib.suppress(ValueError):
            return uuid.UUID(text.strip())
    elif type_name in ("date", "timestamp", "timestamptz", "time"):
        parse = {"date": dt.date.fromisoformat, "time": dt.time.fromisoformat}.get(
            type_name, dt.datetime.fromisoformat)
        if not isinstance(value, str):
            return value
        with contextlib.suppress(ValueError):
            return parse(text.strip())
    else:
        return value  # a type of its own codec (inet, arrays, ...): as written
    raise ParamError(f"not a valid {type_name}: {text[:60]!r}")


def bind_params(stmt: Any, params: list[Any]) -> list[Any]:
    """The parameters converted to the types the prepared statement declares."""
    types = stmt.get_parameters()
    if len(types) != len(params):
        raise ParamError(f"the query takes {len(types)} parameter(s), {len(params)} given")
    out = []
    for n, (typ, value) in enumerate(zip(types, params, strict=True), start=1):
        try:
            out.append(_coerce(value, typ.name))
        except ParamError as err:
            raise ParamError(f"parameter ${n}: {err}") from None
    return out


def _affected(tag: str) -> int | None:
    m = re.search(r"(\d+)\s*$", tag or "")
    return int(m.group(1)) if m else None


class SqlExecutor:
    async def run(self, ctx: StepContext) -> StepOutcome:
        inputs = parse_inputs(SqlInputs, ctx)
        if isinstance(inputs, StepOutcome):
            return inputs
        asset = ctx.asset
        if not isinstance(asset, Asset) or asset.database is None:
            name = getattr(asset, "id", None) or "the worker's own machine"
            return StepOutcome(ok=False, error=f"sql_query needs a target asset with a `database` "
                               f"section; {name} has none", error_type=ErrorType.INVALID_STEP,
                               retryable=False)
        timeout = min(inputs.timeout_seconds or ctx.timeout, ctx.timeout)
        read_only = ctx.step.action_class is ActionClass.READ
        try:
            conn = await _connect(asset.database, timeout, ctx.secrets)
        except SecretError as err:
            kind, retryable = secret_failure(err)
            return StepOutcome(ok=False, error=f"database credentials of {asset.id!r}: {err}",
                               error_type=kind, retryable=retryable)
        except asyncpg.InvalidPasswordError:
            return StepOutcome(ok=False, error=f"database login to {asset.id!r} refused",
                               error_type=ErrorType.AUTHENTICATION_FAILED, retryable=False)
        except (OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as err:
            return StepOutcome(ok=False, error=f"cannot connect to the database of {asset.id!r}: "
                               f"{type(err).__name__}: {err}",
                               error_type=ErrorType.DATABASE_UNAVAILABLE, retryable=True)
        try:
            ctx.heartbeat({"database": asset.id, "read_only": read_only})
            output = await asyncio.wait_for(
                self._execute(conn, inputs, read_only), timeout + 5)
        except ParamError as err:
            return StepOutcome(ok=False, error=f"SQL parameters: {err}",
                               error_type=ErrorType.INVALID_STEP, retryable=False)
        except asyncpg.QueryCanceledError as err:
            return StepOutcome(ok=False, error=f"query cancelled by statement_timeout "
                               f"({timeout:g}s): {err}", error_type=ErrorType.STEP_TIMEOUT,
                               retryable=ctx.step.idempotent)
        except asyncpg.ReadOnlySQLTransactionError as err:
            return StepOutcome(ok=False, error=f"refused in a read-only transaction (the step is "
                               f"classed as read): {err}", error_type=ErrorType.READ_ONLY_VIOLATION,
                               retryable=False)
        except asyncpg.PostgresError as err:
            state = getattr(err, "sqlstate", None)
            return StepOutcome(ok=False, error=f"SQL error {state}: {err}",
                               error_type=ErrorType.SQL_ERROR,
                               retryable=state in _RETRYABLE_SQLSTATES)
        except (OSError, asyncpg.InterfaceError, TimeoutError) as err:
            return StepOutcome(ok=False, error=f"database connection failed during the query: "
                               f"{type(err).__name__}: {err}; outcome unknown",
                               error_type=ErrorType.DATABASE_UNAVAILABLE,
                               retryable=read_only or ctx.step.idempotent)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            if not conn.is_closed():
                conn.terminate()
        output["read_only"] = read_only
        return StepOutcome(ok=True, output=output,
                           stdout=f"{output['command']}: {output['row_count']} row(s)"
                                  + (" (truncated)" if output["truncated"] else ""))

    @staticmethod
    async def _execute(conn: asyncpg.Connection, inputs: SqlInputs,
                       read_only: bool) -> dict[str, Any]:
        limit = inputs.row_limit
        try:  # prepared outside the transaction: a failed prepare must not abort it
            stmt = await conn.prepare(inputs.query)
        except asyncpg.PostgresError as err:
            if inputs.params or "multiple commands" not in str(err):
                raise
            stmt = None  # a script of several statements: simple protocol, no rows
        async with conn.transaction(readonly=read_only):
            if stmt is None:
                tag = await conn.execute(inputs.query)
                return {"rows": [], "row_count": _affected(tag) or 0, "truncated": False,
                        "columns": [], "command": tag.split(" ")[0] if tag else ""}
            params = bind_params(stmt, inputs.params)
            columns = [a.name for a in stmt.get_attributes()]
            if not columns:
                await stmt.fetch(*params)
                tag = stmt.get_statusmsg()
                return {"rows": [], "row_count": _affected(tag) or 0, "truncated": False,
                        "columns": [], "command": tag.split(" ")[0] if tag else ""}
            cursor = await stmt.cursor(*params)
            records = await cursor.fetch(limit + 1)
            truncated = len(records) > limit
            records = records[:limit]
            rows = [{k: jsonable(v) for k, v in r.items()} for r in records]
            return {"rows": rows, "row_count": len(rows), "truncated": truncated,
                    "columns": columns, "command": inputs.query.split(None, 1)[0].upper()}
