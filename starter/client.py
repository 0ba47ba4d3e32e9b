"""The client library Stage D calls: submit, inspect and steer executions.

`execute()` validates everything before it writes or starts anything, so a rejected request
leaves no trace; an accepted one is claimed in Postgres (the idempotency window) and started
as one Temporal workflow whose id derives from tenant + idempotency key.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from opsconductor.activities import db
from opsconductor.activities.assets import resolve_targets
from opsconductor.activities.mirror import write_events
from opsconductor.safety import idempotency, rbac
from opsconductor.schema import search_attributes as sa
from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.enums import ExecutionMode, ExecutionStatus
from opsconductor.schema.messages import DecisionOutcome, EventRecord, ExecutionResult, Progress
from opsconductor.schema.request import ExecutionRequest
from opsconductor.schema.spec import ExecutionSpec, build_spec
from opsconductor.schema.validation import Problem, RequestValidationError, validate_request
from opsconductor.starter.worker import connect
from opsconductor.workflows.execution import ExecutionWorkflow


class SubmissionRefused(RuntimeError):
    """The request is valid but may not run (RBAC) — nothing was started."""


class DuplicateKeyConflict(SubmissionRefused):
    """The caller's idempotency key already names a different request — nothing was started."""


class ExecutionNotFound(LookupError):
    pass


DEFAULT_UPDATE_WAIT_SECONDS = 30.0


class SignalledDecision(DecisionOutcome):
    """No worker answered the Update: the decision went out as the signal, delivered but not
    yet judged (the workflow may still refuse it when a worker runs)."""

    via_signal: bool = True


class ExecutionResponse(BaseModel):
    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    mode: ExecutionMode
    duplicate: bool = False
    previous_execution_id: str | None = None
    result: ExecutionResult | None = None


