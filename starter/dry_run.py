"""Dry run: how a plan would run, with no side effect.

Validates the request (every problem with its field path), resolves targets from the
inventory file (an Asset Service is not called: such targets are shown as resolved at run
time) and a fleet's targets as submission does (a selector asks the Asset Service when one is
configured, read only), authorizes every step, and each fleet target on its own asset,
against the RBAC policy as the worker would (the policy file,
and the database's rule tables when the caller passes a connection: read, never written), and
describes each step: tool -> executor, the command or request, target and
connector, failure handling as interpreted beside the text as written, dependencies after
wildcard expansion, approval gates and checkpoints. What only run time can know (an asset
query's results, the steps that fan out over them) is shown as such.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from opsconductor.schema.spec import StepSpec, approval_points_for, build_spec
from opsconductor.schema.validation import Problem, RequestValidationError, validate_request

EXECUTOR_OF_KIND = {"command": "command", "http": "http", "sql": "sql",
                    "file_transfer": "file transfer", "validate": "checks", "noop": "noop",
                    "asset_query": "Asset Service query",
                    "service": "service (POST /execute-plan)"}


class StepPlan(BaseModel):
    id: str
    tool: str
    executor: str
    action_class: str
    runs: str  # the command line, the request, or what the step does
    target: str
    connector: str
    failure_handling: str
    failure_handling_text: str
    failure_rule: str
    depends_on: list[str]
    depends_on_written: list[str] | None = None
    gate: str | None = None
    checkpoint: bool = False
    execution_location: str | None = None
    requires_credentials: Any = None
    run_time: list[str] = Field(default_factory=list)  # what only run time can know
    allowed: bool = True
    rbac_reason: str = ""
    probe: str | None = None  # the typed probe the step runs as (None: free text, `shell`)
    argv: list[str] | None = None  # what the probe execs (or its cmdlet line)
    probe_line: str | None = None  # the same, readable (a summary: each part's, in order)
    warning: str | None = None  # free text: the old classifier's opinion, for `shell` holders


class DryRunReport(BaseModel):
    would_run: bool
    problems: list[Problem] = Field(default_factory=list)
    tenant: str | None = None
    environment: str | None = None
    approval_level: int = 0
    sla_class: str | None = None
    mode: str | None = None
    steps: list[StepPlan] = Field(default_factory=list)
    policy_source: str = "policy file"  # what the RBAC decisions above were made on


def _runs(step: StepSpec) -> str:
    i = step.inputs
    if step.kind.value == "command":
        return step.command or ""
    if step.kind.value == "http":
        auth = f" ({i['auth']['type']} auth as {i['auth'].get('username')})" if i.get("auth") \
            else ""
        return f"{i.get('method', 'GET')} {i.get('url')}{auth}"
    if step.kind.value == "sql":
        return str(i.get("query"))
    if step.kind.value == "asset_query":
        q = {k: v for k, v in i.items() if v not in (None, [], {})}
        return f"asset query {q}"
    if step.kind.value == "service":
        from opsconductor.schema.catalog import SERVICE_SPELLING

        return (f"POST {step.connector}/execute-plan, step tool "
                f"{SERVICE_SPELLING.get(step.tool, step.tool)!r}, inputs {i}")
    if step.kind.value == "validate":
        return "checks: " + "; ".join(str(c) for c in i.get("checks", []))
    if step.kind.value == "file_transfer":
        return f"{i.get('direction')} {i.get('source')} -> {i.get('destination')}"
    return step.kind.value


async def _targets(specs: list[StepSpec]) -> tuple[dict[str, Any], list[str], str]:
    """Targets resolved from the inventory file only (no remote call)."""
    from opsconductor.activities.assets import is_local_target, load_inventory
    from opsconductor.schema.config import load_settings

    settings = load_settings()
    path = settings.inventory_path()
    found: dict[str, Any] = {}
    unknown: list[str] = []
    inventory = load_inventory(path) if path is not None and path.exists() else None
    for s in specs:
        t = s.target
        if t is None or is_local_target(t) or t in found:
            continue
        asset = inventory.find(t) if inventory is not None else None
        if asset is not None:
            found[t] = asset
        elif not settings.asset_service_url:
            unknown.append(t)
    return found, unknown, ("the Asset Service (at run time)" if settings.asset_service_url
                            else f"inventory {path}")


def _judge(policy: Any, req: Any, tool: str, resource: str, command: str | None,
           read_only_expected: bool, inputs: Any = None) -> tuple[bool, str]:
    """The worker's decision for one action: every tool it must be allowed as (`shell` too for
    free text, anything that is not a probe)."""
    from opsconductor.activities.authorization import tools_to_authorize

    tools, why = tools_to_authorize(tool, command, read_only_expected=read_only_expected,
                                    inputs=inputs)
    reason = ""
    for name in tools:
        decision = policy.evaluate(tenant=req.tenant, actor=req.actor, resource=resource,
                                   tool=name, action="execute",
                                   environment=req.environment.value)
        reason = decision.reason if name == tool or not why else f"as {name} ({why}): " \
            f"{decision.reason}"
        if not decision.allowed:
            return False, reason
    return True, reason


async def dry_run(raw: Any, db: Any = None, *, db_problem: str | None = None) -> DryRunReport:
    """Everything `run` would check and decide, described, with nothing started or written.
    `db`: a PostgreSQL connection or pool whose rule tables join the policy file;
    `db_problem`: why there is none (said in the report)."""
    from opsconductor.activities.authorization import judged_command, planned_actions
    from opsconductor.activities.checks import expression_problems
    from opsconductor.activities.executors.command import connection_problems
    from opsconductor.activities.fleet import check_fleets
    from opsconductor.safety import rbac
    from opsconductor.schema.config import load_settings

    try:
        req = validate_request(raw)
    except RequestValidationError as err:
        return DryRunReport(would_run=False, problems=err.problems)
    spec = build_spec(req, execution_id="dry-run", workflow_id="dry-run",
                      idempotency_key="dry-run")
    specs = spec.steps
    from opsconductor.activities.assets import InventoryError
    from opsconductor.activities.service_clients import unconfigured_services

    try:
        assets, unknown, where = await _targets(specs)
    except InventoryError as err:
        return DryRunReport(would_run=False, problems=[Problem(path="inventory",
                                                               message=str(err))])
    problems: list[Problem] = []
    index = {s.id: i for i, s in enumerate(req.steps)}
    problems += [Problem(path=f"plan.plan.steps[{index[sid]}].tool", message=why)
                 for sid, why in unconfigured_services(specs, load_settings())]
    for s in specs:
        if s.target in unknown:
            problems.append(Problem(path=f"plan.plan.steps[{index[s.id]}].inputs.target",
                                    message=f"unknown asset {s.target!r} (not in {where})"))
    problems += [Problem(path=path, message=why) for path, why in expression_problems(spec)]
    fleet_problems, fleets = await check_fleets(req, load_settings())
    problems += fleet_problems
    policy = await rbac.load_policy(db)
    source = ("policy file and rule tables" if db is not None else
              f"policy file only ({db_problem or 'no database given'})")
    denied_targets: dict[str, list[str]] = {}  # fleet step -> targets it may not act on
    for action in planned_actions(spec, fleets):
        if action.what == "step" and action.step_id not in fleets:
            continue  # judged with its step below
        resource = (assets[action.resource].id if action.resource in assets
                    and assets[action.resource] is not None else action.resource)
        ok, why = _judge(policy, req, action.tool, resource or "localhost", action.command,
                         action.read_only_expected, action.inputs)
        if not ok:
            if action.what == "step":
                denied_targets.setdefault(action.step_id, []).append(resource or "localhost")
            path = (f"plan.plan.{action.step_id}" if action.step_id not in index
                    else f"plan.plan.steps[{index[action.step_id]}]")
            where = f" on {resource}" if action.step_id in fleets else ""
            problems.append(Problem(path=path, message=f"{action.what}{where}: {why}"))
    gates = {p.step_id: p for p in approval_points_for(req)}
    steps: list[StepPlan] = []
    for s in specs:
        i = index[s.id]
        asset = assets.get(s.target) if s.target else None
        connector = s.connector or (asset.connector if asset is not None else
                                    ("local" if s.target is None and not s.templated
                                     else "resolved at run time"))
        if s.kind.value == "asset_query":
            connector = "asset-service"
        elif s.kind.value == "command" and (asset is not None or
                                            (s.target is None and not s.templated)):
            for why in connection_problems(s.connection, asset, connector):
                field, _, message = why.partition(": ")
                problems.append(Problem(path=f"plan.plan.steps[{i}].{field}", message=message))
        resource = (asset.id if asset is not None else s.target) or "localhost"
        allowed, reason = True, "decided per asset at run time (the hosts are not known yet)"
        if s.id in fleets:
            denied = denied_targets.get(s.id, [])
            allowed = not denied
            reason = (f"denied on {len(denied)} of {len(fleets[s.id])} targets: "
                      f"{_listed(denied)}" if denied else
                      f"allowed on each of its {len(fleets[s.id])} targets")
        elif not s.fan_out_from:
            allowed, reason = _judge(policy, req, s.tool, resource,
                                     judged_command(s), False,
                                     s.inputs if s.kind.value == "command" else None)
        if not allowed and s.id not in fleets:  # a fleet's denials are listed per target
            problems.append(Problem(path=f"plan.plan.steps[{i}]", message=(
                f"denied: {req.actor} may not execute {s.tool} on {resource} in "
                f"{req.environment.value}: {reason}")))
        run_time = []
        if s.kind.value == "asset_query":
            run_time.append("the assets it returns")
        if s.fan_out_from:
            run_time.append(f"runs once per asset returned by {s.fan_out_from} "
                            f"(variants {s.id}#1..n; target = each asset's hostname)")
        elif s.templated:
            run_time.append("rendered from " + ", ".join(sorted({p.source for p in
                                                                  s.placeholders})))
        if s.placeholders:
            run_time.append("placeholders: " + ", ".join(p.text for p in s.placeholders))
        if s.fleet is not None:
            f = s.fleet
            which = (f"{len(f.targets)} listed target(s)" if f.targets is not None else
                     f"the assets selected by {f.selector.model_dump() if f.selector else {}}")
            if s.id in fleets:
                which += f" ({_listed(fleets[s.id])})"
            run_time.append(f"fleet: runs on {which}, max_concurrency {f.max_concurrency}, "
                            f"max_errors {f.max_errors}; each target authorized and leased "
                            "on its own (variants <step>@<target>)")
        gate = gates.get(s.id)
        probe, argv, warning = _probe_view(s)
        steps.append(StepPlan(
            id=s.id, tool=s.tool, executor=EXECUTOR_OF_KIND.get(s.kind.value, s.kind.value),
            action_class=s.action_class.value, runs=_runs(s),
            target=("each returned asset" if s.fan_out_from else
                    "each fleet target" if s.fleet is not None else
                    (f"{s.target} (asset {asset.id})" if asset is not None else
                     s.target or ("Asset Service" if s.kind.value == "asset_query"
                                  else "no host (the service acts)"
                                  if s.kind.value == "service"
                                  else "localhost (this worker)"))),
            connector=connector, failure_handling=s.failure_handling.value,
            failure_handling_text=s.failure_handling_text, failure_rule=s.failure_rule,
            depends_on=s.depends_on, depends_on_written=s.depends_on_written,
            gate=(f"approval ({gate.risk_level}): {gate.reason}" if gate else None),
            checkpoint=s.checkpoint, execution_location=s.execution_location,
            requires_credentials=s.requires_credentials, run_time=run_time,
            allowed=allowed, rbac_reason=reason, probe=probe, argv=argv, warning=warning,
            probe_line=_probe_line(s) if probe else None))
    return DryRunReport(would_run=not problems, problems=problems, tenant=req.tenant,
                        environment=req.environment.value, approval_level=req.approval_level,
                        sla_class=spec.sla_class.value, mode=spec.mode.value, steps=steps,
                        policy_source=source)


def _probe_view(s: StepSpec) -> tuple[str | None, list[str] | None, str | None]:
    """The probe a command step runs as and its argv; for free text, the old classifier's
    guess at what the line does (a warning for `shell` holders, never a decision)."""
    from opsconductor.activities.authorization import operation_of
    from opsconductor.safety.command_policy import classify_command

    if s.kind.value != "command":
        return None, None, None
    op = operation_of(s.tool, s.command, inputs=s.inputs)
    if op.probe is not None:
        if op.probe.parts():  # a summary: each part's argv, in order
            return op.probe.name, [w for p in op.probe.parts() for w in p.argv()], None
        argv = (op.probe.argv() if op.probe.platform == "posix"
                else [op.probe.powershell_command()])
        return op.probe.name, argv, None
    if s.dialect in ("powershell", "cmd") or not s.command:
        return None, None, f"free text ({op.why}): needs shell"
    c = classify_command(s.command)
    return None, None, f"free text ({op.why}): needs shell; the line looks {c.capability}: " \
        f"{c.reason} (a guess, not a check)"


def _probe_line(s: StepSpec) -> str | None:
    from opsconductor.activities.authorization import operation_of

    op = operation_of(s.tool, s.command, inputs=s.inputs)
    return op.probe.display() if op.probe is not None else None


def _listed(names: list[str], most: int = 10) -> str:
    """A list short enough to read: the first `most` and how many more."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def render_text(report: DryRunReport) -> str:
    """The operator's view of a dry run."""
    if not report.would_run and not report.steps:
        return "\n".join([f"refused: {len(report.problems)} problem(s)",
                          *(f"  - {p}" for p in report.problems)])
    out = [f"dry run: {report.tenant} in {report.environment}, approval level "
           f"{report.approval_level}, SLA {report.sla_class} ({report.mode}); RBAC judged on "
           f"the {report.policy_source}"]
    for s in report.steps:
        out.append(f"{s.id}  {s.tool} -> {s.executor} [{s.action_class}]")
        out.append(f"    runs:      {s.runs}")
        if s.probe:
            out.append(f"    probe:     {s.probe}: {s.probe_line}")
        elif s.warning:
            out.append(f"    warning:   {s.warning}")
        out.append(f"    target:    {s.target} via {s.connector}")
        out.append(f"    on failure: {s.failure_handling}  (written: "
                   f"{s.failure_handling_text!r}; {s.failure_rule})")
        deps = ", ".join(s.depends_on) or "none"
        if s.depends_on_written:
            deps += f"  (written: {', '.join(s.depends_on_written)})"
        out.append(f"    after:     {deps}")
        if s.gate:
            out.append(f"    gate:      {s.gate}")
        if s.checkpoint:
            out.append("    checkpoint")
        if s.execution_location:
            out.append(f"    planner's execution_location: {s.execution_location} "
                       "(where it runs, not a host)")
        for note in s.run_time:
            out.append(f"    run time:  {note}")
    if report.problems:
        out.append(f"would NOT run: {len(report.problems)} problem(s)")
        out += [f"  - {p}" for p in report.problems]
    else:
        out.append("would run")
    return "\n".join(out)
