"""What every test module shares: bounded waits, request builders and mirror reads.

Waits never sleep as proof: `wait_for` awaits a positive condition, `assert_eventually` retries
an assertion, both give up after `timeout` seconds with a message naming what was awaited and
the last value seen. Test modules import from here (or from a conftest), never from each other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"


# ---------------------------------------------------------------------------- waiting

async def _call(fn: Callable[[], Awaitable[T] | T]) -> T:
    value = fn()
    if inspect.isawaitable(value):
        return await value  # type: ignore[no-any-return]
    return value


async def wait_for(fn: Callable[[], Awaitable[T | None] | T | None], *, what: str,
                   timeout: float = 30, interval: float = 0.05) -> T:
    """Await `fn()` (sync or async) until it returns something truthy, and return it.

    Fails after `timeout` s with `what` (what was awaited) and the last value returned."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        last = await _call(fn)
        if last:
            return last
        if loop.time() > end:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


async def assert_eventually(fn: Callable[[], Awaitable[T] | T], *, what: str = "assertion",
                            timeout: float = 30, interval: float = 0.05) -> T:
    """Run `fn()` until it stops raising AssertionError; return its value.

    After `timeout` s the last AssertionError is raised again, prefixed with `what`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            return await _call(fn)
        except AssertionError as err:
            if loop.time() > end:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what}: {err}") from err
        await asyncio.sleep(interval)


def wait_for_sync(fn: Callable[[], T | None], *, what: str, timeout: float = 30,
                  interval: float = 0.05) -> T:
    """`wait_for` for synchronous fixtures (a server starting before any event loop runs)."""
    end = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > end:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def file_exists(path: Path) -> Callable[[], bool]:
    """A condition for `wait_for`: `path` exists."""
    return path.exists


def pids_in(path: Path, count: int) -> Callable[[], list[int] | None]:
    """A condition for `wait_for`: `path` lists at least `count` pids (returns them)."""
    def read() -> list[int] | None:
        words = path.read_text().split() if path.exists() else []
        return [int(w) for w in words] if len(words) >= count else None
    return read


def unique_queue(prefix: str = "opsc-test") -> str:
    """A task queue of its own, so no other test's worker or workflow can interfere."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------- inventory

@contextlib.contextmanager
def inventory_in_use(engine: Any, path: Path, assets: list[dict[str, Any]]) -> Iterator[Path]:
    """Write `assets` to the inventory at `path` and point both the submitting client
    (`OPSC_INVENTORY`) and the session's worker (its settings) at it, until the block ends."""
    import yaml

    path.write_text(yaml.safe_dump({"assets": assets}))
    old = os.environ.get("OPSC_INVENTORY")
    os.environ["OPSC_INVENTORY"] = str(path)
    old_worker, engine.settings.inventory = engine.settings.inventory, path
    try:
        yield path
    finally:
        engine.settings.inventory = old_worker
        if old is None:
            os.environ.pop("OPSC_INVENTORY", None)
        else:
            os.environ["OPSC_INVENTORY"] = old


# ---------------------------------------------------------------------------- requests

def step(sid: str, tool: str = "noop", deps: list[str] | None = None, **inputs: Any) -> dict:
    """One plan step; `failure_handling`, `estimated_duration` and `description` go on the
    step, every other keyword into its inputs."""
    extra = {k: inputs.pop(k) for k in ("failure_handling", "estimated_duration",
                                        "description") if k in inputs}
    return {"id": sid, "tool": tool, "inputs": inputs, "depends_on": deps or [],
            "description": extra.pop("description", f"step {sid}"), **extra}


def shell(sid: str, command: str, deps: list[str] | None = None, **kw: Any) -> dict:
    """A `shell` step running `command`."""
    return step(sid, "shell", deps, command=command, **kw)


def request(steps: list[dict], *, tenant: str = "acme", actor: str = "alice",
            environment: str = "dev", unique: bool = True, **envelope: Any) -> dict:
    """A request envelope; `unique` puts a nonce in the plan so each call is a new execution."""
    plan_extra = envelope.pop("plan_extra", {})
    execution_metadata = {"nonce": uuid.uuid4().hex} if unique else {}
    return {"tenant": tenant, "actor": actor, "environment": environment,
            "plan": {"plan": {"steps": steps, **plan_extra},
                     "execution_metadata": execution_metadata}, **envelope}


# ---------------------------------------------------------------------------- progress

def pending(progress: Any) -> bool:
    """The execution waits for an approval decision."""
    return bool(progress.status.value == "pending_approval")


async def until(engine: Any, ident: str, pred: Callable[[Any], bool], *,
                timeout: float = 20) -> Any:
    """Await the `progress` query until `pred(progress)` holds; return that progress."""
    async def check() -> Any:
        progress = await engine.progress(ident)
        return progress if progress is not None and pred(progress) else None

    return await wait_for(check, timeout=timeout,
                          what=f"the progress of {ident} to satisfy {pred.__name__}")


async def wait_status(engine: Any, ident: str, want: str, *, timeout: float = 30) -> Any:
    """Await the status view of a closed execution whose status is `want`."""
    async def check() -> Any:
        view = await engine.status(ident)
        done = view["status"] == want and view["temporal_status"] != "RUNNING"
        return view if done else None

    return await wait_for(check, timeout=timeout, what=f"{ident} to close as {want}")


