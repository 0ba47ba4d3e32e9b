"""OpsConductor's Stage E, as a drop-in: its class, its request and response, its call.

OpsConductor's orchestrator runs `await StageEExecutor().execute(ExecutionRequest(plan=...,
context=...), tenant_id, actor_id)` and reads the response's `status` (its `ExecutionStatus`
values), `step_results` (or `result["step_results"]`), `error_message` and the progress
counters. The same call here submits through `ExecutionClient` — validation, RBAC, the
idempotency claim, locks, approvals and signatures all apply — waits to the end in immediate
mode, and returns at once in background mode or when the run waits for an approval.
docs/stage-e.md has the two-line change in OpsConductor's orchestrator.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, Field
from temporalio.client import WorkflowFailureError

from opsconductor.activities.outputs import read_streams
from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.enums import TERMINAL_STATUSES, ExecutionMode, ExecutionStatus, SlaClass
from opsconductor.schema.messages import ExecutionResult, StepResult
from opsconductor.schema.search_attributes import SLA_CLASS
from opsconductor.schema.validation import Problem, RequestValidationError
from opsconductor.starter.client import ExecutionClient, SubmissionRefused

__all__ = ["ExecutionMode", "ExecutionRequest", "ExecutionResponse", "ExecutionStatus",
           "SlaClass", "StageEExecutor"]

# OpsConductor shows at most this much of a step's stdout; we send no more.
STDOUT_CHARS = 100_000
# How long a call whose plan has approval gates waits for its run to reach one.
GATE_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.2
# Context values kept with the execution (its metadata's `upstream.context`).
CONTEXT_KEYS = ("tenant_id", "actor_id", "session_id", "trace_id",
                "request_id", "conversation_id", "user_id", "environment")


class ExecutionRequest(BaseModel):
    """OpsConductor's request (`execution/dtos.py`), plus the `context` its orchestrator
    passes (its own model drops it)."""

    plan: dict[str, Any]
    approval_level: int = Field(default=0, ge=0, le=3)
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    trace_id: uuid.UUID | None = None
    parent_execution_id: uuid.UUID | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class ExecutionResponse(BaseModel):
    """OpsConductor's response, field for field; `status` values are its enum's."""

    execution_id: uuid.UUID
    status: ExecutionStatus
    execution_mode: ExecutionMode
    sla_class: SlaClass
    approval_level: int
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    timeout_at: datetime | None = None
    total_steps: int
    completed_steps: int
    failed_steps: int
    progress_percentage: float
    result: dict[str, Any] | None = None
    step_results: list[dict[str, Any]] | None = None
    error_message: str | None = None
    trace_id: uuid.UUID | None = None
    tags: list[str] = Field(default_factory=list)


class StageEExecutor:
    """OpsConductor's entry point over our client. `db_connection_string` replaces the
    database of our `Settings` when given; `redis_url` is accepted and unused (Temporal is the
    queue). Temporal and PostgreSQL are found through `Settings` (OPSC_* / stack.json),
    connected on the first call and reused."""

    def __init__(self, db_connection_string: str | None = None, redis_url: str | None = None,
                 *, settings: Settings | None = None) -> None:
        self.db_connection_string = db_connection_string
        self.redis_url = redis_url
        self._settings = settings
        self._client: ExecutionClient | None = None
        self._connecting = asyncio.Lock()

    async def client(self) -> ExecutionClient:
        async with self._connecting:
            if self._client is None:
                settings = self._settings or load_settings()
                if self.db_connection_string:
                    settings = settings.model_copy(
                        update={"database_url": self.db_connection_string})
                self._settings = settings
                self._client = await ExecutionClient.connect(settings)
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def execute(self, request: ExecutionRequest, tenant_id: str,
                      actor_id: int) -> ExecutionResponse:
        client = await self.client()
        trace_id = request.trace_id or _uuid_or_none(request.context.get("trace_id")) \
            or uuid.uuid4()
        try:
            actor = await actor_for(client.pool, actor_id)
            envelope = self._envelope(request, tenant_id, actor, actor_id, trace_id,
                                      client.settings)
            submitted = await client.execute(envelope, wait=False)
        except RequestValidationError as err:
            return refused(request, trace_id, "plan refused: " + "; ".join(
                f"{p.path}: {p.message}" for p in err.problems), err.problems)
        except SubmissionRefused as err:
            return refused(request, trace_id, f"execution refused: {err}", [])
        await self._wait(client, submitted.workflow_id, submitted.execution_id,
                         submitted.mode, gated=_gated(request))
        if not await _mirrored(client.pool, submitted.execution_id):
            return await queued(client, submitted.workflow_id, submitted.execution_id,
                                submitted.mode, request, trace_id)
        return await response_for(client, submitted.execution_id)

    def _envelope(self, request: ExecutionRequest, tenant_id: str, actor: str, actor_id: int,
                  trace_id: uuid.UUID, settings: Settings) -> dict[str, Any]:
        context = {k: v for k, v in request.context.items()
                   if k in CONTEXT_KEYS and isinstance(v, str | int | float | bool)}
        upstream = {"actor_id": actor_id, "context": context}
        if request.parent_execution_id is not None:
            upstream["parent_execution_id"] = str(request.parent_execution_id)
        environment = request.context.get("environment")
        if environment not in ("dev", "staging", "prod"):
            environment = settings.stage_e_environment
        envelope: dict[str, Any] = {
            "tenant": tenant_id, "actor": actor, "environment": environment,
            "approval_level": request.approval_level, "tags": request.tags,
            "metadata": {**request.metadata, "upstream": upstream},
            "trace_id": trace_id.hex, "plan": request.plan}
        key = request.context.get("idempotency_key")
        if isinstance(key, str) and key:
            envelope["idempotency_key"] = key
        return envelope

    async def _wait(self, client: ExecutionClient, workflow_id: str, execution_id: str,
                    mode: ExecutionMode, *, gated: bool) -> None:
        """Immediate: until the run ends or waits for an approval. Background: at once, or,
        when the plan has gates, until the run waits at one or ends (at most
        GATE_WAIT_SECONDS; then the status it has)."""
        if mode is ExecutionMode.BACKGROUND and not gated:
            return
        handle = client.temporal.get_workflow_handle(workflow_id, result_type=ExecutionResult)
        ended = asyncio.ensure_future(handle.result())
        loop = asyncio.get_running_loop()
        until = loop.time() + GATE_WAIT_SECONDS
        try:
            while True:
                done, _ = await asyncio.wait({ended}, timeout=POLL_SECONDS)
                if done:
                    return
                status = await _status(client.pool, execution_id)
                if status is ExecutionStatus.PENDING_APPROVAL:
                    return
                if mode is ExecutionMode.BACKGROUND and loop.time() > until:
                    return
        finally:
            if not ended.done():
                ended.cancel()
            else:
                try:
                    ended.result()
                except (WorkflowFailureError, asyncio.CancelledError):
                    pass  # failed, timed-out and cancelled runs: the mirror has the result


async def actor_for(pool: asyncpg.Pool, actor_id: Any) -> str:
    """Our principal for OpsConductor's integer actor: its name in
    `execution.actor_principals`, else `principal:<id>` (which the mirror records under that
    id when the run's first row is written). Operators map their users beforehand."""
    if isinstance(actor_id, str) and actor_id.isdigit():
        actor_id = int(actor_id)  # as its pydantic models read it
    if isinstance(actor_id, bool) or not isinstance(actor_id, int) or actor_id < 0:
        raise RequestValidationError([Problem(path="actor_id", message=(
            f"OpsConductor's actor id is a non-negative integer, not {actor_id!r}"))])
    name = await pool.fetchval(
        "SELECT actor FROM execution.actor_principals WHERE actor_id = $1", actor_id)
    return str(name) if name is not None else f"principal:{actor_id}"


async def _mirrored(pool: asyncpg.Pool, execution_id: str) -> bool:
    return bool(await pool.fetchval(
        "SELECT 1 FROM execution.executions WHERE execution_id = $1", uuid.UUID(execution_id)))


async def queued(client: ExecutionClient, workflow_id: str, execution_id: str,
                 mode: ExecutionMode, request: ExecutionRequest,
                 trace_id: uuid.UUID) -> ExecutionResponse:
    """The response for a run no worker has picked up yet: started, queued, nothing run
    (its SLA class from the workflow's search attributes)."""
    desc = await client.temporal.get_workflow_handle(workflow_id).describe()
    sla = desc.typed_search_attributes.get(SLA_CLASS)
    return ExecutionResponse(
        execution_id=uuid.UUID(execution_id), status=ExecutionStatus.QUEUED,
        execution_mode=mode, sla_class=SlaClass(sla) if sla else SlaClass.FAST,
        approval_level=request.approval_level, created_at=desc.start_time or datetime.now(UTC),
        total_steps=len(_plan_steps(request.plan)), completed_steps=0, failed_steps=0,
        progress_percentage=0.0, trace_id=trace_id, tags=request.tags)


def _gated(request: ExecutionRequest) -> bool:
    meta = request.plan.get("execution_metadata")
    points = meta.get("approval_points") if isinstance(meta, dict) else None
    return request.approval_level > 0 or bool(points)


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


async def _status(pool: asyncpg.Pool, execution_id: str) -> ExecutionStatus:
    status = await pool.fetchval(
        "SELECT status::text FROM execution.executions WHERE execution_id = $1",
        uuid.UUID(execution_id))
    return ExecutionStatus(status) if status else ExecutionStatus.QUEUED


def _plan_steps(plan: dict[str, Any]) -> list[Any]:
    inner = plan.get("plan", plan)
    steps = inner.get("steps") if isinstance(inner, dict) else None
    return steps if isinstance(steps, list) else []


def refused(request: ExecutionRequest, trace_id: uuid.UUID, message: str,
            problems: list[Problem]) -> ExecutionResponse:
    """OpsConductor's shape of a failed execution for a request that started nothing: a
    fresh id no run carries, no steps run."""
    total = len(_plan_steps(request.plan))
    return ExecutionResponse(
        execution_id=uuid.uuid4(), status=ExecutionStatus.FAILED,
        execution_mode=ExecutionMode.IMMEDIATE, sla_class=SlaClass.FAST,
        approval_level=request.approval_level, created_at=datetime.now(UTC),
        completed_at=datetime.now(UTC), total_steps=total, completed_steps=0, failed_steps=0,
        progress_percentage=0.0, error_message=message, trace_id=trace_id, tags=request.tags,
        result={"total_steps": total, "successful_steps": 0, "failed_steps": 0,
                "step_results": [], "started": False,
                "problems": [p.model_dump() for p in problems]},
        step_results=[])


# Steps OpsConductor sends to its Asset Service, whose results carry no stdout.
ASSET_TOOLS = frozenset({"asset-query", "asset-list", "asset-create", "asset-update",
                         "asset-delete"})
FINISHED = ("completed", "failed", "timeout", "cancelled", "skipped")


async def response_for(client: ExecutionClient, execution_id: str) -> ExecutionResponse:
    """The response from the mirror (and the run's result once it has ended)."""
    pool = client.pool
    row = await pool.fetchrow(
        "SELECT status::text AS status, mode::text AS mode, sla_class::text AS sla_class,"
        " approval_level, created_at, started_at, completed_at, deadline_at, error, trace_id,"
        " tags FROM execution.executions WHERE execution_id = $1", uuid.UUID(execution_id))
    status = ExecutionStatus(row["status"])
    steps = await pool.fetch(
        "SELECT step_id, position, tool, target, status, attempts, started_at, completed_at,"
        " duration_ms, exit_code, output, error FROM execution.step_runs"
        " WHERE execution_id = $1 ORDER BY position", uuid.UUID(execution_id))
    result: ExecutionResult | None = None
    if status in TERMINAL_STATUSES:
        result = await client.result(execution_id)
    items = await step_results(pool, execution_id, steps, result)
    finished = sum(1 for s in steps if s["status"] in FINISHED)
    failed = sum(1 for s in steps if s["status"] in ("failed", "timeout"))
    total = len(steps)
    error = (result.error if result else None) or row["error"]
    if error is None and status in (ExecutionStatus.FAILED, ExecutionStatus.TIMEOUT,
                                    ExecutionStatus.PARTIAL):
        error = "; ".join(f"step {i['step_id']} {i['status']}: {i.get('error') or ''}"
                          for i in items if i["status"] in ("failed", "timeout")) or None
    summary: dict[str, Any] | None = None
    if result is not None:
        summary = {**result.model_dump(mode="json"), "total_steps": total,
                   "successful_steps": sum(1 for i in items if i["status"] == "completed"),
                   "failed_steps": failed, "step_results": items}
    return ExecutionResponse(
        execution_id=uuid.UUID(execution_id), status=status,
        execution_mode=ExecutionMode(row["mode"]), sla_class=SlaClass(row["sla_class"]),
        approval_level=row["approval_level"], created_at=row["created_at"],
        started_at=row["started_at"], completed_at=row["completed_at"],
        timeout_at=row["deadline_at"], total_steps=total, completed_steps=finished,
        failed_steps=failed, progress_percentage=(finished / total * 100) if total else 0.0,
        result=summary, step_results=items if result is not None else None,
        error_message=error, trace_id=_uuid_or_none(row["trace_id"]), tags=list(row["tags"]))


async def step_results(pool: asyncpg.Pool, execution_id: str, steps: list[Any],
                       result: ExecutionResult | None) -> list[dict[str, Any]]:
    """One item per step in plan order, with the fields OpsConductor's summary reads:
    `status`, `stdout` (the stored stream, up to STDOUT_CHARS), `stderr`, `output`,
    `exit_code`, timings."""
    ran: dict[str, StepResult] = {s.step_id: s for s in (result.steps if result else [])}
    streams = {(r.step_id, r.stream): r for r in await read_streams(pool, execution_id)}
    items = []
    for s in steps:
        sid = s["step_id"]
        mine = ran.get(sid)
        item: dict[str, Any] = {
            "step_index": s["position"], "step_id": sid, "tool": s["tool"],
            "target": s["target"], "status": s["status"], "attempts": s["attempts"],
            "exit_code": s["exit_code"], "error": s["error"],
            "started_at": _iso(s["started_at"]), "completed_at": _iso(s["completed_at"]),
            "duration_ms": s["duration_ms"]}
        for name in ("stdout", "stderr"):
            stored = streams.get((sid, name))
            text = (stored.data.decode("utf-8", "replace") if stored is not None
                    else getattr(mine, name, "") if mine else "")
            item[name] = text[:STDOUT_CHARS]
        item["output"] = _output(streams.get((sid, "output")), s["output"], mine)
        if s["tool"] in ASSET_TOOLS:
            item["stdout"] = ""  # as OpsConductor's Asset Service answers: the output alone
        items.append(item)
    return items


def _output(stored: Any, column: Any, mine: StepResult | None) -> Any:
    value: Any = None
    if stored is not None:
        value = json.loads(stored.data.decode("utf-8", "replace"))
    elif mine is not None and mine.output is not None:
        value = mine.output
    elif column is not None:
        value = json.loads(column) if isinstance(column, str) else column
    if isinstance(value, dict) and isinstance(value.get("result"), dict) \
            and "assets" in value["result"]:
        value = value["result"]  # wrapped when success criteria ran
    if isinstance(value, dict) and isinstance(value.get("assets"), list) and "count" not in value:
        value = {**value, "count": len(value["assets"])}
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