@dataclass
class ExecutionClient:
    temporal: Client
    pool: asyncpg.Pool
    settings: Settings
    # How long a decision waits for a worker to answer its Update before it is sent as the
    # plain signal instead (which needs no worker).
    update_wait_seconds: float = DEFAULT_UPDATE_WAIT_SECONDS

    @classmethod
    async def connect(cls, settings: Settings | None = None, *,
                      update_wait_seconds: float = DEFAULT_UPDATE_WAIT_SECONDS
                      ) -> ExecutionClient:
        settings = settings or load_settings()
        if not settings.database_url:
            raise db.DatabaseUnavailable("no database configured: set OPSC_DATABASE_URL or "
                                         "start `opsconductor dev`")
        pool = await db.create_pool(settings.database_url, min_size=1, max_size=10)
        try:
            temporal = await connect(settings)
        except Exception:
            await pool.close()
            raise
        return cls(temporal=temporal, pool=pool, settings=settings,
                   update_wait_seconds=update_wait_seconds)

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> ExecutionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ submit

    async def prepare(self, raw: Any) -> tuple[ExecutionRequest, dict[str, str | None]]:
        """Every check that needs no write: structure, tools, inputs, assets. Returns the
        request and each target's asset id (None for this machine)."""
        request = validate_request(raw)
        targets = sorted({t for s in request.steps
                          if isinstance(t := s.target, str) and t})
        asset_ids, unknown = await resolve_targets(targets)
        if unknown:
            raise RequestValidationError([
                Problem(path=f"plan.plan.steps[{i}].inputs.target",
                        message=f"unknown asset {s.target!r}")
                for i, s in enumerate(request.steps) if s.target in unknown])
        return request, asset_ids

    async def _authorize_submission(self, request: ExecutionRequest,
                                    asset_ids: dict[str, str | None]) -> None:
        """Every step's permission, decided and audited before anything is written."""
        policy = await rbac.load_policy(self.pool)
        entries = []
        for step in request.steps:
            given = step.target
            target = (asset_ids.get(given) if given else None) or "localhost"
            decision = policy.evaluate(tenant=request.tenant, actor=request.actor,
                                       resource=target, tool=step.tool, action="execute",
                                       environment=request.environment.value)
            entries.append(rbac.AuditEntry(decision, request.tenant, request.actor, "execute",
                                           request.environment.value, target, step.tool,
                                           step_id=step.id))
        await rbac.audit_many(self.pool, entries)
        denied = next((e for e in entries if not e.decision.allowed), None)
        if denied is not None:
            raise SubmissionRefused(
                f"denied: {request.actor} may not execute {denied.tool} on {denied.resource} "
                f"in {request.environment.value} (step {denied.step_id}): "
                f"{denied.decision.reason}")

    async def execute(self, raw: Any, *, wait: bool | None = None) -> ExecutionResponse:
        request, asset_ids = await self.prepare(raw)
        await self._authorize_submission(request, asset_ids)
        fingerprint = idempotency.request_fingerprint(
            request.model_dump(mode="json", by_alias=True, exclude_none=True))
        key = (idempotency.caller_key(request.tenant, request.idempotency_key)
               if request.idempotency_key else fingerprint)
        try:
            claim = await idempotency.claim(self.pool, request.tenant, key,
                                            self.settings.idempotency_window_seconds,
                                            actor=request.actor, fingerprint=fingerprint,
                                            supplied_key=request.idempotency_key)
        except idempotency.IdempotencyConflict as err:
            raise DuplicateKeyConflict(str(err)) from None
        spec = build_spec(request, execution_id=claim.execution_id,
                          workflow_id=claim.workflow_id, idempotency_key=key,
                          previous_execution_id=claim.previous_execution_id,
                          asset_ids=asset_ids,
                          submitted_at=claim.created_at or datetime.now(UTC))
        handle = await self._ensure_started(spec)
        response = ExecutionResponse(
            execution_id=spec.execution_id, workflow_id=spec.workflow_id,
            status=ExecutionStatus.QUEUED, mode=spec.mode, duplicate=not claim.is_new,
            previous_execution_id=spec.previous_execution_id)
        should_wait = (spec.mode is ExecutionMode.IMMEDIATE) if wait is None else wait
        if should_wait:
            response.result = await self._wait_result(handle)
            response.status = response.result.status
        elif not claim.is_new:
            response.status = await self._current_status(spec.execution_id, handle)
        return response

    async def _ensure_started(self, spec: ExecutionSpec) -> WorkflowHandle[Any, Any]:
        """Start the workflow, or find it: a crash between claim and start heals here."""
        try:
            return await self.temporal.start_workflow(
                ExecutionWorkflow.run, spec, id=spec.workflow_id,
                task_queue=self.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=search_attributes(spec),
                static_summary=f"{spec.tenant}: {spec.title} ({len(spec.steps)} steps)"[:400],
                static_details=(f"execution {spec.execution_id}, requested by {spec.actor} in "
                                f"{spec.environment.value}, SLA {spec.sla_class.value}"))
        except WorkflowAlreadyStartedError:
            return self.temporal.get_workflow_handle(spec.workflow_id,
                                                     result_type=ExecutionResult)

    async def _wait_result(self, handle: WorkflowHandle[Any, Any]) -> ExecutionResult:
        try:
            return await handle.result()  # type: ignore[no-any-return]
        except WorkflowFailureError:
            # Cancelled through Temporal (or failed): the mirror has the final word.
            return await self.result(handle.id)

    async def _current_status(self, execution_id: str,
                              handle: WorkflowHandle[Any, Any]) -> ExecutionStatus:
        row = await self.pool.fetchrow(
            "SELECT status::text FROM execution.executions WHERE execution_id = $1",
            uuid.UUID(execution_id))
        return ExecutionStatus(row["status"]) if row else ExecutionStatus.QUEUED

    # ------------------------------------------------------------------ look up

    async def resolve_ids(self, ident: str) -> tuple[str, str]:
        """Accept an execution id or a workflow id; return both."""
        try:
            as_uuid = uuid.UUID(ident)
        except ValueError:
            as_uuid = None
        row = await self.pool.fetchrow(
            "SELECT execution_id::text, workflow_id FROM execution.executions "
            "WHERE workflow_id = $1 OR execution_id = $2", ident, as_uuid)
        if row:
            return row["execution_id"], row["workflow_id"]
        claimed = await self.pool.fetchrow(
            "SELECT execution_id::text, workflow_id FROM execution.idempotency_records "
            "WHERE workflow_id = $1 OR execution_id = $2", ident, as_uuid)
        if claimed:  # claimed, but the workflow has not written its first mirror row yet
            return claimed["execution_id"], claimed["workflow_id"]
        raise ExecutionNotFound(f"no execution with id {ident!r}")

    async def handle(self, ident: str) -> WorkflowHandle[Any, Any]:
        _, workflow_id = await self.resolve_ids(ident)
        return self.temporal.get_workflow_handle(workflow_id)

    async def progress(self, ident: str) -> Progress | None:
        handle = await self.handle(ident)
        try:
            return await asyncio.wait_for(handle.query("progress", result_type=Progress), 5)
        except (RPCError, TimeoutError):
            return None

    async def status(self, ident: str) -> dict[str, Any]:
        execution_id, workflow_id = await self.resolve_ids(ident)
        row = await self.pool.fetchrow(
            "SELECT * FROM execution.executions WHERE execution_id = $1",
            uuid.UUID(execution_id))
        steps = await self.pool.fetch(
            "SELECT step_id, status, attempts, started_at, completed_at, exit_code, error, "
            "target, tool, description FROM execution.execution_steps "
            "WHERE execution_id = $1 ORDER BY position", uuid.UUID(execution_id))
        temporal_status = None
        try:
            desc = await self.temporal.get_workflow_handle(workflow_id).describe()
            temporal_status = desc.status.name if desc.status else None
        except RPCError:
            pass
        view: dict[str, Any] = {
            "execution_id": execution_id, "workflow_id": workflow_id,
            "status": row["status"] if row else ExecutionStatus.QUEUED.value,
            "approval_state": (row["approval_state"] if row and row["approval_state"]
                               else "not_required"),
            "temporal_status": temporal_status,
            "tenant": row["tenant"] if row else None, "actor": row["actor"] if row else None,
            "environment": row["environment"] if row else None,
            "title": row["title"] if row else None,
            "sla_class": row["sla_class"] if row else None,
            "mode": row["mode"] if row else None,
            "error": row["error"] if row else None,
            "cancel_actor": row["cancel_actor"] if row else None,
            "cancel_reason": row["cancel_reason"] if row else None,
            "created_at": _iso(row["created_at"]) if row else None,
            "completed_at": _iso(row["completed_at"]) if row else None,
            "steps": [{"id": s["step_id"], "status": s["status"], "attempts": s["attempts"],
                       "started_at": _iso(s["started_at"]),
                       "completed_at": _iso(s["completed_at"]), "exit_code": s["exit_code"],
                       "error": s["error"], "tool": s["tool"], "target": s["target"],
                       "description": s["description"]} for s in steps],
        }
        if temporal_status == WorkflowExecutionStatus.RUNNING.name:
            progress = await self.progress(workflow_id)
            if progress is not None:
                view["percent"] = progress.percent
                view["waiting_on"] = progress.waiting_on
                view["current_step"] = progress.current_step
                view["status"] = progress.status.value
                view["approval_state"] = progress.approval_state.value
        return view

    async def result(self, ident: str) -> ExecutionResult:
        execution_id, workflow_id = await self.resolve_ids(ident)
        handle = self.temporal.get_workflow_handle(workflow_id, result_type=ExecutionResult)
        try:
            return await handle.result()  # type: ignore[no-any-return]
        except WorkflowFailureError:
            pass
        row = await self.pool.fetchval(
            "SELECT result FROM execution.executions WHERE execution_id = $1",
            uuid.UUID(execution_id))
        if row is None:
            raise ExecutionNotFound(f"execution {ident!r} has no result yet")
        view = await self.status(execution_id)
        data = _json_loads(row)
        data["steps"] = [{"step_id": s["id"], "status": s["status"], "attempts": s["attempts"],
                          "started_at": s["started_at"], "completed_at": s["completed_at"],
                          "exit_code": s["exit_code"], "error": s["error"]}
                         for s in view["steps"]]
        return ExecutionResult.model_validate(data)

    async def list(self, *, status: str | None = None, tenant: str | None = None,
                   limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """
            SELECT execution_id::text, workflow_id, tenant, actor, environment, title,
                   status::text, approval_state::text, sla_class::text, step_count,
                   steps_completed, steps_failed, created_at, completed_at
            FROM execution.executions
            WHERE ($1::text IS NULL OR status::text = $1) AND ($2::text IS NULL OR tenant = $2)
            ORDER BY created_at DESC LIMIT $3
            """, status, tenant, limit)
        return [{k: _iso(v) if isinstance(v, datetime) else v for k, v in dict(r).items()}
                for r in rows]

    # ------------------------------------------------------------------ steer

    async def _decide(self, ident: str, update: str, signal: str,
                      payload: dict[str, Any]) -> DecisionOutcome:
        """Use the update (immediate answer); fall back to the signal if no worker answers.

        With no worker polling, the SDK gives up on the update with its own
        `WorkflowUpdateRPCTimeoutOrCancelledError` (also what our `wait_for` turns into when
        it cancels the call), or `TimeoutError` if the cancel lands first."""
        handle = await self.handle(ident)
        wait = self.update_wait_seconds
        try:
            return await asyncio.wait_for(  # type: ignore[no-any-return]
                handle.execute_update(update, payload, result_type=DecisionOutcome,
                                      rpc_timeout=timedelta(seconds=wait)), wait)
        except WorkflowUpdateFailedError as err:
            # A validator's refusal never reaches history: record it in the mirror here.
            cause = err.cause
            reason = getattr(cause, "message", None) or str(cause or err)
            await self._record_refusal(ident, signal, payload, reason)
            return DecisionOutcome(accepted=False, reason=reason)
        except RPCError as err:
            if "workflow execution already completed" in str(err).lower():
                return DecisionOutcome(accepted=False, reason="the execution has already ended")
            raise
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            await handle.signal(signal, payload)
            return SignalledDecision(
                accepted=True,
                reason=f"no worker answered within {wait:g}s: the decision was sent as the "
                       f"{signal!r} signal and will be judged when a worker runs")

    async def _record_refusal(self, ident: str, kind: str, payload: dict[str, Any],
                              reason: str) -> None:
        execution_id, _ = await self.resolve_ids(ident)
        actor = payload.get("approver") or payload.get("actor")
        async with self.pool.acquire() as conn:
            exists = await conn.fetchval(
                "SELECT 1 FROM execution.executions WHERE execution_id = $1",
                uuid.UUID(execution_id))
            if exists:
                await write_events(conn, execution_id, [EventRecord(
                    key=f"client:{uuid.uuid4()}", type=f"{kind}.refused",
                    actor=actor if isinstance(actor, str) else None, message=reason,
                    data={"payload": payload, "via": "update validator"},
                    at=datetime.now(UTC))])

    async def approve(self, ident: str, approver: str, comment: str | None = None,
                      plan_hash: str | None = None) -> DecisionOutcome:
        payload = {"approver": approver, "comment": comment, "plan_hash": plan_hash}
        return await self._decide(ident, "approve_update", "approve",
                                  {k: v for k, v in payload.items() if v is not None})

    async def reject(self, ident: str, approver: str, comment: str | None = None,
                     plan_hash: str | None = None) -> DecisionOutcome:
        payload = {"approver": approver, "comment": comment, "plan_hash": plan_hash}
        return await self._decide(ident, "reject_update", "reject",
                                  {k: v for k, v in payload.items() if v is not None})

    async def cancel(self, ident: str, actor: str, reason: str) -> DecisionOutcome:
        return await self._decide(ident, "cancel_update", "cancel",
                                  {"actor": actor, "reason": reason})

    async def resolve(self, ident: str, actor: str, action: str,
                      step_id: str | None = None) -> DecisionOutcome:
        payload: dict[str, Any] = {"actor": actor, "action": action}
        if step_id:
            payload["step_id"] = step_id
        return await self._decide(ident, "resolve_update", "resolve", payload)

    async def pending(self, approver: str | None = None) -> list[dict[str, Any]]:
        """Executions waiting for a decision that `approver` may make."""
        rows = await self.pool.fetch(
            """
            SELECT e.execution_id::text, e.workflow_id, e.tenant, e.actor, e.environment,
                   e.title, a.gate, a.required_role, a.senior_role, a.required_approvals,
                   a.expires_at, a.plan_hash, a.decisions
            FROM execution.approvals a JOIN execution.executions e USING (execution_id)
            WHERE a.state = 'pending' AND e.status = 'pending_approval'
            ORDER BY a.requested_at
            """)
        policy = await rbac.load_policy(self.pool) if approver else None
        out = []
        for r in rows:
            item = {k: _iso(v) if isinstance(v, datetime) else v for k, v in dict(r).items()}
            decisions = _json_loads(item.pop("decisions"))
            item["approved_by"] = [d["approver"] for d in decisions
                                   if d.get("accepted") and d.get("decision") == "approve"]
            if approver and policy is not None:
                roles = policy.roles_of(r["tenant"], approver, r["environment"])
                if (approver == r["actor"] or approver in item["approved_by"]
                        or r["required_role"] not in roles):
                    continue
            out.append(item)
        return out


def search_attributes(spec: ExecutionSpec) -> TypedSearchAttributes:
    return TypedSearchAttributes([
        SearchAttributePair(sa.TENANT, spec.tenant),
        SearchAttributePair(sa.ENVIRONMENT, spec.environment.value),
        SearchAttributePair(sa.ACTOR, spec.actor),
        SearchAttributePair(sa.STATUS, ExecutionStatus.QUEUED.value),
        SearchAttributePair(sa.SLA_CLASS, spec.sla_class.value),
        SearchAttributePair(sa.APPROVAL_STATE,
                            "pending" if spec.approval_level else "not_required"),
        SearchAttributePair(sa.ASSETS, spec.assets or ["localhost"]),
    ])


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _json_loads(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value
