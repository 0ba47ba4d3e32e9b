"""ExecutionWorkflow: one durable execution of an approved plan.

Control flow only: every effect on the world is an activity (steps, locks, RBAC look-ups) or
a local activity (mirror writes, batched so a step costs one round trip). The rooms it uses:
`state` (statuses, always through the status machine, and the run's one ending), `gates`
(approvals), `leases` (asset locks), `steps` with `scheduling` (running the plan),
`safety_checks`, `rollback`, `recording` (events, mirror, search attributes) and `options`
(activity timeouts and retry policies).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from opsconductor.schema.continuation import Continuation
    from opsconductor.schema.decisions import CANCEL_GATE
    from opsconductor.schema.enums import ApprovalState, ExecutionStatus, StepStatus
    from opsconductor.schema.errors import ErrorType
    from opsconductor.schema.messages import (
        CancelRequest,
        DeadLetter,
        DecisionOutcome,
        ExecutionResult,
        Progress,
        ResolveRequest,
        TimeoutPolicy,
    )
    from opsconductor.schema.spec import ExecutionSpec

from opsconductor.workflows.approvals import EXECUTION_GATE, rule_for_level
from opsconductor.workflows.ending import TRUTHFUL_ENDING, close
from opsconductor.workflows.gates import Gates
from opsconductor.workflows.handoff import announce, hand_over, input_models, restore
from opsconductor.workflows.leases import Leases
from opsconductor.workflows.metrics import Waits, record_ending, seconds_between
from opsconductor.workflows.operators import describe_invalid, validate_payload
from opsconductor.workflows.options import lock_wait_seconds
from opsconductor.workflows.recording import Recorder
from opsconductor.workflows.rollback import rollback
from opsconductor.workflows.safety_checks import run_safety_checks
from opsconductor.workflows.scheduling import outcome, policy_max
from opsconductor.workflows.state import FAILED_STEP, RunState
from opsconductor.workflows.steps import StepRunner
from opsconductor.workflows.submission import submission_accepted
from opsconductor.workflows.windows import WINDOW_GATE, WindowGate


async def stop_task(task: asyncio.Task[None]) -> str | None:
    """Cancel a task and wait until it stopped; the error if it failed otherwise."""
    if not task.done():
        task.cancel()
    try:
        await task
    except (asyncio.CancelledError, CancelledError):
        pass
    except Exception as err:  # a bug in workflow code must still end the run honestly
        return f"internal error while cancelling: {type(err).__name__}: {err}"
    return None


@workflow.defn(name="ExecutionWorkflow")
class ExecutionWorkflow:
    @workflow.init
    def __init__(self, spec: ExecutionSpec, continued: Continuation | None = None) -> None:
        self.spec, self.continued = spec, continued = input_models(spec, continued)
        self.state = RunState(spec)
        self.recorder = Recorder(spec, self.state)
        self.leases = Leases(spec, self.state)
        self.gates = Gates(spec, self.state, self.recorder, self.leases)
        self.policies: dict[str, TimeoutPolicy] = {}  # filled by the first mirror write
        self.steps = StepRunner(spec, self.state, self.recorder, self.leases, self.gates,
                                self.policies)
        self.window = WindowGate(spec, self.state, self.recorder)
        self.cancel: CancelRequest | None = None
        self.native_cancel = False
        self.waits = Waits()
        self.execution_seconds = continued.execution_seconds if continued else 0.0
        if continued is not None:  # a later run of a long execution: take its state back
            restore(self.state, continued, self.waits, fencing=self.leases.fencing,
                    policies=self.policies, resolutions=self.steps.resolutions)

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, spec: ExecutionSpec,
                  continued: Continuation | None = None) -> ExecutionResult:
        state, spec, continued = self.state, self.spec, self.continued
        if continued is None:
            state.started_at = workflow.now()
            state.journal.emit("execution.created", to_status=ExecutionStatus.QUEUED.value,
                               actor=spec.actor,
                               message=f"{len(spec.steps)} step(s): {spec.title}")
            if spec.approval_level == 0 and not spec.assets:
                state.set_status(ExecutionStatus.RUNNING)  # nothing to wait for: one write
            self.recorder.upsert_search_attributes(initial=True)
            first = await self.recorder.flush(spec=spec, load_policies=True,
                                              started_at=state.started_at,
                                              run_id=workflow.info().run_id)
            self.policies.update(first.policies)
        else:
            await announce(state, self.recorder, continued)

        body = asyncio.create_task(self._body())
        try:
            await workflow.wait_condition(lambda: body.done() or self.cancel is not None)
            await self._hand_over(body)
        except asyncio.CancelledError:
            self.native_cancel = True
            reason = workflow.cancellation_reason() or "cancelled through Temporal"
            self.cancel = CancelRequest(actor="temporal", reason=str(reason))
            state.journal.emit("cancel.requested", actor="temporal", message=self.cancel.reason)

        if self.cancel is not None:
            await self._finish_cancel(self.cancel, await stop_task(body))
        else:
            try:
                body.result()
            except Exception as err:  # a bug in workflow code must still end the run honestly
                state.end(ExecutionStatus.FAILED, f"internal error: {type(err).__name__}: {err}",
                          override=True)
        state.end(ExecutionStatus.FAILED, "the run ended without an outcome")  # if undecided
        await self.leases.release()
        await self._finish()
        record_ending(self.spec, state, self.waits)
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self.native_cancel:
            raise asyncio.CancelledError(self.cancel.reason if self.cancel else "cancelled")
        if workflow.patched(TRUTHFUL_ENDING):
            return await close(self._result())
        return self._result()

    def _policy_max(self, field: str) -> float:
        return policy_max(self.policies, self.spec.steps, field)

    async def _hand_over(self, body: asyncio.Task[None]) -> None:
        """Continue as new if the steps drained for it, unless a cancel came meanwhile."""
        if (self.cancel is not None or body.exception() is not None
                or not self.steps.handing_off or self.state.ending):
            return
        await self.recorder.flush()  # the journal is not carried: its events go now
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() or self.cancel is not None)
        if self.cancel is None:
            hand_over(self.spec, self.state, self.continued,
                      execution_seconds=self.execution_seconds, fencing=self.leases.fencing,
                      policies=self.policies, waits=self.waits,
                      resolutions=self.steps.resolutions)

    async def _body(self) -> None:
        """Gate, locks, checks, steps, rollback: everything up to the run's ending."""
        state = self.state
        if self.continued is None and not await self._prepare():
            return
        if self.continued is not None and workflow.patched(WINDOW_GATE):
            await self.window._load()  # a later run checks each step against the window too
            self.steps.window = self.window
        wait = self.execution_seconds if self.continued is None else state.seconds_left()
        steps = asyncio.create_task(self.steps.run_all())
        try:
            await workflow.wait_condition(steps.done, timeout=timedelta(seconds=wait))
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            await stop_task(steps)  # the running steps' activities must stop too
            raise
        if not steps.done():
            error = f"execution deadline of {self.execution_seconds:g}s passed"
            state.journal.emit("execution.deadline", message=error)
            state.end(ExecutionStatus.TIMEOUT, error)
            await stop_task(steps)
            state.mark_unfinished(StepStatus.TIMEOUT, StepStatus.SKIPPED)
            return
        steps.result()
        if state.ending or self.steps.handing_off:  # rejected or expired; or handing over
            return
        if self.steps.rollback_requested:
            await rollback(self.spec, state, self.recorder, self.policies,
                           "a failed step asked for rollback")
        elif self.steps.abort_error is not None:
            state.end(ExecutionStatus.FAILED, self.steps.abort_error)
            return
        elif not self.steps.stop_launching and (
                after_error := await run_safety_checks(
                    self.spec, state, self.recorder, "after",
                    windows_gated=self.steps.window is not None)):
            state.end(ExecutionStatus.FAILED, after_error)
            return
        state.end(*outcome(state.steps))

    async def _prepare(self) -> bool:
        """Submission, approval, locks, deadline and `before` checks: may the steps start?"""
        spec, state = self.spec, self.state
        if not await submission_accepted(spec, state, self.recorder):
            return False
        if spec.approval_level > 0:
            asked = workflow.now()
            approved = await self.gates.wait(
                EXECUTION_GATE, rule_for_level(spec.approval_level),
                f"approval level {spec.approval_level}",
                self._policy_max("approval_timeout_seconds"))
            self.waits.approval_seconds = seconds_between(asked, workflow.now())
            if not approved:
                return False
        if workflow.patched(WINDOW_GATE):
            self.steps.window = self.window
            error = await self.window.before_start()
            if error is not None:
                state.end(ExecutionStatus.FAILED, error)
                state.mark_unfinished(StepStatus.SKIPPED, StepStatus.SKIPPED)
                return False
        if spec.assets:
            asked = workflow.now()
            error = await self.leases.acquire(
                lock_wait_seconds(self._policy_max("step_timeout_seconds")))
            self.waits.lock_seconds = seconds_between(asked, workflow.now())
            if error is not None:
                state.end(ExecutionStatus.FAILED, error)
                return False
        self.execution_seconds = self._policy_max("execution_timeout_seconds")
        state.deadline = workflow.now() + timedelta(seconds=self.execution_seconds)
        if state.status is not ExecutionStatus.RUNNING:
            state.set_status(ExecutionStatus.RUNNING)
            await self.recorder.flush(deadline_at=state.deadline)
        error = await run_safety_checks(spec, state, self.recorder, "before",
                                        windows_gated=self.steps.window is not None)
        if error is not None:
            state.end(ExecutionStatus.FAILED, error)
            state.mark_unfinished(StepStatus.SKIPPED, StepStatus.SKIPPED)
            return False
        return True

    async def _finish_cancel(self, cancel: CancelRequest, stop_error: str | None) -> None:
        """Roll back what completed, then end the run cancelled (whatever it was doing)."""
        state = self.state
        state.mark_unfinished(StepStatus.CANCELLED, StepStatus.SKIPPED)
        self.gates.close()
        if state.approval_state is ApprovalState.PENDING:
            state.approval_state = ApprovalState.REJECTED
        clean = await rollback(self.spec, state, self.recorder, self.policies,
                               f"cancelled by {cancel.actor}: {cancel.reason}")
        state.journal.emit(
            "cancel.completed", actor=cancel.actor,
            message="clean cancel" if clean else "cancel finished but cleanup failed",
            data={"cleanup_ok": clean})
        state.end(ExecutionStatus.CANCELLED,
                  stop_error or state.error or f"cancelled by {cancel.actor}: {cancel.reason}",
                  override=True)

    async def _finish(self) -> None:
        """The final status, the steps' final rows, dead letters and the result, in one batch.
        Steps that never started (a rejected, expired or failed-to-lock run) end skipped. A
        partial run dead-letters the steps that failed (they may need running again)."""
        state = self.state
        final = state.final_status or ExecutionStatus.FAILED
        if state.approval_state is ApprovalState.PENDING:
            state.approval_state = (ApprovalState.EXPIRED if final is ExecutionStatus.TIMEOUT
                                    else ApprovalState.REJECTED)
        state.mark_unfinished(StepStatus.CANCELLED, StepStatus.SKIPPED)
        state.set_status(final, message=state.error)
        state.completed_at = workflow.now()
        result = self._result()
        dead: list[DeadLetter] = []
        if final in (ExecutionStatus.FAILED, ExecutionStatus.TIMEOUT, ExecutionStatus.PARTIAL):
            dead = [DeadLetter(step_id=s.spec.id, reason=s.error or s.status.value,
                               error_type=s.result.error_type if s.result else None)
                    for s in state.steps.values() if s.status in FAILED_STEP]
            dead = dead or [DeadLetter(step_id=None, reason=state.error or final.value)]
        await self.recorder.flush(
            dead_letters=dead, steps=[s.record() for s in state.steps.values()],
            result=result.model_dump(mode="json", exclude={"steps"}),
            deadline_at=state.deadline, error=state.error, completed_at=state.completed_at,
            cancel_actor=self.cancel.actor if self.cancel else None,
            cancel_reason=self.cancel.reason if self.cancel else None)

    def _result(self) -> ExecutionResult:
        return self.state.result(self.cancel.actor if self.cancel else None,
                                 self.cancel.reason if self.cancel else None)

    # ------------------------------------------------------------------ approvals

    @workflow.signal(name="approve")
    async def approve_signal(self, payload: Any) -> None:
        await self.gates.decide(payload, "approve")

    @workflow.signal(name="reject")
    async def reject_signal(self, payload: Any) -> None:
        await self.gates.decide(payload, "reject")

    @workflow.update(name="approve_update")
    async def approve_update(self, payload: Any) -> DecisionOutcome:
        return await self.gates.decide(payload, "approve")

    @workflow.update(name="reject_update")
    async def reject_update(self, payload: Any) -> DecisionOutcome:
        return await self.gates.decide(payload, "reject")

    @approve_update.validator
    def _validate_approve(self, payload: Any) -> None:
        self.gates.validate_decision(payload)

    @reject_update.validator
    def _validate_reject(self, payload: Any) -> None:
        self.gates.validate_decision(payload)

    # ------------------------------------------------------------------ cancel

    async def _accept_cancel(self, raw: Any) -> DecisionOutcome:
        try:
            req = CancelRequest.model_validate(raw)
        except ValidationError as err:
            return await self.gates.refuse("cancel", raw, describe_invalid("cancel", err))
        if self.cancel is not None or self.state.ending:
            return DecisionOutcome(accepted=False, reason="the execution is already ending")
        proofs = self.gates.proofs
        replayed = proofs.replayed(req)
        if replayed:
            return await self.gates.refuse("cancel", raw, replayed, req.actor)
        judged = await proofs.judge(req, action="cancel", decision="cancel", gate=CANCEL_GATE,
                                    principal=req.actor, comment=req.reason)
        auth = judged.auth
        if judged.refusal is not None or auth is None:
            return await self.gates.refuse("cancel", raw,
                                           judged.refusal or "the proof was not checked",
                                           req.actor, judged.verdict)
        if not auth.allowed and req.actor != self.spec.actor:
            return await self.gates.refuse("cancel", raw,
                                           f"not permitted to cancel: {auth.reason}", req.actor,
                                           judged.verdict)
        if self.cancel is None:
            self.cancel = req
            self.state.journal.emit("cancel.requested", actor=req.actor, message=req.reason,
                                    data=judged.marks(with_signature=True))
        return DecisionOutcome(accepted=True, reason="cancel accepted")

    @workflow.signal(name="cancel")
    async def cancel_signal(self, payload: Any) -> None:
        await self._accept_cancel(payload)

    @workflow.update(name="cancel_update")
    async def cancel_update(self, payload: Any) -> DecisionOutcome:
        return await self._accept_cancel(payload)

    @cancel_update.validator
    def _validate_cancel(self, payload: Any) -> None:
        validate_payload(CancelRequest, payload, "cancel")
        if self.cancel is not None or self.state.ending:
            raise ApplicationError("the execution is already ending",
                                   type=ErrorType.ALREADY_ENDING.value)

    # ------------------------------------------------------------------ resolve

    async def _accept_resolution(self, raw: Any) -> DecisionOutcome:
        try:
            req = ResolveRequest.model_validate(raw)
        except ValidationError as err:
            return await self.gates.refuse("resolve", raw, describe_invalid("resolve", err))
        waiting = self.steps.waiting_for_resolution()
        step_id = req.step_id or (waiting[0] if waiting else None)
        if step_id is None or step_id not in waiting:
            return await self.gates.refuse("resolve", raw, "no step is waiting for a resolution",
                                           req.actor)
        proofs = self.gates.proofs
        replayed = proofs.replayed(req)
        if replayed:
            return await self.gates.refuse("resolve", raw, replayed, req.actor)
        judged = await proofs.judge(req, action="resolve", decision=f"resolve:{req.action}",
                                    gate=step_id, principal=req.actor, comment=req.comment,
                                    step_id=step_id)
        auth = judged.auth
        if judged.refusal is not None or auth is None:
            return await self.gates.refuse("resolve", raw,
                                           judged.refusal or "the proof was not checked",
                                           req.actor, judged.verdict)
        if not auth.allowed:
            return await self.gates.refuse("resolve", raw,
                                           f"not permitted to resolve: {auth.reason}", req.actor,
                                           judged.verdict)
        if step_id not in self.steps.waiting_for_resolution():  # answered meanwhile
            return await self.gates.refuse("resolve", raw, f"{step_id} was resolved meanwhile",
                                           req.actor, judged.verdict)
        self.steps.resolutions[step_id] = req
        self.steps.resolution_proofs[step_id] = judged.marks(with_signature=True)
        return DecisionOutcome(accepted=True, reason=f"{req.action} accepted for {step_id}")

    @workflow.signal(name="resolve")
    async def resolve_signal(self, payload: Any) -> None:
        await self._accept_resolution(payload)

    @workflow.update(name="resolve_update")
    async def resolve_update(self, payload: Any) -> DecisionOutcome:
        return await self._accept_resolution(payload)

    @resolve_update.validator
    def _validate_resolve(self, payload: Any) -> None:
        validate_payload(ResolveRequest, payload, "resolve")

    # ------------------------------------------------------------------ queries

    @workflow.query(name="progress")
    def progress(self) -> Progress:
        return self.state.progress()

    @workflow.query(name="result")
    def result_query(self) -> ExecutionResult:
        return self._result()