# ---------------------------------------------------------------------------- mirror rows

async def events(pool: Any, execution_id: str) -> list[Any]:
    """The execution's events in order."""
    return list(await pool.fetch(
        "SELECT * FROM execution.event_log WHERE execution_id = $1 ORDER BY id",
        uuid.UUID(execution_id)))


async def step_rows(pool: Any, execution_id: str) -> dict[str, Any]:
    """The execution's step rows by step id."""
    rows = await pool.fetch(
        "SELECT * FROM execution.step_runs WHERE execution_id = $1 ORDER BY position",
        uuid.UUID(execution_id))
    return {r["step_id"]: r for r in rows}


async def execution_row(pool: Any, execution_id: str) -> Any:
    """The execution's row, its status as text in `st`."""
    return await pool.fetchrow(
        "SELECT *, status::text AS st FROM execution.executions WHERE execution_id = $1",
        uuid.UUID(execution_id))


async def approval_rows(pool: Any, execution_id: str) -> list[Any]:
    """The execution's approval rows in order, their state as text in `st`."""
    return list(await pool.fetch(
        "SELECT *, state::text AS st FROM execution.approvals WHERE execution_id = $1 "
        "ORDER BY id", uuid.UUID(execution_id)))


async def lock_waiting(pool: Any, tenant: str, execution_id: str) -> bool:
    """The execution is visibly queued for a lease (a row in `execution_lock_waiters`)."""
    return bool(await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM execution.execution_lock_waiters "
        "WHERE tenant = $1 AND execution_id = $2)", tenant, execution_id))


async def lease_expired(pool: Any, tenant: str, asset: str, execution_id: str) -> bool:
    """The execution's lease on `asset` has passed its `expires_at` by the database's clock
    (the clock every fencing check uses)."""
    return bool(await pool.fetchval(
        "SELECT expires_at <= clock_timestamp() FROM execution.execution_locks "
        "WHERE tenant = $1 AND asset = $2 AND execution_id = $3",
        tenant, asset, execution_id))


async def assert_ended(engine: Any, execution_id: str, *, status: str, steps: dict[str, str],
                       event_types: tuple[str, ...] = ()) -> Any:
    """The execution ended as `status`, with `steps` (id -> status) in both its result and
    the mirror, and its events include every one of `event_types`; returns the result."""
    result = await engine.result(execution_id)
    assert result.status.value == status, result
    assert {s.step_id: s.status.value for s in result.steps} == steps, result.steps
    row = await execution_row(engine.pool, execution_id)
    assert row is not None and row["st"] == status, row
    mirrored = await step_rows(engine.pool, execution_id)
    assert {sid: r["status"] for sid, r in mirrored.items()} == steps
    kinds = [e["event_type"] for e in await events(engine.pool, execution_id)]
    missing = [k for k in event_types if k not in kinds]
    assert not missing, f"events {missing} not among {kinds}"
    return result


# ---------------------------------------------------------------------------- servers

@contextlib.asynccontextmanager
async def serving(app: Any, *, lifespan: str = "off") -> AsyncIterator[str]:
    """Serve an ASGI app over real HTTP (uvicorn on a free loopback port) while the block
    runs; yields its base URL."""
    from opsconductor.starter.asgi_server import serve_in_background

    server = await serve_in_background(app, lifespan=lifespan)
    try:
        yield server.url
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def policy_worker(temporal_client: Any, pool: Any, policy_file: Path, *, home: Path,
                        queue_prefix: str) -> AsyncIterator[Any]:
    """A worker on its own task queue and a client, both reading the RBAC policy at
    `policy_file` (the submission check reads OPSC_RBAC_POLICY, pointed at it meanwhile);
    yields the `ExecutionClient`."""
    import pytest

    from opsconductor.schema.config import Settings
    from opsconductor.starter.client import ExecutionClient
    from opsconductor.starter.worker import build_worker

    queue = unique_queue(queue_prefix)
    settings = Settings(home=home, task_queue=queue, temporal_address="unused",
                        database_url="unused", rbac_policy=policy_file)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPSC_RBAC_POLICY", str(policy_file))
        async with build_worker(temporal_client, queue, pool=pool, settings=settings):
            yield ExecutionClient(temporal=temporal_client, pool=pool, settings=settings)


# ---------------------------------------------------------------------------- payloads

def payload_as_json(payload: Any) -> dict[str, Any]:
    """A Temporal payload as the codec protocol (protobuf JSON) writes it."""
    import base64

    return {"metadata": {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()},
            "data": base64.b64encode(payload.data).decode()}


def payload_from_json(doc: dict[str, Any]) -> Any:
    import base64

    from temporalio.api.common.v1 import Payload

    return Payload(metadata={k: base64.b64decode(v) for k, v in doc["metadata"].items()},
                   data=base64.b64decode(doc.get("data", "")))


def decoded_payloads(node: Any) -> str:
    """History JSON carries payloads base64-encoded: decode every one to search it."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "data" and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    out.append(base64.b64decode(value).decode("utf-8", "replace"))
            else:
                out.append(decoded_payloads(value))
    elif isinstance(node, list):
        out += [decoded_payloads(v) for v in node]
    return "\n".join(out)
