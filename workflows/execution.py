"""ExecutionWorkflow: one durable execution of an approved plan.

Control flow only: every effect on the world is an activity (steps, locks, RBAC look-ups) or
a local activity (mirror writes, batched so a step costs one round trip). The status machine
in `opsconductor.schema.fsm` is checked before every status change.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from opsconductor.schema.enums import (
        ActionClass,
        ApprovalState,
        ExecutionStatus,
        FailureHandling,
        StepKind,
        StepStatus,
    )
    from opsconductor.schema.fsm import check_step_transition, check_transition
    from opsconductor.schema.locks import (
        AcquireLocksInput,
        AcquireLocksResult,
        ReleaseLocksInput,
        RenewLocksInput,
    )
    from opsconductor.schema.messages import (
        ApprovalDecision,
        AuthorizeInput,
        AuthorizeResult,
        CancelRequest,
        CleanupInput,
        DeadLetter,
        DecisionOutcome,
        EventRecord,
        ExecutionResult,
        MirrorWrite,
        MirrorWriteResult,
        Progress,
        ResolveRequest,
        SafetyChecksInput,
        SafetyChecksResult,
        StepProgress,
        StepRecord,
        StepResult,
        StepRunInput,
        TimeoutPolicy,
    )
    from opsconductor.schema.spec import ExecutionSpec, StepSpec
    from opsconductor.workflows.approvals import (
        EXECUTION_GATE,
        Gate,
        GateRule,
        rule_for_level,
        rule_for_point,
    )

SA_TENANT = SearchAttributeKey.for_keyword("OpsTenant")
SA_ENVIRONMENT = SearchAttributeKey.for_keyword("OpsEnvironment")
SA_ACTOR = SearchAttributeKey.for_keyword("OpsActor")
SA_STATUS = SearchAttributeKey.for_keyword("OpsStatus")
SA_SLA = SearchAttributeKey.for_keyword("OpsSlaClass")
SA_APPROVAL = SearchAttributeKey.for_keyword("OpsApprovalState")
SA_ASSETS = SearchAttributeKey.for_keyword_list("OpsAssets")

LEASE_SECONDS = 60.0  # asset leases: renewed by running steps and during approval gates
STEP_TIMEOUT_GRACE = timedelta(seconds=10)
MIRROR_TIMEOUT = timedelta(seconds=30)
MIRROR_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=10),
                           non_retryable_error_types=["IllegalTransition"])
# A cancel reaches a waiting activity with its next heartbeat (at most 0.8 x this timeout).
LOCK_HEARTBEAT = timedelta(seconds=3)
LOCK_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=["LockTimeout"])
CLEANUP_RETRY = RetryPolicy(maximum_attempts=2, non_retryable_error_types=["CleanupFailed"])
AUTHZ_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=5))
NON_RETRYABLE_STEP_ERRORS = ["RbacDenied", "LockLost", "UnknownOutcome", "SecretNotFound",
                             "UnknownAsset", "InvalidStep"]
FAILED_STEP = (StepStatus.FAILED, StepStatus.TIMEOUT)


def describe_invalid(kind: str, err: ValidationError) -> str:
    """`malformed cancel: actor: Field required; ...`: every problem, with its field."""
    return f"malformed {kind}: " + "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in err.errors())


class _StepState:
    def __init__(self, spec: StepSpec):
        self.spec = spec
        self.status = StepStatus.PENDING
        self.attempts = 0
        self.started_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.result: StepResult | None = None
        self.error: str | None = None
        self.attempt_offset = 0

    def move(self, new: StepStatus) -> None:
        if new != self.status:
            check_step_transition(self.status, new)
            self.status = new

    def progress(self) -> StepProgress:
        return StepProgress(id=self.spec.id, description=self.spec.description,
                            status=self.status, attempts=self.attempts,
                            started_at=self.started_at, completed_at=self.completed_at,
                            error=self.error)

    def record(self) -> StepRecord:
        r = self.result
        return StepRecord(step_id=self.spec.id, status=self.status, attempts=self.attempts,
                          started_at=self.started_at, completed_at=self.completed_at,
                          exit_code=r.exit_code if r else None,
                          output=({"stdout": r.stdout, "stderr": r.stderr, "output": r.output,
                                   "duration_ms": r.duration_ms} if r else None),
                          error=self.error)


@workflow.defn(name="ExecutionWorkflow")
class ExecutionWorkflow:
    @workflow.init
    def __init__(self, spec: ExecutionSpec) -> None:
        self.spec = spec
        self.status = ExecutionStatus.QUEUED
        self.approval_state = (ApprovalState.PENDING if spec.approval_level > 0
                               else ApprovalState.NOT_REQUIRED)
        self.steps = {s.id: _StepState(s) for s in spec.steps}
        self.policies: dict[str, TimeoutPolicy] = {}
        self.events: list[EventRecord] = []
        self.seq = 0
        self.started_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.deadline: datetime | None = None
        self.error: str | None = None
        self.cancel: CancelRequest | None = None
        self.native_cancel = False
        self.gate: Gate | None = None
        self.gates: list[Gate] = []
        self.gate_lock = asyncio.Lock()
        self.flush_lock = asyncio.Lock()
        self.search_attributes_stale = False
        self.fencing: dict[str, int] = {}
        self.waiting_on: str | None = None
        self.resolutions: dict[str, ResolveRequest] = {}
        self.stop_launching = False
        self.rollback_requested = False
        self.final_status: ExecutionStatus | None = None

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, spec: ExecutionSpec) -> ExecutionResult:
        self.started_at = workflow.now()
        self._emit("execution.created", to_status=ExecutionStatus.QUEUED.value,
                   actor=spec.actor, message=f"{len(spec.steps)} step(s): {spec.title}")
        if spec.approval_level == 0 and not spec.assets:
            self._set_status(ExecutionStatus.RUNNING)  # nothing to wait for: one write, not two
        self._upsert_search_attributes(initial=True)
        first = await self._flush(spec=spec, load_policies=True, started_at=self.started_at,
                                  run_id=workflow.info().run_id)
        self.policies = first.policies

        body = asyncio.create_task(self._body())
        try:
            await workflow.wait_condition(lambda: body.done() or self.cancel is not None)
        except asyncio.CancelledError:
            self.native_cancel = True
            reason = workflow.cancellation_reason() or "cancelled through Temporal"
            self.cancel = CancelRequest(actor="temporal", reason=str(reason))
            self._emit("cancel.requested", actor="temporal", message=self.cancel.reason)

        if self.cancel is not None:
            await self._stop_body(body)
            await self._finish_cancel()
        else:
            try:
                body.result()
            except Exception as err:  # a bug in workflow code must still end the run honestly
                self.error = f"internal error: {type(err).__name__}: {err}"
                self.final_status = ExecutionStatus.FAILED
        await self._release_locks()
        await self._finish(self.final_status or ExecutionStatus.FAILED)
        if self.native_cancel:
            raise asyncio.CancelledError(self.cancel.reason if self.cancel else "cancelled")
        return self._result()

    async def _stop_body(self, body: asyncio.Task[None]) -> None:
        """Cancel the running steps and wait until their activities acknowledge it."""
        if not body.done():
            body.cancel()
        try:
            await body
        except (asyncio.CancelledError, CancelledError):
            pass
        except Exception as err:
            self.error = f"internal error while cancelling: {type(err).__name__}: {err}"

    async def _body(self) -> None:
        spec = self.spec
        if spec.approval_level > 0:
            gate_rule = rule_for_level(spec.approval_level)
            if not await self._await_gate(EXECUTION_GATE, gate_rule,
                                          f"approval level {spec.approval_level}"):
                return
        if spec.assets:
            if not await self._acquire_locks():
                return
        exec_seconds = self._policy_max("execution_timeout_seconds")
        self.deadline = workflow.now() + timedelta(seconds=exec_seconds)
        if self.status is not ExecutionStatus.RUNNING:
            self._set_status(ExecutionStatus.RUNNING)
            await self._flush(deadline_at=self.deadline)
        if not await self._safety_checks("before"):
            self._mark_unfinished(StepStatus.SKIPPED, StepStatus.SKIPPED)
            self.final_status = ExecutionStatus.FAILED
            return
        steps = asyncio.create_task(self._run_steps())
        try:
            await workflow.wait_condition(steps.done, timeout=timedelta(seconds=exec_seconds))
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            await self._stop_body(steps)  # the running steps' activities must stop too
            raise
        if not steps.done():
            self.error = f"execution deadline of {exec_seconds:g}s passed"
            self._emit("execution.deadline", message=self.error)
            await self._stop_body(steps)
            self._mark_unfinished(StepStatus.TIMEOUT, StepStatus.SKIPPED)
            self.final_status = ExecutionStatus.TIMEOUT
            return
        steps.result()
        if self.final_status is not None:  # rejected or expired at an approval point
            return
        if self.rollback_requested:
            await self._rollback("a failed step asked for rollback")
        elif not self.stop_launching and not await self._safety_checks("after"):
            self.final_status = ExecutionStatus.FAILED
            return
        self.final_status = self._outcome()

    async def _safety_checks(self, stage: str) -> bool:
        """Run the plan's checks of `stage`; False when one failed with `abort`."""
        checks = [c for c in self.spec.safety_checks if c.stage == stage]
        if not checks:
            return True
        res = await workflow.execute_activity(
            "run_safety_checks",
            SafetyChecksInput(execution_id=self.spec.execution_id, stage=stage,  # type: ignore[arg-type]
                              checks=checks, prior_outputs=self._prior_outputs()),
            result_type=SafetyChecksResult, start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_attempts=2), summary=f"{stage} safety checks")
        for outcome in res.outcomes:
            result, action = outcome["result"], outcome["action"]
            kind = ("informational" if result.get("informational") else
                    "passed" if action == "ok" else
                    {"abort": "failed", "warn": "warning"}.get(action, "ignored"))
            self._emit(f"safety_check.{kind}", message=f"{result['expr']}: {result['detail']}",
                       data={"stage": stage, "action": action})
        if res.abort:
            failed = next(o for o in res.outcomes if o["action"] == "abort")
            self.error = (f"{stage} safety check failed: {failed['result']['expr']}: "
                          f"{failed['result']['detail']}")
        await self._flush()
        return not res.abort

    def _prior_outputs(self) -> dict[str, Any]:
        """Completed steps' results, for checks and `validate` steps that read them."""
        return {sid: s.result.model_dump(mode="json") for sid, s in self.steps.items()
                if s.result is not None and s.status is StepStatus.COMPLETED}

    def _outcome(self) -> ExecutionStatus:
        failed = [s for s in self.steps.values() if s.status in FAILED_STEP]
        if not failed:
            return ExecutionStatus.COMPLETED
        if any(s.spec.failure_handling is not FailureHandling.CONTINUE for s in failed):
            first = failed[0]
            self.error = self.error or f"step {first.spec.id} failed: {first.error}"
            return ExecutionStatus.FAILED
        return ExecutionStatus.PARTIAL

    # ------------------------------------------------------------------ steps

    def _ordered(self) -> list[StepSpec]:
        index = {s.id: i for i, s in enumerate(self.spec.steps)}
        return sorted(self.spec.steps, key=lambda s: (s.order, index[s.id]))

    async def _run_steps(self) -> None:
        running: dict[str, asyncio.Task[None]] = {}
        order = self._ordered()
        try:
            while True:
                self._skip_blocked()
                if not self.stop_launching:
                    for step in order:
                        if len(running) >= self.spec.max_parallel:
                            break
                        state = self.steps[step.id]
                        if state.status is StepStatus.PENDING and step.id not in running and all(
                                self.steps[d].status in (StepStatus.COMPLETED,)
                                or self._skipped_ok(d) for d in step.depends_on):
                            running[step.id] = asyncio.create_task(self._run_one(step))
                if not running:
                    break
                await workflow.wait_condition(lambda: any(t.done() for t in running.values()))
                finished = False
                for sid, task in list(running.items()):
                    if task.done():
                        running.pop(sid)
                        task.result()
                        finished = True
                if finished and not self.stop_launching and not await self._safety_checks(
                        "during"):
                    self.stop_launching = True
            self._mark_unfinished(StepStatus.SKIPPED, StepStatus.SKIPPED)
        except asyncio.CancelledError:
            for task in running.values():
                task.cancel()
            for task in running.values():
                try:
                    await task
                except (asyncio.CancelledError, CancelledError):
                    pass
            raise

    def _skipped_ok(self, step_id: str) -> bool:
        """An operator's `skip` of an unknown outcome lets dependents go on."""
        res = self.resolutions.get(step_id)
        return (self.steps[step_id].status is StepStatus.SKIPPED and res is not None
                and res.action == "skip")

    def _skip_blocked(self) -> None:
        changed = True
        while changed:
            changed = False
            for state in self.steps.values():
                if state.status is not StepStatus.PENDING:
                    continue
                blocked = [d for d in state.spec.depends_on
                           if self.steps[d].status in (*FAILED_STEP, StepStatus.CANCELLED)
                           or (self.steps[d].status is StepStatus.SKIPPED
                               and not self._skipped_ok(d))]
                if blocked:
                    self._step_status(state, StepStatus.SKIPPED,
                                      f"dependency {blocked[0]} did not complete")
                    changed = True

    def _mark_unfinished(self, running_to: StepStatus, pending_to: StepStatus) -> None:
        for state in self.steps.values():
            if state.status in (StepStatus.RUNNING, StepStatus.WAITING):
                self._step_status(state, running_to, self.error or running_to.value)
            elif state.status is StepStatus.PENDING:
                self._step_status(state, pending_to, "not started")

    def _step_status(self, state: _StepState, new: StepStatus, message: str | None = None) -> None:
        old = state.status
        if old == new:
            return
        state.move(new)
        if new in (StepStatus.SKIPPED, StepStatus.CANCELLED, StepStatus.TIMEOUT,
                   StepStatus.FAILED) and state.error is None:
            state.error = message
        if new not in (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING):
            state.completed_at = state.completed_at or workflow.now()
        self._emit("step.status", step_id=state.spec.id, from_status=old.value,
                   to_status=new.value, message=message)

    def _policy(self, step: StepSpec) -> TimeoutPolicy:
        return self.policies[step.action_class.value]

    def _policy_max(self, field: str) -> float:
        classes = {s.action_class.value for s in self.spec.steps}
        return max(getattr(self.policies[c], field) for c in classes)

    async def _run_one(self, step: StepSpec) -> None:
        state = self.steps[step.id]
        point = next((p for p in self.spec.approval_points if p.step_id == step.id), None)
        if point is not None:
            self._step_status(state, StepStatus.WAITING, f"waiting for approval: {point.reason}")
            if not await self._await_gate(step.id, rule_for_point(point), point.reason):
                self.stop_launching = True
                self._step_status(state, StepStatus.SKIPPED, "approval not granted")
                return
        override = False
        while True:
            result = await self._execute_step(step, override)
            if result != "unknown":
                return
            action = await self._await_resolution(step)
            if action == "retry":
                override = True
                state.attempt_offset = state.attempts
                continue
            if action == "skip":
                self._step_status(state, StepStatus.SKIPPED, "skipped by operator")
            else:
                self._step_status(state, StepStatus.FAILED, "failed by operator")
                self._after_failure(step)
            return

    async def _execute_step(self, step: StepSpec, override: bool) -> str:
        state = self.steps[step.id]
        policy = self._policy(step)
        step_timeout = timedelta(seconds=min(step.timeout_seconds or policy.step_timeout_seconds,
                                             policy.step_timeout_seconds))
        state.move(StepStatus.RUNNING)  # the activity writes this transition and its event
        state.started_at = state.started_at or workflow.now()
        prior = self._prior_outputs() if (step.kind is StepKind.VALIDATE or step.preconditions
                                          or step.success_criteria) else {}
        try:
            result = await workflow.execute_activity(
                "run_step",
                StepRunInput(execution_id=self.spec.execution_id,
                             workflow_id=self.spec.workflow_id, tenant=self.spec.tenant,
                             actor=self.spec.actor, environment=self.spec.environment,
                             step=step, policy=policy, fencing_tokens=self.fencing,
                             lease_seconds=LEASE_SECONDS,
                             prior_outputs=prior, override_unknown_outcome=override,
                             attempt_offset=state.attempt_offset),
                result_type=StepResult,
                start_to_close_timeout=step_timeout + STEP_TIMEOUT_GRACE,
                heartbeat_timeout=timedelta(seconds=policy.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=policy.initial_backoff_seconds),
                    backoff_coefficient=policy.backoff_coefficient,
                    maximum_interval=timedelta(seconds=policy.max_backoff_seconds),
                    maximum_attempts=policy.max_attempts,
                    non_retryable_error_types=NON_RETRYABLE_STEP_ERRORS),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=step.summary[:200],
            )
        except ActivityError as err:
            return self._step_failed(step, err)
        state.result = result
        state.attempts = result.attempts  # the activity counts on from attempt_offset
        state.error = None  # an earlier unknown outcome, now resolved by this success
        state.started_at = result.started_at or state.started_at
        state.completed_at = result.completed_at
        state.status = StepStatus.COMPLETED  # the activity wrote this transition and its event
        return "completed"

    def _step_failed(self, step: StepSpec, err: ActivityError) -> str:
        state = self.steps[step.id]
        cause = err.cause
        if isinstance(cause, CancelledError):
            state.error = "cancelled"
            self._step_status(state, StepStatus.CANCELLED, "cancelled; its processes stopped")
            raise asyncio.CancelledError()
        status = StepStatus.FAILED
        if isinstance(cause, ApplicationError):
            details = cause.details[0] if cause.details else None
            if isinstance(details, dict) and "step_id" in details:
                state.result = StepResult.model_validate(details)
                state.attempts = state.result.attempts
                state.started_at = state.result.started_at or state.started_at
                status = state.result.status if state.result.status in FAILED_STEP else status
            if cause.type == "UnknownOutcome":
                state.error = cause.message
                if isinstance(details, dict):
                    state.attempts = int(details.get("attempt") or state.attempts)
                return "unknown"
            state.error = cause.message
            if state.result is not None and state.result.status in FAILED_STEP:
                state.status = state.result.status  # the activity wrote this transition
                self._after_failure(step)
                return "failed"
        elif isinstance(cause, ActivityTimeoutError):
            status = StepStatus.TIMEOUT
            state.error = f"step activity timed out ({cause.type.name if cause.type else ''})"
        else:
            state.error = str(cause or err)
        state.attempts = max(state.attempts, 1)
        self._step_status(state, status, state.error)
        self._after_failure(step)
        return "failed"

    def _after_failure(self, step: StepSpec) -> None:
        if step.failure_handling is FailureHandling.CONTINUE:
            return
        self.stop_launching = True
        if step.failure_handling is FailureHandling.ROLLBACK:
            self.rollback_requested = True

    async def _await_resolution(self, step: StepSpec) -> str:
        state = self.steps[step.id]
        self._step_status(state, StepStatus.WAITING, state.error)
        self.waiting_on = f"operator resolution of step {step.id} (unknown outcome)"
        self._emit("step.unknown_outcome", step_id=step.id, message=state.error,
                   data={"resolve_signal": "resolve", "actions": ["retry", "skip", "fail"]})
        await self._flush()
        await workflow.wait_condition(lambda: step.id in self.resolutions)
        self.waiting_on = None
        res = self.resolutions[step.id]
        self._emit("step.resolved", step_id=step.id, actor=res.actor,
                   message=f"{res.actor} chose {res.action}" + (
                       f": {res.comment}" if res.comment else ""))
        if res.action != "retry":  # a retry closes the crashed attempt as it starts
            await self._flush(resolutions=[res.model_copy(update={"step_id": step.id})])
        if res.action == "retry":
            self._step_status(state, StepStatus.RUNNING, "retry requested by operator")
        return res.action

    # ------------------------------------------------------------------ approvals

    async def _await_gate(self, name: str, rule: GateRule, reason: str) -> bool:
        async with self.gate_lock:
            now = workflow.now()
            window = self._approval_window()
            gate = Gate(name=name, rule=rule, plan_hash=self.spec.plan_hash,
                        requester=self.spec.actor, requested_at=now,
                        expires_at=now + timedelta(seconds=window), reason=reason)
            self.gate = gate
            self.gates.append(gate)
            self.approval_state = ApprovalState.PENDING
            self.waiting_on = f"approval of {name}: {gate.missing()}"
            self._set_status(ExecutionStatus.PENDING_APPROVAL, flush=False,
                             message=f"waiting for approval ({name}): {reason}")
            await self._flush(approvals=[gate.record()])
            decided = lambda: gate.state is not ApprovalState.PENDING  # noqa: E731
            renewer = asyncio.create_task(self._keep_leases(decided)) if self.fencing else None
            try:
                await workflow.wait_condition(decided, timeout=timedelta(seconds=window))
            except TimeoutError:
                gate.state = ApprovalState.EXPIRED
                gate.decided_at = workflow.now()
            finally:
                self.gate = None
                self.waiting_on = None
                if renewer is not None:
                    renewer.cancel()
            self.approval_state = gate.state
            if gate.state is ApprovalState.APPROVED:
                self._set_status(ExecutionStatus.APPROVED, flush=False,
                                 message=f"approved ({name}) by "
                                         f"{', '.join(sorted(gate.approvals))}")
                if name != EXECUTION_GATE:
                    self._set_status(ExecutionStatus.RUNNING, flush=False)
                await self._flush(approvals=[gate.record()])
                return True
            if gate.state is ApprovalState.REJECTED:
                self.error = f"rejected at {name}: " + "; ".join(
                    f"{d['approver']}: {d.get('comment') or ''}" for d in gate.decisions
                    if d.get("decision") == "reject" and d.get("accepted"))
                self.final_status = ExecutionStatus.REJECTED
            else:
                self.error = f"approval of {name} expired after {window:g}s"
                self._emit("approval.expired", message=self.error, data={"gate": name})
                self.final_status = ExecutionStatus.TIMEOUT
            await self._flush(approvals=[gate.record()])
            return False

    def _approval_window(self) -> float:
        """The policy's window for the plan's strictest action (request overrides applied)."""
        return self._policy_max("approval_timeout_seconds")

    async def _decide(self, raw: Any, kind: str) -> DecisionOutcome:
        """Validate, authorise and apply one approve/reject; every outcome is an event."""
        try:
            decision = ApprovalDecision.model_validate(raw)
        except ValidationError as err:
            return await self._refuse(kind, raw, describe_invalid("decision", err))
        gate = self.gate
        if gate is None:
            return await self._refuse(kind, raw, "no approval is pending", decision.approver)
        refusal = gate.precheck(decision, kind)
        if refusal:
            return await self._refuse(kind, raw, refusal, decision.approver)
        auth = await self._authorize(decision.approver, "approve",
                                     None if gate.name == EXECUTION_GATE else gate.name)
        if self.gate is not gate:
            return await self._refuse(kind, raw, "the approval window closed", decision.approver)
        refusal = gate.precheck(decision, kind)  # re-check: other decisions may have landed
        if refusal is None and not auth.allowed:
            refusal = f"not permitted to approve: {auth.reason}"
        if refusal is None:
            refusal = gate.role_refusal(set(auth.roles))
        if refusal:
            return await self._refuse(kind, raw, refusal, decision.approver)
        entry = {"approver": decision.approver, "decision": kind, "comment": decision.comment,
                 "roles": auth.roles, "accepted": True, "at": workflow.now().isoformat()}
        gate.decisions.append(entry)
        if kind == "reject":
            gate.state = ApprovalState.REJECTED
            gate.decided_at = workflow.now()
        else:
            gate.approvals[decision.approver] = entry
            if gate.quorum_met():
                gate.state = ApprovalState.APPROVED
                gate.decided_at = workflow.now()
        self.waiting_on = None if gate.state is not ApprovalState.PENDING else (
            f"approval of {gate.name}: {gate.missing()}")
        self._emit(f"approval.{kind}", actor=decision.approver,
                   message=decision.comment or f"{kind} accepted",
                   data={"gate": gate.name, "accepted": True, "counted": gate.counted(),
                         "required": gate.rule.required_approvals})
        await self._flush(approvals=[gate.record()])
        return DecisionOutcome(accepted=True, reason=f"{kind} recorded" + (
            f"; still needs {gate.missing()}" if gate.state is ApprovalState.PENDING else
            f"; gate {gate.state.value}"), approval_state=gate.state,
            approvals_counted=gate.counted(), approvals_required=gate.rule.required_approvals)

    async def _authorize(self, actor: str, action: str,
                         step_id: str | None = None) -> AuthorizeResult:
        """RBAC (audited) for an operator's approve, cancel or resolve, in the worker."""
        return await workflow.execute_activity(
            "authorize",
            AuthorizeInput(tenant=self.spec.tenant, environment=self.spec.environment,
                           actor=actor, action=action, execution_id=self.spec.execution_id,
                           step_id=step_id),
            result_type=AuthorizeResult, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=AUTHZ_RETRY)

    async def _refuse(self, kind: str, raw: Any, reason: str,
                      actor: str | None = None) -> DecisionOutcome:
        gate = self.gate
        if gate is not None:
            gate.decisions.append({"approver": actor, "decision": kind, "accepted": False,
                                   "reason": reason, "at": workflow.now().isoformat()})
        self._emit(f"{kind}.refused", actor=actor, message=reason,
                   data={"payload": raw if isinstance(raw, dict | str | int | None) else
                         str(raw)[:500]})
        await self._flush(approvals=[gate.record()] if gate else [])
        return DecisionOutcome(accepted=False, reason=reason, approval_state=self.approval_state,
                               approvals_counted=gate.counted() if gate else 0,
                               approvals_required=gate.rule.required_approvals if gate else 0)

    @workflow.signal(name="approve")
    async def approve_signal(self, payload: Any) -> None:
        await self._decide(payload, "approve")

    @workflow.signal(name="reject")
    async def reject_signal(self, payload: Any) -> None:
        await self._decide(payload, "reject")

    @workflow.update(name="approve_update")
    async def approve_update(self, payload: Any) -> DecisionOutcome:
        return await self._decide(payload, "approve")

    @workflow.update(name="reject_update")
    async def reject_update(self, payload: Any) -> DecisionOutcome:
        return await self._decide(payload, "reject")

    @approve_update.validator
    def _validate_approve(self, payload: Any) -> None:
        self._validate_decision(payload, "approve")

    @reject_update.validator
    def _validate_reject(self, payload: Any) -> None:
        self._validate_decision(payload, "reject")

    def _validate_decision(self, payload: Any, kind: str) -> None:
        """Refuse at once what is not a decision at all; the handler judges the rest, so
        that every real decision, accepted or refused, lands on the gate's record."""
        self._validate_payload(ApprovalDecision, payload, "decision")
        if self.gate is None:
            raise ApplicationError(f"no approval is pending (status {self.status.value})",
                                   type="NoApprovalPending")

    # ------------------------------------------------------------------ cancel and resolve

    async def _accept_cancel(self, raw: Any) -> DecisionOutcome:
        try:
            req = CancelRequest.model_validate(raw)
        except ValidationError as err:
            return await self._refuse("cancel", raw, describe_invalid("cancel", err))
        if self.cancel is not None or self.final_status is not None:
            return DecisionOutcome(accepted=False, reason="the execution is already ending")
        auth = await self._authorize(req.actor, "cancel")
        if not auth.allowed and req.actor != self.spec.actor:
            return await self._refuse("cancel", raw, f"not permitted to cancel: {auth.reason}",
                                      req.actor)
        if self.cancel is None:
            self.cancel = req
            self._emit("cancel.requested", actor=req.actor, message=req.reason)
        return DecisionOutcome(accepted=True, reason="cancel accepted")

    @workflow.signal(name="cancel")
    async def cancel_signal(self, payload: Any) -> None:
        await self._accept_cancel(payload)

    @workflow.update(name="cancel_update")
    async def cancel_update(self, payload: Any) -> DecisionOutcome:
        return await self._accept_cancel(payload)

    @cancel_update.validator
    def _validate_cancel(self, payload: Any) -> None:
        self._validate_payload(CancelRequest, payload, "cancel")
        if self.cancel is not None or self.final_status is not None:
            raise ApplicationError("the execution is already ending", type="AlreadyEnding")

    def _validate_payload(self, model: Any, payload: Any, kind: str) -> None:
        try:
            model.model_validate(payload)
        except ValidationError as err:
            raise ApplicationError(describe_invalid(kind, err), type="InvalidPayload") from None

    @workflow.signal(name="resolve")
    async def resolve_signal(self, payload: Any) -> None:
        await self._accept_resolution(payload)

    @workflow.update(name="resolve_update")
    async def resolve_update(self, payload: Any) -> DecisionOutcome:
        return await self._accept_resolution(payload)

    @resolve_update.validator
    def _validate_resolve(self, payload: Any) -> None:
        self._validate_payload(ResolveRequest, payload, "resolve")

    async def _accept_resolution(self, raw: Any) -> DecisionOutcome:
        try:
            req = ResolveRequest.model_validate(raw)
        except ValidationError as err:
            return await self._refuse("resolve", raw, describe_invalid("resolve", err))
        waiting = [s.spec.id for s in self.steps.values() if s.status is StepStatus.WAITING
                   and s.spec.id not in self.resolutions and s.error is not None
                   and self.waiting_on and "unknown outcome" in self.waiting_on]
        step_id = req.step_id or (waiting[0] if waiting else None)
        if step_id is None or step_id not in waiting:
            return await self._refuse("resolve", raw, "no step is waiting for a resolution",
                                      req.actor)
        auth = await self._authorize(req.actor, "resolve", step_id)
        if not auth.allowed:
            return await self._refuse("resolve", raw, f"not permitted to resolve: {auth.reason}",
                                      req.actor)
        self.resolutions[step_id] = req
        return DecisionOutcome(accepted=True, reason=f"{req.action} accepted for {step_id}")

    async def _finish_cancel(self) -> None:
        assert self.cancel is not None
        self._mark_unfinished(StepStatus.CANCELLED, StepStatus.SKIPPED)
        if self.gate is not None:
            self.gate = None
        if self.approval_state is ApprovalState.PENDING:
            self.approval_state = ApprovalState.REJECTED
        clean = await self._rollback(f"cancelled by {self.cancel.actor}: {self.cancel.reason}")
        self._emit("cancel.completed", actor=self.cancel.actor,
                   message="clean cancel" if clean else "cancel finished but cleanup failed",
                   data={"cleanup_ok": clean})
        self.error = self.error or f"cancelled by {self.cancel.actor}: {self.cancel.reason}"
        self.final_status = ExecutionStatus.CANCELLED

    async def _rollback(self, why: str) -> bool:
        """Run rollback entries of completed steps in reverse completion order."""
        done = sorted((s for s in self.steps.values() if s.status is StepStatus.COMPLETED),
                      key=lambda s: (s.completed_at or workflow.now(), s.spec.order),
                      reverse=True)
        by_step: dict[str, list[Any]] = {}
        for entry in self.spec.rollback_plan:
            by_step.setdefault(entry.step_id, []).append(entry)
        entries = [(s, e) for s in done for e in reversed(by_step.get(s.spec.id, []))]
        if not entries:
            return True
        self._emit("rollback.started", message=why,
                   data={"entries": [s.spec.id for s, _ in entries]})
        await self._flush()
        ok = True
        policy = self.policies[ActionClass.MODIFY.value]
        for state, entry in entries:
            timeout = entry.timeout_seconds or policy.step_timeout_seconds
            try:
                await workflow.execute_activity(
                    "run_cleanup",
                    CleanupInput(execution_id=self.spec.execution_id,
                                 workflow_id=self.spec.workflow_id, tenant=self.spec.tenant,
                                 environment=self.spec.environment, step_id=state.spec.id,
                                 target=state.spec.target, command=entry.rollback_action,
                                 timeout_seconds=timeout),
                    result_type=StepResult,
                    start_to_close_timeout=timedelta(seconds=timeout) + STEP_TIMEOUT_GRACE,
                    heartbeat_timeout=timedelta(seconds=policy.heartbeat_timeout_seconds),
                    retry_policy=CLEANUP_RETRY, summary=f"rollback of {state.spec.id}")
                self._emit("rollback.step_completed", step_id=state.spec.id,
                           message=entry.rollback_action)
            except ActivityError as err:
                ok = False
                cause = err.cause
                self._emit("rollback.step_failed", step_id=state.spec.id,
                           message=str(getattr(cause, "message", None) or cause or err))
        self._emit("rollback.completed" if ok else "rollback.failed",
                   message="rollback succeeded" if ok else "rollback had failures")
        await self._flush()
        return ok

    # ------------------------------------------------------------------ locks

    async def _acquire_locks(self) -> bool:
        assets = self.spec.assets
        self.waiting_on = f"locks on {', '.join(assets)}"
        self._emit("locks.requested", data={"assets": assets})
        timeout = self._policy_max("step_timeout_seconds") * 2
        try:
            grant = await workflow.execute_activity(
                "acquire_locks",
                AcquireLocksInput(tenant=self.spec.tenant, assets=assets,
                                  execution_id=self.spec.execution_id,
                                  wait_timeout_seconds=timeout, lease_seconds=LEASE_SECONDS),
                result_type=AcquireLocksResult,
                start_to_close_timeout=timedelta(seconds=timeout + 30),
                heartbeat_timeout=LOCK_HEARTBEAT, retry_policy=LOCK_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"locks on {', '.join(assets)}"[:200])
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError() from None
            self.error = f"could not lock {', '.join(assets)}: " + str(
                getattr(err.cause, "message", None) or err.cause or err)
            self._emit("locks.failed", message=self.error)
            self.final_status = ExecutionStatus.FAILED
            return False
        finally:
            self.waiting_on = None
        self.fencing = dict(grant.tokens)
        self._emit("locks.acquired", data={"tokens": self.fencing})
        return True

    async def _keep_leases(self, done: Any) -> None:
        """Renew held leases while nothing else does (a gate in the middle of a run)."""
        every = timedelta(seconds=LEASE_SECONDS / 3)
        while not done():
            try:
                await workflow.wait_condition(done, timeout=every)
                return
            except TimeoutError:
                pass
            try:
                await workflow.execute_activity(
                    "renew_locks",
                    RenewLocksInput(tenant=self.spec.tenant, execution_id=self.spec.execution_id,
                                    assets=sorted(self.fencing), lease_seconds=LEASE_SECONDS),
                    start_to_close_timeout=timedelta(seconds=20),
                    retry_policy=RetryPolicy(maximum_attempts=3,
                                             non_retryable_error_types=["LockLost"]),
                    summary="renew asset leases")
            except ActivityError as err:
                self._emit("locks.lost", message=str(getattr(err.cause, "message", err)))
                return

    async def _release_locks(self) -> None:
        if not self.fencing:
            return
        try:
            await workflow.execute_activity(
                "release_locks",
                ReleaseLocksInput(tenant=self.spec.tenant, execution_id=self.spec.execution_id,
                                  tokens=self.fencing),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5))
            self._emit("locks.released", data={"assets": sorted(self.fencing)})
        except ActivityError as err:
            self._emit("locks.release_failed", message=str(err.cause or err))
        self.fencing = {}

    # ------------------------------------------------------------------ state and mirror

    def _emit(self, type_: str, *, step_id: str | None = None, from_status: str | None = None,
              to_status: str | None = None, actor: str | None = None,
              message: str | None = None, data: dict[str, Any] | None = None) -> None:
        self.seq += 1
        self.events.append(EventRecord(
            key=f"wf:{self.seq}", type=type_, step_id=step_id, from_status=from_status,
            to_status=to_status, actor=actor, message=message, data=data or {},
            at=workflow.now()))

    def _set_status(self, new: ExecutionStatus, *, flush: bool = False,
                    message: str | None = None) -> None:
        old = self.status
        if old == new:
            return
        check_transition(old, new)
        self.status = new
        self._emit("execution.status", from_status=old.value, to_status=new.value,
                   message=message)
        self.search_attributes_stale = True

    def _upsert_search_attributes(self, initial: bool = False) -> None:
        """Each upsert is a visibility write on the server: done once per mirror batch, and
        the identity attributes only when the starter did not set them already."""
        self.search_attributes_stale = False
        updates = [SA_STATUS.value_set(self.status.value),
                   SA_APPROVAL.value_set(self.approval_state.value)]
        if initial and workflow.info().typed_search_attributes.get(SA_TENANT) is None:
            updates += [SA_TENANT.value_set(self.spec.tenant),
                        SA_ENVIRONMENT.value_set(self.spec.environment.value),
                        SA_ACTOR.value_set(self.spec.actor),
                        SA_SLA.value_set(self.spec.sla_class.value),
                        SA_ASSETS.value_set(self.spec.assets or ["localhost"])]
        workflow.upsert_search_attributes(updates)

    async def _flush(self, **fields: Any) -> MirrorWriteResult:
        """One mirror batch. Batches are serialised and snapshot under the lock, so the
        mirror sees status events in the order the workflow made them."""
        async with self.flush_lock:
            if self.search_attributes_stale:
                self._upsert_search_attributes()
            events, self.events = self.events, []
            write = MirrorWrite(execution_id=self.spec.execution_id,
                                workflow_id=self.spec.workflow_id, status=self.status,
                                approval_state=self.approval_state, events=events, **fields)
            return await workflow.execute_local_activity(
                "mirror_write", write, result_type=MirrorWriteResult,
                start_to_close_timeout=MIRROR_TIMEOUT, retry_policy=MIRROR_RETRY,
                summary="mirror")

    async def _finish(self, final: ExecutionStatus) -> None:
        if self.approval_state is ApprovalState.PENDING:
            self.approval_state = ApprovalState.EXPIRED if final is ExecutionStatus.TIMEOUT \
                else ApprovalState.REJECTED
        self._set_status(final, message=self.error)
        self.completed_at = workflow.now()
        result = self._result()
        dead = []
        if final in (ExecutionStatus.FAILED, ExecutionStatus.TIMEOUT):
            dead = [DeadLetter(step_id=s.spec.id, reason=s.error or s.status.value,
                               error_type=s.result.error_type if s.result else None)
                    for s in self.steps.values() if s.status in FAILED_STEP]
            dead = dead or [DeadLetter(step_id=None, reason=self.error or final.value)]
        await self._flush(dead_letters=dead, steps=[s.record() for s in self.steps.values()],
                          result=result.model_dump(mode="json", exclude={"steps"}),
                          deadline_at=self.deadline,
                          error=self.error, completed_at=self.completed_at,
                          cancel_actor=self.cancel.actor if self.cancel else None,
                          cancel_reason=self.cancel.reason if self.cancel else None)

    def _result(self) -> ExecutionResult:
        steps = []
        for state in self.steps.values():
            if state.result is not None:
                r = state.result.model_copy(update={"status": state.status,
                                                    "error": state.error or state.result.error})
            else:
                r = StepResult(step_id=state.spec.id, status=state.status,
                               attempts=state.attempts, error=state.error,
                               started_at=state.started_at, completed_at=state.completed_at)
            steps.append(r)
        return ExecutionResult(
            execution_id=self.spec.execution_id, workflow_id=self.spec.workflow_id,
            status=self.status, approval_state=self.approval_state, error=self.error,
            cancel_actor=self.cancel.actor if self.cancel else None,
            cancel_reason=self.cancel.reason if self.cancel else None,
            started_at=self.started_at, completed_at=self.completed_at, steps=steps)

    @workflow.query(name="progress")
    def progress(self) -> Progress:
        states = list(self.steps.values())
        total = len(states)
        done = sum(s.status is StepStatus.COMPLETED for s in states)
        failed = sum(s.status in FAILED_STEP for s in states)
        running = [s for s in states if s.status is StepStatus.RUNNING]
        finished = sum(s.status not in (StepStatus.PENDING, StepStatus.RUNNING,
                                        StepStatus.WAITING) for s in states)
        remaining = sum((s.spec.estimated_duration or 5.0) for s in states
                        if s.status in (StepStatus.PENDING, StepStatus.RUNNING,
                                        StepStatus.WAITING))
        estimate = None
        if self.status not in (ExecutionStatus.PENDING_APPROVAL,) and self.completed_at is None:
            estimate = workflow.now() + timedelta(seconds=remaining)
        return Progress(
            execution_id=self.spec.execution_id, workflow_id=self.spec.workflow_id,
            status=self.status, approval_state=self.approval_state, steps_total=total,
            steps_completed=done, steps_failed=failed, steps_running=len(running),
            percent=round(100.0 * finished / total, 1) if total else 100.0,
            current_step=running[0].spec.id if running else None,
            waiting_on=self.waiting_on, estimated_completion=estimate or self.completed_at,
            started_at=self.started_at, steps=[s.progress() for s in states])

    @workflow.query(name="result")
    def result_query(self) -> ExecutionResult:
        return self._result()
