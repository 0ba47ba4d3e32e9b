"""One gate for everything that acts on a host: steps, command checks, safety checks, rollback.

Every path that can start a process or change a system asks this gate first, with what it is
about to run. The command is classified (`safety.command_policy`): a command that can run an
arbitrary program (`env sh -c`, `find -exec`, `xargs`, shell syntax, ...) is authorized as
`shell` as well as under its own tool's name, so a rule that denies `shell` cannot be walked
around by naming another tool. Checks are meant to read: a check command that does more than
read needs `shell` too. Each tool evaluated is one audited decision, with the rule that
decided it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opsconductor.safety import rbac
from opsconductor.safety.command_policy import SHELL_TOOL, Capability, classify_command
from opsconductor.schema.enums import StepKind
from opsconductor.schema.spec import ExecutionSpec, StepSpec

CHECK_TOOL = "check"  # the tool name of a check command that only reads


class ActionDenied(PermissionError):
    """RBAC refused an action; nothing ran. The message names the rule and why."""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    entries: list[rbac.AuditEntry] = field(default_factory=list)


def judged_command(step: StepSpec) -> str | None:
    """The command text RBAC must classify for a step, or None when there is none to judge:
    not a command step, or one its tool built from typed inputs as an argument list (its
    program is the tool itself, so the tool's own permission is the program's)."""
    if step.kind is not StepKind.COMMAND or step.argv is not None:
        return None
    return step.command


def tools_to_authorize(tool: str, command: str | None, *,
                       read_only_expected: bool = False) -> tuple[tuple[str, ...], str | None]:
    """The tool names RBAC must allow for this action, and why (the classification)."""
    if command is None:
        return (tool,), None
    c = classify_command(command)
    if read_only_expected and c.capability is not Capability.READ:
        return (tool, SHELL_TOOL), f"{c.reason}: a check may only read"
    return c.rbac_tools(tool), c.reason if c.runs_any_program else None


@dataclass
class ActionGate:
    """Decides, per action, for one actor of one execution; audits every decision."""

    engine: rbac.RbacEngine
    pool: Any
    tenant: str
    actor: str
    environment: str
    execution_id: str | None = None
    step_id: str | None = None

    async def decide(self, *, tool: str, resource: str | None, command: str | None = None,
                     read_only_expected: bool = False) -> Verdict:
        """Evaluate without recording (the caller records the entries in its own
        transaction); denied if any of the tools is denied."""
        tools, why = tools_to_authorize(tool, command, read_only_expected=read_only_expected)
        policy = await self.engine.policy(self.pool)
        target = resource or "localhost"
        entries: list[rbac.AuditEntry] = []
        for name in tools:
            decision = policy.evaluate(tenant=self.tenant, actor=self.actor, action="execute",
                                       environment=self.environment, resource=target,
                                       tool=name)
            entries.append(rbac.AuditEntry(decision, self.tenant, self.actor, "execute",
                                           self.environment, target, name, self.execution_id,
                                           self.step_id))
            if not decision.allowed:
                as_what = f" (as {name}: {why})" if name != tool and why else ""
                return Verdict(False, f"denied: {self.actor} may not execute {tool}{as_what} "
                                      f"on {target} in {self.environment}: {decision.reason}",
                               entries)
        return Verdict(True, entries[-1].decision.reason, entries)

    async def require(self, *, tool: str, resource: str | None, command: str | None = None,
                      read_only_expected: bool = False) -> Verdict:
        """Decide and record now; raise `ActionDenied` when refused (nothing may run)."""
        verdict = await self.decide(tool=tool, resource=resource, command=command,
                                    read_only_expected=read_only_expected)
        await rbac.audit_many(self.pool, verdict.entries)
        if not verdict.allowed:
            raise ActionDenied(verdict.reason)
        return verdict


@dataclass(frozen=True)
class PlannedAction:
    """Something a plan will run on a host, as the gate must judge it."""

    step_id: str
    what: str  # step / precondition / success criterion / validate check / safety check / rollback
    tool: str
    resource: str | None
    command: str | None
    read_only_expected: bool = False


def planned_actions(spec: ExecutionSpec, fleets: Mapping[str, Sequence[str]] | None = None,
                    ) -> list[PlannedAction]:
    """Everything the plan can run on a host: each step, each `command:` check wherever it
    stands, each rollback action. Submission judges them all before anything starts.
    `fleets`: a fleet step's resources (its targets' asset ids): judged on each of them."""
    from opsconductor.activities.checks import command_of

    by_id = {s.id: s for s in spec.steps}
    out: list[PlannedAction] = []

    def checks(step_id: str, what: str, items: list[Any], resource: str | None) -> None:
        for item in items:
            command = command_of(item)
            if command is not None:
                out.append(PlannedAction(step_id, what, CHECK_TOOL, resource, command, True))

    def places(step: StepSpec | None) -> Sequence[str | None]:
        if step is None:
            return [None]
        return (fleets or {}).get(step.id) or [step.target]

    for s in spec.steps:
        for where in places(s):
            out.append(PlannedAction(s.id, "step", s.tool, where, judged_command(s)))
            checks(s.id, "precondition", s.preconditions, where)
            checks(s.id, "success criterion", s.success_criteria, where)
            if s.kind is StepKind.VALIDATE:
                checks(s.id, "validate check", list(s.inputs.get("checks") or []), where)
    for i, c in enumerate(spec.safety_checks):
        checks(f"safety_checks[{i}]", "safety check", [c.check], c.target)
    for entry in spec.rollback_plan:
        for where in places(by_id.get(entry.step_id)):
            out.append(PlannedAction(entry.step_id, "rollback", SHELL_TOOL, where,
                                     entry.rollback_action))
    return out
