"""One gate for everything that acts on a host: steps, command checks, safety checks, rollback.

Every path that can start a process or change a system asks this gate first, with what it is
about to run, and the gate decides on what it *is*, never on how it is worded:

- a step whose tool and inputs map onto a typed probe (`safety.probes`) is that probe: a
  fixed read-only argument list. It is authorized as its tool and as `probe:<name>`, and what
  runs is the probe's argv, whatever `command` text the step also carries;
- anything else that runs on a host — `shell`, a free-text `command`, a script, a check or
  rollback line that is not an exact probe form, a changing action of any tool, an `env` or
  `working_directory` beyond a probe's — is free text and is authorized as `shell` too,
  always. A read tool therefore can never carry a change: a change is not a probe.

The old classifier (`safety.command_policy`) decides nothing here; the dry run shows its
opinion to `shell` holders as a warning. Each tool name evaluated is one audited decision,
with the rule that decided it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opsconductor.safety import rbac
from opsconductor.safety.probes import (
    CATALOG_NO_PROBE,
    Probe,
    ProbeError,
    catalog_form,
    probe_for,
)
from opsconductor.schema.enums import ActionClass, StepKind
from opsconductor.schema.spec import ExecutionSpec, StepSpec

CHECK_TOOL = "check"  # the tool name of a check command that only reads
SHELL_TOOL = "shell"  # free text: runs any program
TEXT_TOOL = "ssh_command_read"  # how a bare command line (check, rollback) is read for a probe


class ActionDenied(PermissionError):
    """RBAC refused an action; nothing ran. The message names the rule and why."""


@dataclass(frozen=True)
class Operation:
    """What an action is, for RBAC: the probe it runs (None: free text), the tool names that
    must all be allowed, and why `shell` is among them."""

    probe: Probe | None
    tools: tuple[str, ...]
    why: str | None = None


def operation_of(tool: str, command: str | None, *, inputs: Mapping[str, Any] | None = None,
                 read_only_expected: bool = False) -> Operation:
    """The operation an action is. `inputs`: the step's validated inputs (a step); None for a
    bare command line (a check, a rollback action), which is a probe only in an exact form."""
    if command is None and inputs is None:
        return Operation(None, (tool,))
    source, given = (tool, inputs) if inputs is not None else (TEXT_TOOL, {"command": command})
    why = None
    try:
        probe = probe_for(source, given)
    except ProbeError as err:
        probe, why = None, str(err)
    if probe is not None:
        return Operation(probe, tuple(dict.fromkeys((tool, f"probe:{probe.name}"))))
    if command is None:
        return Operation(None, (tool,))  # not a command step (http, sql, noop, ...)
    if inputs is not None and tool in CATALOG_NO_PROBE and catalog_form(tool, inputs):
        why = f"not a probe: {CATALOG_NO_PROBE[tool]}"  # the documented reason, first
    if why is None:
        why = ("a check may only read: not a probe" if read_only_expected
               else "free text: not a probe")
    return Operation(None, tuple(dict.fromkeys((tool, SHELL_TOOL))), why)


def tools_to_authorize(tool: str, command: str | None, *, read_only_expected: bool = False,
                       inputs: Mapping[str, Any] | None = None,
                       ) -> tuple[tuple[str, ...], str | None]:
    """The tool names RBAC must allow for this action, and why `shell` is among them."""
    op = operation_of(tool, command, inputs=inputs, read_only_expected=read_only_expected)
    return op.tools, op.why


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    entries: list[rbac.AuditEntry] = field(default_factory=list)
    probe: Probe | None = None  # what runs, when the action is a probe


def judged_command(step: StepSpec) -> str | None:
    """The command text RBAC must classify for a step, or None when there is none to judge:
    not a command step, or a change its tool built from typed inputs as an argument list (its
    program is the tool itself, so the tool's own permission is the program's). A *read* tool
    built that way is judged by its line: a probe when its inputs map onto one, else free text
    (`shell`): what a read permission grants is probes, never a program with any flags."""
    if step.kind is not StepKind.COMMAND:
        return None
    if step.argv is not None and step.action_class is not ActionClass.READ:
        return None
    return step.command


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
                     read_only_expected: bool = False,
                     inputs: Mapping[str, Any] | None = None) -> Verdict:
        """Evaluate without recording (the caller records the entries in its own
        transaction); denied if any of the tools is denied."""
        op = operation_of(tool, command, inputs=inputs, read_only_expected=read_only_expected)
        tools, why = op.tools, op.why
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
                               entries, op.probe)
        return Verdict(True, entries[-1].decision.reason, entries, op.probe)

    async def require(self, *, tool: str, resource: str | None, command: str | None = None,
                      read_only_expected: bool = False,
                      inputs: Mapping[str, Any] | None = None) -> Verdict:
        """Decide and record now; raise `ActionDenied` when refused (nothing may run)."""
        verdict = await self.decide(tool=tool, resource=resource, command=command,
                                    read_only_expected=read_only_expected, inputs=inputs)
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
    inputs: dict[str, Any] | None = None  # a step's validated inputs (None: a bare line)


def planned_actions(spec: ExecutionSpec, fleets: Mapping[str, Sequence[str]] | None = None,
                    ) -> list[PlannedAction]:
    """Everything the plan can run on a host: each step, each `command:` check wherever it
    stands, each rollback action. Submission judges them all before anything starts.
    `fleets`: a fleet step's resources (its targets' asset ids): judged on each of them."""
    from opsconductor.activities.check_commands import command_of

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
            command_step = s.kind == StepKind.COMMAND
            out.append(PlannedAction(s.id, "step", s.tool, where, judged_command(s),
                                     inputs=s.inputs if command_step else None))
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
