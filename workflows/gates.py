"""Approval gates as the run lives them: open a gate, judge each decision, close it.

The quorum rules themselves are pure (`workflows/approvals.py`); this room adds the waiting,
the RBAC look-up of each approver, lease renewal while a gate waits mid-run, and the record of
every decision, accepted or refused, on the gate's row and as an event.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Literal

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from opsconductor.schema.decisions import SignatureVerdict
from opsconductor.schema.enums import ApprovalState, ExecutionStatus
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.messages import (
    ApprovalDecision,
    DecisionOutcome,
    GateDecision,
    WaitKind,
)
from opsconductor.schema.spec import ExecutionSpec
from opsconductor.workflows.approvals import EXECUTION_GATE, Gate, GateRule
from opsconductor.workflows.leases import Leases
from opsconductor.workflows.operators import (
    describe_invalid,
    payload_for_event,
    validate_payload,
)
from opsconductor.workflows.proofs import Proofs
from opsconductor.workflows.recording import Recorder
from opsconductor.workflows.state import RunState, Wait

DecisionKind = Literal["approve", "reject"]
MessageKind = Literal["approve", "reject", "cancel", "resolve"]


class Gates:
    """The open gate (at most one at a time) and every gate the run has opened."""

    def __init__(self, spec: ExecutionSpec, state: RunState, recorder: Recorder,
                 leases: Leases) -> None:
        self.spec = spec
        self.state = state
        self.recorder = recorder
        self.leases = leases
        self.gate: Gate | None = None
        self.gates: list[Gate] = []
        self.lock = asyncio.Lock()
        self.proofs = Proofs(spec)  # who made each decision: every operator message's check

    def _waiting(self, gate: Gate) -> Wait:
        return Wait(WaitKind.APPROVAL, f"approval of {gate.name}: {gate.missing()}")

    async def wait(self, name: str, rule: GateRule, reason: str, window: float) -> bool:
        """Open a gate and wait for its decision; False (and the run's ending) when it was
        rejected or expired."""
        state = self.state
        async with self.lock:
            now = workflow.now()
            gate = Gate(name=name, rule=rule, plan_hash=self.spec.plan_hash,
                        requester=self.spec.actor, requested_at=now,
                        expires_at=now + timedelta(seconds=window), reason=reason)
            self.gate = gate
            self.gates.append(gate)
            state.approval_state = ApprovalState.PENDING
            state.wait = self._waiting(gate)
            state.set_status(ExecutionStatus.PENDING_APPROVAL,
                             message=f"waiting for approval ({name}): {reason}")
            await self.recorder.flush(approvals=[gate.record()])
            decided = lambda: gate.state is not ApprovalState.PENDING  # noqa: E731
            renewer = (asyncio.create_task(self.leases.keep(decided)) if self.leases.fencing
                       else None)
            try:
                await workflow.wait_condition(decided, timeout=timedelta(seconds=window))
            except TimeoutError:
                gate.state = ApprovalState.EXPIRED
                gate.decided_at = workflow.now()
            finally:
                self.gate = None
                state.wait = None
                if renewer is not None:
                    renewer.cancel()
            state.approval_state = gate.state
            if gate.state is ApprovalState.APPROVED:
                state.set_status(ExecutionStatus.APPROVED,
                                 message=f"approved ({name}) by "
                                         f"{', '.join(sorted(gate.approvals))}")
                if name != EXECUTION_GATE:
                    state.set_status(ExecutionStatus.RUNNING)
                await self.recorder.flush(approvals=[gate.record()])
                return True
            if gate.state is ApprovalState.REJECTED:
                state.end(ExecutionStatus.REJECTED, f"rejected at {name}: {gate.rejections()}")
            else:
                error = f"approval of {name} expired after {window:g}s"
                state.journal.emit("approval.expired", message=error, data={"gate": name})
                state.end(ExecutionStatus.TIMEOUT, error)
            await self.recorder.flush(approvals=[gate.record()])
            return False

    async def decide(self, raw: Any, kind: DecisionKind) -> DecisionOutcome:
        """Validate, authorise and apply one approve/reject; every outcome is an event."""
        try:
            decision = ApprovalDecision.model_validate(raw)
        except ValidationError as err:
            return await self.refuse(kind, raw, describe_invalid("decision", err))
        gate = self.gate
        if gate is None:
            return await self.refuse(kind, raw, "no approval is pending", decision.approver)
        refusal = self.proofs.replayed(decision) or gate.precheck(decision, kind)
        if refusal:
            return await self.refuse(kind, raw, refusal, decision.approver)
        judged = await self.proofs.judge(
            decision, action="approve", decision=kind, gate=gate.name,
            principal=decision.approver, comment=decision.comment,
            step_id=None if gate.name == EXECUTION_GATE else gate.name)
        auth = judged.auth
        if judged.refusal is not None or auth is None:
            return await self.refuse(kind, raw, judged.refusal or "the proof was not checked",
                                     decision.approver, judged.verdict)
        if self.gate is not gate:
            return await self.refuse(kind, raw, "the approval window closed", decision.approver,
                                     judged.verdict)
        refusal = gate.precheck(decision, kind)  # re-check: other decisions may have landed
        if refusal is None and not auth.allowed:
            refusal = f"not permitted to approve: {auth.reason}"
        if refusal is None:
            refusal = gate.role_refusal(set(auth.roles))
        if refusal:
            return await self.refuse(kind, raw, refusal, decision.approver, judged.verdict)
        entry = GateDecision(approver=decision.approver, decision=kind, accepted=True,
                             comment=decision.comment, roles=auth.roles, at=workflow.now(),
                             **judged.proof())
        gate.decisions.append(entry)
        if kind == "reject":
            gate.state = ApprovalState.REJECTED
            gate.decided_at = workflow.now()
        else:
            gate.approvals[decision.approver] = entry
            if gate.quorum_met():
                gate.state = ApprovalState.APPROVED
                gate.decided_at = workflow.now()
        self.state.wait = self._waiting(gate) if gate.state is ApprovalState.PENDING else None
        self.state.journal.emit(
            f"approval.{kind}", actor=decision.approver,
            message=decision.comment or f"{kind} accepted",
            data={"gate": gate.name, "accepted": True, "counted": gate.counted(),
                  "required": gate.rule.required_approvals, **judged.marks()})
        await self.recorder.flush(approvals=[gate.record()])
        return DecisionOutcome(accepted=True, reason=f"{kind} recorded" + (
            f"; still needs {gate.missing()}" if gate.state is ApprovalState.PENDING else
            f"; gate {gate.state.value}"), approval_state=gate.state,
            approvals_counted=gate.counted(), approvals_required=gate.rule.required_approvals)

    async def refuse(self, kind: MessageKind, raw: Any, reason: str,
                     actor: str | None = None,
                     verdict: SignatureVerdict | None = None) -> DecisionOutcome:
        """Record a refused operator message (on the open gate too) and say why; `verdict`:
        what the proof check found, when it got that far."""
        gate = self.gate
        marks = {k: v for k, v in verdict.marks().items() if k != "signature"} if verdict else {}
        if gate is not None:
            gate.decisions.append(GateDecision(
                approver=actor, decision=kind, accepted=False, reason=reason, at=workflow.now(),
                signed=verdict.signed if verdict else None,
                key_fingerprint=verdict.key_fingerprint if verdict else None))
        self.state.journal.emit(f"{kind}.refused", actor=actor, message=reason,
                                data={"payload": payload_for_event(raw), **marks})
        await self.recorder.flush(approvals=[gate.record()] if gate else [])
        return DecisionOutcome(accepted=False, reason=reason,
                               approval_state=self.state.approval_state,
                               approvals_counted=gate.counted() if gate else 0,
                               approvals_required=gate.rule.required_approvals if gate else 0)

    def close(self) -> None:
        """No gate is open any more (the run is being cancelled): decisions are refused."""
        self.gate = None

    def validate_decision(self, payload: Any) -> None:
        """Refuse at once what is not a decision at all; the handler judges the rest, so
        that every real decision, accepted or refused, lands on the gate's record."""
        validate_payload(ApprovalDecision, payload, "decision")
        if self.gate is None:
            raise ApplicationError(
                f"no approval is pending (status {self.state.status.value})",
                type=ErrorType.NO_APPROVAL_PENDING.value)
