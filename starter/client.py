"""The client library Stage D calls: submit, inspect and steer executions.

`execute()` validates everything before it writes or starts anything, so a rejected request
leaves no trace; an accepted one is claimed in Postgres (the idempotency window) and started
as one Temporal workflow whose id derives from tenant + idempotency key.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, ValidationError
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
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from opsconductor.activities import db
from opsconductor.activities.assets import InventoryError, resolve_targets
from opsconductor.activities.authorization import ActionGate, planned_actions
from opsconductor.activities.checks import expression_problems
from opsconductor.activities.fleet import check_fleets
from opsconductor.activities.mirror import write_events
from opsconductor.activities.service_clients import unconfigured_services
from opsconductor.activities.telemetry import SCOPE
from opsconductor.safety import idempotency, rbac
from opsconductor.safety.signatures import (
    SignatureError,
    agent_keys,
    sign_submission,
    signed_payload,
)
from opsconductor.schema import search_attributes as sa
from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.decisions import CANCEL_GATE
from opsconductor.schema.enums import ExecutionMode, ExecutionStatus, StepStatus
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import (
    DecisionOutcome,
    EventRecord,
    ExecutionResult,
    Progress,
    WaitKind,
)
from opsconductor.schema.payloads import PAYLOAD_LIMIT, encoded_size
from opsconductor.schema.request import ExecutionRequest
from opsconductor.schema.spec import CarriedStep, ExecutionSpec, build_spec
from opsconductor.schema.submissions import SubmissionProof, canonical_request
from opsconductor.schema.validation import Problem, RequestValidationError, validate_request
from opsconductor.starter.telemetry import configured_tracer_provider, tracing_interceptors
from opsconductor.starter.worker import connect
from opsconductor.workflows.approvals import EXECUTION_GATE, GateRule, missing_text
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


@dataclass(frozen=True)
class Prepared:
    """A request that passed every check needing no write: the model, the spec it becomes
    (built once; ids filled in after the claim) and each fleet step's resources."""

    request: ExecutionRequest
    draft: ExecutionSpec
    fleets: dict[str, list[str]]


async def _check_encoded_size(draft: ExecutionSpec) -> None:
    """Refuse, before anything is claimed or written, a plan whose spec Temporal would refuse
    as the workflow's input even compressed (a start that fails would leave a claim behind)."""
    size = await encoded_size(draft)
    if size > PAYLOAD_LIMIT:
        raise RequestValidationError([Problem(
            path="plan", message=f"the execution spec is {size:,} bytes once encoded and "
                                 f"compressed; Temporal accepts at most {PAYLOAD_LIMIT:,}: "
                                 "split the plan")])


