"""Approval gates: quorum rules and the bookkeeping of one gate. Pure and deterministic.

Quorum per level (the request's `approval_level` gates the whole execution):
  level 1: one approval from a holder of `approver`;
  level 2: two distinct approvers holding `approver`;
  level 3: two distinct approvers, each holding `approver` or `senior_approver`, at least one
           of them holding `senior_approver` (a senior needs no second role).
An approval point gates just before its step: one approval (two when its risk is critical)
from a holder of its `approver_role` (default `approver`). The requester never approves their
own execution, an approver counts once, and one valid rejection rejects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from opsconductor.schema.enums import ApprovalState
from opsconductor.schema.messages import ApprovalDecision, ApprovalRecord, GateDecision
from opsconductor.schema.request import ApprovalPoint

APPROVER_ROLE = "approver"
SENIOR_ROLE = "senior_approver"
EXECUTION_GATE = "execution"


@dataclass
class GateRule:
    required_approvals: int
    required_role: str
    senior_role: str | None = None


def rule_for_level(level: int) -> GateRule:
    if level <= 1:
        return GateRule(1, APPROVER_ROLE)
    if level == 2:
        return GateRule(2, APPROVER_ROLE)
    return GateRule(2, APPROVER_ROLE, SENIOR_ROLE)


def rule_for_point(point: ApprovalPoint) -> GateRule:
    return GateRule(2 if point.risk_level == "critical" else 1,
                    point.approver_role or APPROVER_ROLE)


def missing_text(rule: GateRule, approver_roles: list[set[str]]) -> str:
    """What a gate still needs, in words an approver can act on, given the roles of the
    approvals it has."""
    short = max(0, rule.required_approvals - len(approver_roles))
    senior = rule.senior_role
    if senior and not any(senior in roles for roles in approver_roles):
        if short <= 1:
            return f"1 more approval, from a holder of {senior!r}"
        return (f"{short} more approvals from distinct holders of {rule.required_role!r} or "
                f"{senior!r}, at least one of them {senior!r}")
    if short:
        return f"{short} more approval(s) with role {rule.required_role!r}"
    return "nothing"


@dataclass
class Gate:
    name: str
    rule: GateRule
    plan_hash: str
    requester: str
    requested_at: datetime
    expires_at: datetime
    reason: str = ""
    state: ApprovalState = ApprovalState.PENDING
    approvals: dict[str, GateDecision] = field(default_factory=dict)  # approver -> decision
    decisions: list[GateDecision] = field(default_factory=list)  # every decision, in order
    decided_at: datetime | None = None

    def precheck(self, decision: ApprovalDecision, kind: str) -> str | None:
        """Refusals that need no role lookup; None means go on to the role check."""
        if self.state is not ApprovalState.PENDING:
            return f"gate {self.name!r} is already {self.state.value}"
        if decision.approver == self.requester:
            return f"{decision.approver} requested this execution and cannot {kind} it"
        if decision.plan_hash and decision.plan_hash != self.plan_hash:
            return (f"plan hash mismatch: the decision is for {decision.plan_hash[:12]}…, "
                    f"the execution's plan is {self.plan_hash[:12]}…")
        if kind == "approve" and decision.approver in self.approvals:
            return f"{decision.approver} already approved; each approver counts once"
        return None

    def eligible_roles(self) -> set[str]:
        """Roles that may move this gate: the required one, and the senior one where a senior
        is needed (a senior approver counts as an approver there)."""
        return {self.rule.required_role} | ({self.rule.senior_role} if self.rule.senior_role
                                            else set())

    def role_refusal(self, roles: set[str]) -> str | None:
        if not roles & self.eligible_roles():
            wanted = " or ".join(repr(r) for r in sorted(self.eligible_roles()))
            return f"approver lacks the required role {wanted}"
        return None

    def has_senior(self) -> bool:
        return any(SENIOR_ROLE in d.roles for d in self.approvals.values())

    def counted(self) -> int:
        return len(self.approvals)

    def quorum_met(self) -> bool:
        if self.counted() < self.rule.required_approvals:
            return False
        return self.rule.senior_role is None or self.has_senior()

    def missing(self) -> str:
        return missing_text(self.rule, [set(d.roles) for d in self.approvals.values()])

    def record(self) -> ApprovalRecord:
        return ApprovalRecord(
            gate=self.name, state=self.state, plan_hash=self.plan_hash,
            required_approvals=self.rule.required_approvals,
            required_role=self.rule.required_role, senior_role=self.rule.senior_role,
            requested_at=self.requested_at, expires_at=self.expires_at,
            decided_at=self.decided_at,
            decisions=[d.model_dump(mode="json") for d in self.decisions])

    def rejections(self) -> str:
        """`bob: too risky; carol: ...`: the accepted rejections, for the run's error."""
        return "; ".join(f"{d.approver}: {d.comment or ''}" for d in self.decisions
                         if d.decision == "reject" and d.accepted)