@dataclass
class ExecutionClient:
    temporal: Client
    pool: asyncpg.Pool
    settings: Settings
    # How long a decision waits for a worker to answer its Update before it is sent as the
    # plain signal instead (which needs no worker).
    update_wait_seconds: float = DEFAULT_UPDATE_WAIT_SECONDS
    # Spans of submissions (default: the global provider's, a no-op unless OTEL_* sets one).
    tracer: trace.Tracer | None = None
    # One engine per client: the policy is re-read only when its file or tables change.
    rbac_engine: rbac.RbacEngine = field(init=False)

    def __post_init__(self) -> None:
        self.rbac_engine = rbac.RbacEngine.from_settings(self.settings)

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
            temporal = await connect(settings, interceptors=tracing_interceptors(
                configured_tracer_provider()))
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

    async def prepare(self, raw: Any) -> Prepared:
        """Every check that needs no write: structure, tools, inputs, assets."""
        request = validate_request(raw)
        targets = sorted({t for s in request.steps
                          if isinstance(t := s.target, str) and t})
        try:
            asset_ids, unknown = await resolve_targets(targets, self.settings)
        except InventoryError as err:  # a broken inventory is the request's problem to see
            raise RequestValidationError([Problem(path="inventory", message=str(err))]) \
                from None
        problems = [Problem(path=f"plan.plan.steps[{i}].inputs.target",
                            message=f"unknown asset {s.target!r}")
                    for i, s in enumerate(request.steps) if s.target in unknown]
        fleet_issues, fleets = await check_fleets(request, self.settings)
        problems += fleet_issues
        draft = build_spec(request, execution_id="", workflow_id="", idempotency_key="",
                           asset_ids=asset_ids)
        problems += [Problem(path=path, message=why) for path, why in expression_problems(draft)]
        index = {st.id: i for i, st in enumerate(request.steps)}
        problems += [Problem(path=f"plan.plan.steps[{index[sid]}].tool", message=why)
                     for sid, why in unconfigured_services(draft.steps, self.settings)]
        if problems:
            raise RequestValidationError(problems)
        return Prepared(request, draft, fleets)

    async def _authorize_submission(self, prepared: Prepared) -> None:
        """Everything the plan can run on a host (steps, `command:` checks wherever they
        stand, rollback actions, every fleet target), judged as the worker will judge it and
        audited, before anything is written."""
        request = prepared.request
        entries: list[rbac.AuditEntry] = []
        refusal: str | None = None
        for action in planned_actions(prepared.draft, prepared.fleets):
            gate = ActionGate(engine=self.rbac_engine, pool=self.pool, tenant=request.tenant,
                              actor=request.actor, environment=request.environment.value,
                              step_id=action.step_id)
            verdict = await gate.decide(tool=action.tool, resource=action.resource,
                                        command=action.command, inputs=action.inputs,
                                        read_only_expected=action.read_only_expected)
            entries += verdict.entries
            if not verdict.allowed and refusal is None:
                refusal = f"{verdict.reason} ({action.what} of step {action.step_id})"
        await rbac.audit_many(self.pool, entries)
        if refusal is not None:
            raise SubmissionRefused(refusal)

    async def execute(self, raw: Any, *, wait: bool | None = None,
                      carried: list[CarriedStep] | None = None) -> ExecutionResponse:
        """Validate, authorize, claim and start (see the module's docstring); the submission
        is one span, a child of the request's `trace_id` (a W3C traceparent or trace id).
        `carried`: steps an earlier, failed run of the same request completed (taken over only
        when this run is the one linked to that run)."""
        tracer = self.tracer or trace.get_tracer(SCOPE)
        parent = trace_parent(raw.get("trace_id") if isinstance(raw, dict) else None)
        with tracer.start_as_current_span("opsc.execution", context=parent) as span:
            response = await self._execute(raw, wait, span, carried or [])
            span.set_attribute("opsc.status", response.status.value)
            return response

    async def _execute(self, raw: Any, wait: bool | None, span: trace.Span,
                       carried: list[CarriedStep]) -> ExecutionResponse:
        prepared = await self.prepare(raw)
        request = prepared.request
        await self._authorize_submission(prepared)
        fingerprint = idempotency.request_fingerprint(
            request.model_dump(mode="json", by_alias=True, exclude_none=True))
        key = (idempotency.caller_key(request.tenant, request.idempotency_key)
               if request.idempotency_key else fingerprint)
        await _check_encoded_size(prepared.draft)
        try:
            claim = await idempotency.claim(self.pool, request.tenant, key,
                                            self.settings.idempotency_window_seconds,
                                            actor=request.actor, fingerprint=fingerprint,
                                            supplied_key=request.idempotency_key)
        except idempotency.IdempotencyConflict as err:
            raise DuplicateKeyConflict(str(err)) from None
        spec = prepared.draft.model_copy(update={
            "execution_id": claim.execution_id, "workflow_id": claim.workflow_id,
            "idempotency_key": key, "previous_execution_id": claim.previous_execution_id,
            "submitted_at": claim.created_at or datetime.now(UTC)})
        linked = [c for c in carried if claim.is_new
                  and c.from_execution_id == claim.previous_execution_id]
        if linked:
            spec = spec.model_copy(update={"carried": linked})
        if request.signature is not None and isinstance(raw, Mapping):
            # the worker verifies the actor's signature over exactly this envelope
            spec = spec.model_copy(update={"submission": SubmissionProof(
                **request.signature.model_dump(), signed_request=canonical_request(dict(raw)))})
        span.set_attributes({"opsc.execution_id": spec.execution_id,
                             "opsc.workflow_id": spec.workflow_id, "opsc.tenant": spec.tenant,
                             "opsc.environment": spec.environment.value,
                             "opsc.actor": spec.actor, "opsc.sla_class": spec.sla_class.value,
                             "opsc.duplicate": not claim.is_new})
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
                static_summary=static_summary(spec), static_details=static_details(spec))
        except WorkflowAlreadyStartedError:
            return self.temporal.get_workflow_handle(spec.workflow_id,
                                                     result_type=ExecutionResult)

    async def _wait_result(self, handle: WorkflowHandle[Any, Any]) -> ExecutionResult:
        try:
            return await handle.result()
        except WorkflowFailureError as err:
            # Failed runs carry the result in the failure; cancelled ones: the mirror has it.
            return result_from_failure(err) or await self.result(handle.id)

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
            "target, tool, description FROM execution.step_runs "
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
            "started_at": _iso(row["started_at"]) if row else None,
            "deadline_at": _iso(row["deadline_at"]) if row else None,
            "completed_at": _iso(row["completed_at"]) if row else None,
            "steps": [{"id": s["step_id"], "status": s["status"], "attempts": s["attempts"],
                       "started_at": _iso(s["started_at"]),
                       "completed_at": _iso(s["completed_at"]), "exit_code": s["exit_code"],
                       "error": s["error"], "tool": s["tool"], "target": s["target"],
                       "description": s["description"]} for s in steps],
        }
        view["approvals"] = await self._approvals_view(execution_id)
        if temporal_status == WorkflowExecutionStatus.RUNNING.name:
            progress = await self.progress(workflow_id)
            if progress is not None:
                view["percent"] = progress.percent
                view["waiting_on"] = progress.waiting_on
                view["current_step"] = progress.current_step
                view["estimated_completion"] = _iso(progress.estimated_completion)
                view["deadline_at"] = view["deadline_at"] or _iso(progress.deadline)
                view["status"] = progress.status.value
                view["approval_state"] = progress.approval_state.value
        return view

    async def _approvals_view(self, execution_id: str) -> list[dict[str, Any]]:
        """Each gate and its decisions, each marked signed (with its key) or unsigned."""
        rows = await self.pool.fetch(
            "SELECT gate, state::text AS state, decisions FROM execution.approvals "
            "WHERE execution_id = $1 ORDER BY id", uuid.UUID(execution_id))
        return [{"gate": r["gate"], "state": r["state"], "decisions": [
            {"approver": d.get("approver"), "decision": d.get("decision"),
             "accepted": d.get("accepted"), "signed": d.get("signed"),
             "key_fingerprint": d.get("key_fingerprint"), "reason": d.get("reason"),
             "at": d.get("at")} for d in _json_loads(r["decisions"])]} for r in rows]

    async def result(self, ident: str) -> ExecutionResult:
        execution_id, workflow_id = await self.resolve_ids(ident)
        handle = self.temporal.get_workflow_handle(workflow_id, result_type=ExecutionResult)
        try:
            return await handle.result()
        except WorkflowFailureError as err:
            carried = result_from_failure(err)
            if carried is not None:
                return carried
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
                   limit: int = 50, **filters: Any) -> builtins.list[dict[str, Any]]:
        """The newest executions matching the filters (see `page`)."""
        rows, _ = await self.page(status=status, tenant=tenant, limit=limit, **filters)
        return rows

    async def page(self, *, status: str | None = None, tenant: str | None = None,
                   actor: str | None = None, asset: str | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   limit: int = 50, cursor: str | None = None,
                   ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """One page of executions, newest first, and the cursor of the next page (None at
        the end). `status` must be an execution status (ValueError otherwise); `asset`
        matches an asset id; `since`/`until` bound the submission time."""
        if status is not None:
            status = ExecutionStatus(status).value
        after_at, after_id = decode_cursor(cursor) if cursor else (None, None)
        rows = await self.pool.fetch(
            """
            SELECT execution_id::text, workflow_id, tenant, actor, environment, title,
                   status::text, approval_state::text, sla_class::text, step_count,
                   steps_completed, steps_failed, assets, created_at, completed_at
            FROM execution.executions
            WHERE ($1::text IS NULL OR status::text = $1) AND ($2::text IS NULL OR tenant = $2)
              AND ($3::text IS NULL OR actor = $3) AND ($4::text IS NULL OR $4 = ANY(assets))
              AND ($5::timestamptz IS NULL OR created_at >= $5)
              AND ($6::timestamptz IS NULL OR created_at < $6)
              AND ($7::timestamptz IS NULL OR (created_at, execution_id) < ($7, $8::uuid))
            ORDER BY created_at DESC, execution_id DESC LIMIT $9
            """, status, tenant, actor, asset, since, until, after_at, after_id,
            max(1, min(limit, 1000)) + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = (encode_cursor(rows[-1]["created_at"], rows[-1]["execution_id"])
                       if more and rows else None)
        return ([{k: _iso(v) if isinstance(v, datetime) else v for k, v in dict(r).items()}
                 for r in rows], next_cursor)

    # ------------------------------------------------------------------ steer

    async def _decide(self, ident: str, update: str, signal: str,
                      payload: dict[str, Any]) -> DecisionOutcome:
        """Use the update (immediate answer); fall back to the signal if no worker answers.

        With no worker polling, the SDK gives up on the update with its own
        `WorkflowUpdateRPCTimeoutOrCancelledError` (also what our `wait_for` turns into when
        it cancels the call), or `TimeoutError` if the cancel lands first."""
        handle = await self.handle(ident)
        wait = self.update_wait_seconds

        async def send() -> DecisionOutcome:
            return await asyncio.wait_for(
                handle.execute_update(update, payload, result_type=DecisionOutcome,
                                      rpc_timeout=timedelta(seconds=wait)), wait)

        try:
            try:
                return await send()
            except WorkflowUpdateFailedError as err:
                if not await self._gate_opened(ident, err):
                    raise
                return await send()
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

    async def _gate_opened(self, ident: str, err: WorkflowUpdateFailedError) -> bool:
        """A decision sent the moment after `execute` can reach the run while it is still
        queued, before its approval gate opens: wait (bounded) for the run to leave `queued`
        so the decision is judged by the gate rather than refused for arriving early."""
        if getattr(err.cause, "type", None) != ErrorType.NO_APPROVAL_PENDING.value:
            return False
        deadline = asyncio.get_running_loop().time() + self.update_wait_seconds
        while asyncio.get_running_loop().time() < deadline:
            progress = await self.progress(ident)
            if progress is None or progress.waiting_kind not in (None, WaitKind.APPROVAL):
                return False
            if progress.status is not ExecutionStatus.QUEUED:
                return progress.status is ExecutionStatus.PENDING_APPROVAL
            await asyncio.sleep(0.1)
        return False

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

    # Decisions are signed with the operator's SSH key (`key`: a private key file, or a .pub
    # whose private key is in the ssh-agent; default: the settings' `signing_key`, else the
    # agent's key registered for the principal). `sign=False` sends unsigned, `sign=True`
    # refuses to send unsigned; None signs whenever a key is at hand.

    async def approve(self, ident: str, approver: str, comment: str | None = None,
                      plan_hash: str | None = None, *, key: str | Path | None = None,
                      sign: bool | None = None) -> DecisionOutcome:
        return await self._send("approve", ident, approver, comment=comment,
                                plan_hash=plan_hash, key=key, sign=sign)

    async def reject(self, ident: str, approver: str, comment: str | None = None,
                     plan_hash: str | None = None, *, key: str | Path | None = None,
                     sign: bool | None = None) -> DecisionOutcome:
        return await self._send("reject", ident, approver, comment=comment,
                                plan_hash=plan_hash, key=key, sign=sign)

    async def cancel(self, ident: str, actor: str, reason: str, *,
                     key: str | Path | None = None, sign: bool | None = None) -> DecisionOutcome:
        return await self._send("cancel", ident, actor, comment=reason, key=key, sign=sign)

    async def resolve(self, ident: str, actor: str, action: str,
                      step_id: str | None = None, *, comment: str | None = None,
                      key: str | Path | None = None, sign: bool | None = None,
                      ) -> DecisionOutcome:
        return await self._send("resolve", ident, actor, comment=comment, action=action,
                                step_id=step_id, key=key, sign=sign)

    async def _send(self, kind: str, ident: str, principal: str, *, comment: str | None,
                    plan_hash: str | None = None, action: str | None = None,
                    step_id: str | None = None, key: str | Path | None = None,
                    sign: bool | None = None) -> DecisionOutcome:
        payload = _decision_payload(kind, principal, comment, plan_hash, action, step_id)
        key = key or self.settings.signing_key
        if sign is not False and (key is not None or sign
                                  or await self._agent_can_sign(principal)):
            payload = await self.sign_decision(ident, kind, principal, comment=comment,
                                               plan_hash=plan_hash, action=action,
                                               step_id=step_id, key=key)
        return await self._decide(ident, f"{kind}_update", kind, payload)

    async def policy(self) -> rbac.Policy:
        """The RBAC policy these settings name (file and tables), with its public keys."""
        return await self.rbac_engine.policy(self.pool)

    async def _agent_can_sign(self, principal: str) -> bool:
        """The ssh-agent holds a key the policy registers for `principal`."""
        held = {" ".join(k.split()[:2]) for k in await agent_keys()}
        return bool(held) and any(principal in s.principals and s.public_key in held
                                  for s in (await self.policy()).signers)

    async def _decision_facts(self, ident: str, kind: str,
                              step_id: str | None) -> tuple[str, str, str]:
        """What a decision on `ident` is bound to: execution id, gate and plan hash."""
        execution_id, _ = await self.resolve_ids(ident)
        key = uuid.UUID(execution_id)
        plan_hash = await self.pool.fetchval(
            "SELECT plan_hash FROM execution.executions WHERE execution_id = $1", key)
        if plan_hash is None:
            raise ExecutionNotFound(f"execution {ident!r} is not recorded yet: nothing to sign")
        if kind in ("approve", "reject"):
            gate = await self.pool.fetchval(
                "SELECT gate FROM execution.approvals WHERE execution_id = $1 "
                "AND state = 'pending' ORDER BY id DESC LIMIT 1", key) or EXECUTION_GATE
        elif kind == "cancel":
            gate = CANCEL_GATE
        else:
            gate = step_id or await self._step_awaiting_resolution(ident)
            if gate is None:
                raise SignatureError("no step of this execution waits for a resolution: "
                                     "name the step")
        return execution_id, gate, plan_hash

    async def _step_awaiting_resolution(self, ident: str) -> str | None:
        """The step whose unknown outcome waits for an operator, as the workflow sees it."""
        progress = await self.progress(ident)
        if progress is None or progress.waiting_kind is not WaitKind.RESOLUTION:
            return None
        return next((s.id for s in progress.steps if s.status is StepStatus.WAITING), None)

    async def sign_submission(self, envelope: Mapping[str, Any], *,
                              key: str | Path | None = None) -> dict[str, Any]:
        """The envelope signed by its actor (their key file, `OPSC_SIGNING_KEY`, or the
        agent's key registered for them): proves `actor` where the policy requires it."""
        return await sign_submission(envelope, key=key or self.settings.signing_key,
                                     registered=(await self.policy()).signers)

    async def sign_decision(self, ident: str, kind: str, principal: str, *,
                            comment: str | None = None, plan_hash: str | None = None,
                            action: str | None = None, step_id: str | None = None,
                            key: str | Path | None = None) -> dict[str, Any]:
        """The signed payload of a decision (`kind`: approve, reject, cancel, resolve) on
        `ident`, as the signal of that name takes it, from here or through `temporal
        workflow signal --input`. `plan_hash`: the plan you reviewed (default: the
        execution's)."""
        execution_id, gate, current_plan = await self._decision_facts(ident, kind, step_id)
        if kind == "resolve":
            step_id = gate
        payload = _decision_payload(kind, principal, comment, plan_hash, action, step_id)
        return await signed_payload(
            payload, kind=f"resolve:{action}" if kind == "resolve" else kind,
            execution_id=execution_id, gate=gate, plan_hash=plan_hash or current_plan,
            principal=principal, comment=comment or "",
            key=key or self.settings.signing_key, registered=(await self.policy()).signers)

    async def pending(self, approver: str | None = None,
                      tenant: str | None = None) -> builtins.list[dict[str, Any]]:
        """Executions (of `tenant`) waiting for a decision that `approver` may make."""
        rows = await self.pool.fetch(
            """
            SELECT e.execution_id::text, e.workflow_id, e.tenant, e.actor, e.environment,
                   e.title, a.gate, a.required_role, a.senior_role, a.required_approvals,
                   a.expires_at, a.plan_hash, a.decisions
            FROM execution.approvals a JOIN execution.executions e USING (execution_id)
            WHERE a.state = 'pending' AND e.status = 'pending_approval'
              AND ($1::text IS NULL OR e.tenant = $1)
            ORDER BY a.requested_at
            """, tenant)
        policy = await self.rbac_engine.policy(self.pool) if approver else None
        out = []
        for r in rows:
            item = {k: _iso(v) if isinstance(v, datetime) else v for k, v in dict(r).items()}
            decisions = _json_loads(item.pop("decisions"))
            accepted = [d for d in decisions
                        if d.get("accepted") and d.get("decision") == "approve"]
            item["approved_by"] = [d["approver"] for d in accepted]
            item["missing"] = missing_text(
                GateRule(r["required_approvals"], r["required_role"], r["senior_role"]),
                [set(d.get("roles") or ()) for d in accepted])
            if approver and policy is not None:
                roles = policy.roles_of(r["tenant"], approver, r["environment"])
                eligible = {r["required_role"], *([r["senior_role"]] if r["senior_role"]
                                                  else [])}
                if (approver == r["actor"] or approver in item["approved_by"]
                        or not roles & eligible):
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


def encode_cursor(created_at: datetime, execution_id: str) -> str:
    """An opaque page cursor: the last row's submission time and id."""
    raw = f"{created_at.isoformat()}|{execution_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names; ValueError for one this module did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, execution_id = raw.partition("|")
        return datetime.fromisoformat(at), str(uuid.UUID(execution_id))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"invalid cursor {cursor!r}") from err


def trace_parent(trace_id: str | None) -> Context | None:
    """The context a request's `trace_id` names: a W3C `traceparent` header value, or a bare
    32-hex trace id (then a remote parent span id is made up so the trace id carries over)."""
    if not trace_id:
        return None
    text = trace_id.strip().lower()
    if text.count("-") == 3:
        ctx = TraceContextTextMapPropagator().extract({"traceparent": text})
        return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None
    try:
        tid = int(text, 16) if len(text) == 32 else 0
    except ValueError:
        return None
    if not tid:
        return None
    parent = SpanContext(trace_id=tid, span_id=uuid.uuid4().int & ((1 << 64) - 1) or 1,
                         is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def static_summary(spec: ExecutionSpec) -> str:
    """The one line the Web UI shows for the run: title, tenant, environment and actor."""
    return (f"{spec.title} · {spec.tenant}/{spec.environment.value} · by {spec.actor}"
            f" · {len(spec.steps)} step(s)")[:400]


def static_details(spec: ExecutionSpec, limit: int = 20_000) -> str:
    """The plan as the Web UI shows it (markdown): ids, SLA, and each step with its tool and
    target; cut at `limit` characters so a huge plan cannot bloat the start event."""
    lines = [f"execution `{spec.execution_id}` · SLA {spec.sla_class.value} · mode "
             f"{spec.mode.value} · approval level {spec.approval_level}", ""]
    for i, step in enumerate(spec.steps, 1):
        where = f" on `{step.target}`" if step.target else ""
        what = f" — {step.description}" if step.description else ""
        lines.append(f"{i}. `{step.id}` ({step.tool}){where}{what}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[:limit] + "\n…"


def result_from_failure(err: WorkflowFailureError) -> ExecutionResult | None:
    """The result a failed, timed-out or rejected run closed with (its failure's details);
    None for a failure that carries none (a cancelled run, a workflow bug)."""
    cause = err.cause
    if not isinstance(cause, ApplicationError) or not cause.details:
        return None
    try:
        return ExecutionResult.model_validate(cause.details[0])
    except ValidationError:
        return None


def _decision_payload(kind: str, principal: str, comment: str | None, plan_hash: str | None,
                      action: str | None, step_id: str | None) -> dict[str, Any]:
    """The plain payload of the signal named `kind`."""
    if kind == "cancel":
        return {"actor": principal, "reason": comment or ""}
    if kind == "resolve":
        payload = {"actor": principal, "action": action, "step_id": step_id, "comment": comment}
    else:
        payload = {"approver": principal, "comment": comment, "plan_hash": plan_hash}
    return {k: v for k, v in payload.items() if v is not None}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _json_loads(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value
