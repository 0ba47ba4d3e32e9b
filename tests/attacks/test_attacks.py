"""Every attack form (tests/attacks/forms.py) by `bot-ci`, who may execute in prod but never
`shell`, on a local and an SSH target (Windows forms on an Automation Service asset):

- through the client: every form is refused at submission (an audit row each), or — the
  `neutral` ones — runs as its probe only;
- through the worker's own activities (`run_step`, `run_cleanup`, the plan's safety checks),
  as an attacker who can start workflows in the namespace reaches them: every form again;
- started directly in Temporal, bypassing the client: a representative subset (one per root
  cause and target at least), concurrently, end to end.

Printed: attacks, refused, neutral, bypasses. A bypass is any of: a form not refused (and not
neutral), a marker file written, a victim file changed, a connection to the listener, the
worker's canary in any output, workflow history or mirror row.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from opsconductor.activities.authorization import ActionGate
from opsconductor.safety.masking import LiveSecrets
from opsconductor.schema.messages import (
    CleanupInput,
    SafetyChecksInput,
    StepRunInput,
    TimeoutPolicy,
)
from opsconductor.schema.spec import ExecutionSpec, StepSpec, build_spec
from opsconductor.schema.validation import RequestValidationError, validate_request
from opsconductor.starter.client import SubmissionRefused
from opsconductor.workflows.execution import ExecutionWorkflow
from tests.attacks.conftest import CANARY, Arena, decoded_payloads
from tests.attacks.forms import ATTACKS, Attack
from tests.helpers import request, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

ACTOR, ENVIRONMENT = "bot-ci", "prod"
CONCURRENCY = 8


def places(attack: Attack) -> list[str]:
    return ["windows"] if attack.windows else ["local", "ssh"]


def case_id(attack: Attack, where: str) -> str:
    return f"{attack.id}@{where}"


def plan_for(attack: Attack, arena: Arena, where: str) -> dict[str, Any]:
    """The attack's plan with its placeholders filled and every step aimed at `where`."""
    plan = json.loads(arena.fill(json.dumps(attack.plan), case_id(attack, where)))
    target = {"local": None, "ssh": arena.ssh_asset, "windows": arena.windows_asset}[where]
    if target:
        for s in plan["steps"]:
            s["inputs"]["target_host" if s["tool"] == "network_tools" else "target"] = target
        for c in plan.get("safety_checks", []):
            c["target"] = target
    return plan


def attack_request(attack: Attack, arena: Arena, where: str, tenant: str) -> dict[str, Any]:
    plan = plan_for(attack, arena, where)
    steps = plan.pop("steps")
    return request(steps, tenant=tenant, actor=ACTOR, environment=ENVIRONMENT, plan_extra=plan)


def attack_spec(attack: Attack, arena: Arena, where: str, tenant: str) -> ExecutionSpec:
    eid = str(uuid.uuid4())
    spec = build_spec(validate_request(attack_request(attack, arena, where, tenant)),
                      execution_id=eid, workflow_id=f"attack-{eid}",
                      idempotency_key=uuid.uuid4().hex)
    if attack.spec_patch:  # a crafted workflow input: what the client would never send
        patch = json.loads(arena.fill(json.dumps(attack.spec_patch), case_id(attack, where)))
        # validated, as Temporal's data converter would hand it to the worker
        first = StepSpec.model_validate({**spec.steps[0].model_dump(mode="json"), **patch})
        spec = spec.model_copy(update={"steps": [first, *spec.steps[1:]]})
    return spec


def cases(*, client: bool) -> list[tuple[Attack, str]]:
    return [(a, w) for a in ATTACKS for w in places(a) if not (client and a.spec_only)]


def prepare_victims(arena: Arena, all_cases: list[tuple[Attack, str]]) -> None:
    for attack, where in all_cases:
        arena.victim(case_id(attack, where)).write_text("intact\n")


def damage(arena: Arena, all_cases: list[tuple[Attack, str]]) -> list[str]:
    """Every effect an attack left: markers, changed victims, listener connections."""
    found = [f"marker {p.name}" for p in (arena.root / "markers").iterdir()]
    for attack, where in all_cases:
        victim = arena.victim(case_id(attack, where))
        if not victim.exists() or victim.read_text() != "intact\n":
            found.append(f"victim of {case_id(attack, where)}")
    found += [f"listener connection {c[:60]!r}" for c in arena.listener.connections]
    return found


async def deny_rows(pool: Any, tenants: list[str]) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT tenant, count(*) AS n FROM execution.rbac_audit WHERE tenant = ANY($1::text[])"
        " AND actor = $2 AND decision = 'deny' GROUP BY tenant", tenants, ACTOR)
    return {r["tenant"]: int(r["n"]) for r in rows}


async def canary_in_mirror(pool: Any, tenants: list[str]) -> list[str]:
    """Tables whose rows (outputs decompressed) show the canary."""
    hits = []
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'execution'")
    for row in tables:
        dump = await pool.fetchval(
            f"SELECT coalesce(string_agg(t::text, ' '), '') FROM execution.{row['table_name']} t")
        if CANARY in dump:
            hits.append(row["table_name"])
    for out in await pool.fetch("SELECT encoding, data FROM execution.step_outputs"):
        data = bytes(out["data"])
        text = (zlib.decompress(data) if out["encoding"] == "zlib" else data).decode(
            "utf-8", "replace")
        if CANARY in text:
            hits.append("step_outputs (decoded)")
    return hits


def report(path: str, total: int, refused: int, neutral: int, bypasses: list[str],
           forms: int) -> None:
    print(f"\n[attacks] {path}: {total} attacks ({forms} forms x targets), {refused} refused, "
          f"{neutral} neutral (ran as their probe only), {len(bypasses)} effective bypasses")
    for b in bypasses:
        print(f"  BYPASS {b}")


async def test_every_attack_is_refused_through_the_client(engine: Any, arena: Arena) -> None:
    all_cases = cases(client=True)
    prepare_victims(arena, all_cases)
    sem = asyncio.Semaphore(CONCURRENCY)
    tenants: dict[str, str] = {}
    outcome: dict[str, str] = {}

    async def one(attack: Attack, where: str) -> None:
        cid = case_id(attack, where)
        tenant = tenants[cid] = f"atk-{uuid.uuid4().hex[:10]}"
        async with sem:
            try:
                resp = await engine.execute(attack_request(attack, arena, where, tenant),
                                            wait=attack.neutral)
            except SubmissionRefused:
                outcome[cid] = "refused"
                return
            except RequestValidationError as err:  # never reached the gate: a bad form
                outcome[cid] = f"invalid: {err}"
                return
        if not attack.neutral:
            outcome[cid] = "accepted"
            await engine.cancel(resp.execution_id, "alice", "attack got through")
            return
        text = json.dumps(resp.result.model_dump(mode="json")) if resp.result else ""
        outcome[cid] = "leaked" if CANARY in text else "neutral"

    await asyncio.gather(*(one(a, w) for a, w in all_cases))
    audited = await deny_rows(engine.pool, [tenants[case_id(a, w)] for a, w in all_cases])
    invalid = [f"{cid}: {o}" for cid, o in outcome.items() if o.startswith("invalid")]
    assert not invalid, "\n".join(invalid)
    bypasses = [f"{cid}: {o}" for cid, o in outcome.items() if o in ("accepted", "leaked")]
    bypasses += [f"{cid}: refused without an audit row" for cid, o in outcome.items()
                 if o == "refused" and not audited.get(tenants[cid])]
    bypasses += damage(arena, all_cases)
    bypasses += [f"canary in {t}" for t in await canary_in_mirror(engine.pool,
                                                                   list(tenants.values()))]
    refused = sum(o == "refused" for o in outcome.values())
    neutral = sum(o == "neutral" for o in outcome.values())
    report("through the client (ExecutionClient)", len(all_cases), refused, neutral, bypasses,
           len({a.id for a, _ in all_cases}))
    assert len({a.id for a, _ in all_cases}) >= 76
    assert not bypasses
    assert refused + neutral == len(all_cases)


POLICY = TimeoutPolicy(sla_class="fast", action_class="read", step_timeout_seconds=10,
                       execution_timeout_seconds=60, approval_timeout_seconds=60,
                       max_attempts=1)


async def _worker_path(engine: Any, activities: dict[str, Any], spec: ExecutionSpec,
                       attack: Attack) -> list[str]:
    """Run the attack's actions through the worker's own activities; what each answered."""
    env = ActivityEnvironment()
    answers = []
    common = {"execution_id": spec.execution_id, "workflow_id": spec.workflow_id,
              "tenant": spec.tenant, "environment": spec.environment}
    for check in spec.safety_checks:
        res = await env.run(activities["run_plan_safety_checks"], SafetyChecksInput(
            execution_id=spec.execution_id, stage=check.stage, checks=[check],
            tenant=spec.tenant, actor=spec.actor, environment=spec.environment))
        answers += [o.result.detail for o in res.outcomes]
    for step in spec.steps:
        try:
            result = await env.run(activities["run_step"], StepRunInput(
                **common, actor=spec.actor, step=step, policy=POLICY))
            answers.append(f"{step.id}: {result.status.value} {result.error or ''}")
            answers.append(json.dumps(result.model_dump(mode="json")))
        except ApplicationError as err:
            answers.append(f"{step.id}: {err.type}: {err}")
    for entry in spec.rollback_plan:
        try:
            await env.run(activities["run_cleanup"], CleanupInput(
                **common, step_id=entry.step_id, target=spec.steps[0].target,
                command=entry.rollback_action, timeout_seconds=10, actor=spec.actor))
            answers.append("rollback: ran")
        except ApplicationError as err:
            answers.append(f"rollback: {err.type}: {err}")
    return answers


async def test_every_attack_is_refused_by_the_worker_activities(engine: Any,
                                                                arena: Arena) -> None:
    from opsconductor.starter.worker import build_activities

    activities = {fn.__name__: fn for fn in build_activities(engine.settings, engine.pool,
                                                             live=LiveSecrets())}
    all_cases = cases(client=False)
    prepare_victims(arena, all_cases)
    sem = asyncio.Semaphore(CONCURRENCY)
    specs: dict[str, ExecutionSpec] = {}
    answers: dict[str, list[str]] = {}

    async def one(attack: Attack, where: str) -> None:
        cid = case_id(attack, where)
        spec = specs[cid] = attack_spec(attack, arena, where, f"atkw-{uuid.uuid4().hex[:10]}")
        if not attack.safe:  # judged by the gate the activities use, never sent to run
            gate = ActionGate(engine=activities["run_step"].__self__.rbac, pool=engine.pool,
                              tenant=spec.tenant, actor=spec.actor,
                              environment=spec.environment.value,
                              execution_id=spec.execution_id, step_id=spec.steps[0].id)
            s = spec.steps[0]
            verdict = await gate.decide(tool=s.tool, resource=s.target, command=s.command,
                                        inputs=s.inputs if s.kind.value == "command" else None)
            from opsconductor.safety.rbac import audit_many

            await audit_many(engine.pool, verdict.entries)
            answers[cid] = [f"gate: {'allowed' if verdict.allowed else 'denied'}"]
            return
        await engine.pool.execute(
            "INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor, "
            "environment, mode, sla_class, idempotency_key, plan_hash, spec) VALUES "
            "($1, $2, $3, $4, 'prod', 'immediate', 'fast', $5, 'h', '{}'::jsonb)",
            uuid.UUID(spec.execution_id), spec.workflow_id, spec.tenant, spec.actor,
            spec.idempotency_key)
        async with sem:
            answers[cid] = await _worker_path(engine, activities, spec, attack)

    await asyncio.gather(*(one(a, w) for a, w in all_cases))
    # The rows stood in for executions the workflow would run; none runs on, so they end
    # here rather than linger as queued executions that `health` reports as stalled.
    await engine.pool.execute(
        "UPDATE execution.executions SET status = 'failed', completed_at = now() "
        "WHERE execution_id = ANY($1::uuid[]) AND status = 'queued'",
        [uuid.UUID(s.execution_id) for s in specs.values()])
    audited = await deny_rows(engine.pool, [s.tenant for s in specs.values()])
    bypasses, refused, neutral = [], 0, 0
    for attack, where in all_cases:
        cid = case_id(attack, where)
        said = "\n".join(answers[cid])
        if CANARY in said:
            bypasses.append(f"{cid}: canary in the activity's answer")
        if audited.get(specs[cid].tenant):
            refused += 1
        elif attack.neutral:
            neutral += 1
        else:
            bypasses.append(f"{cid}: not refused: {said[:300]}")
    bypasses += damage(arena, all_cases)
    report("through the worker's activities (run_step, run_cleanup, safety checks)",
           len(all_cases), refused, neutral, bypasses, len({a.id for a, _ in all_cases}))
    assert not bypasses


def representative(all_cases: list[tuple[Attack, str]]) -> list[tuple[Attack, str]]:
    """Two safe forms per root cause and target, and every crafted (spec-only) form."""
    chosen: dict[tuple[int, str], list[tuple[Attack, str]]] = {}
    for attack, where in all_cases:
        if not attack.safe:
            continue
        group = chosen.setdefault((attack.cause, where), [])
        if attack.spec_only or len(group) < 2:
            group.append((attack, where))
    return [c for group in chosen.values() for c in group]


async def test_representative_attacks_started_directly_in_temporal(engine: Any,
                                                                   arena: Arena) -> None:
    subset = representative(cases(client=False))
    prepare_victims(arena, subset)
    specs: dict[str, ExecutionSpec] = {}
    for attack, where in subset:
        cid = case_id(attack, where)
        specs[cid] = spec = attack_spec(attack, arena, where, f"atkt-{uuid.uuid4().hex[:10]}")
        await engine.temporal.start_workflow(ExecutionWorkflow.run, spec, id=spec.workflow_id,
                                             task_queue=engine.settings.task_queue)

    async def ended(spec: ExecutionSpec) -> str:
        return await wait_for(lambda: engine.pool.fetchval(
            "SELECT status::text FROM execution.executions WHERE execution_id = $1 AND status "
            "IN ('completed', 'failed', 'partial', 'cancelled', 'timeout')",
            uuid.UUID(spec.execution_id)), timeout=120, what=f"{spec.workflow_id} to end")

    statuses = await asyncio.gather(*(ended(s) for s in specs.values()))
    audited = await deny_rows(engine.pool, [s.tenant for s in specs.values()])
    bypasses, refused, neutral = [], 0, 0
    for (attack, where), status in zip(subset, statuses, strict=True):
        cid = case_id(attack, where)
        spec = specs[cid]
        history = (await engine.temporal.get_workflow_handle(spec.workflow_id)
                   .fetch_history()).to_json_dict()
        if CANARY in json.dumps(history) + decoded_payloads(history):
            bypasses.append(f"{cid}: canary in the workflow history")
        if audited.get(spec.tenant):
            refused += 1
        elif attack.neutral:
            neutral += 1
        else:
            bypasses.append(f"{cid}: ran ({status}) without a refusal")
    bypasses += damage(arena, subset)
    bypasses += [f"canary in {t}" for t in await canary_in_mirror(
        engine.pool, [s.tenant for s in specs.values()])]
    causes = sorted({a.cause for a, _ in subset})
    report(f"started directly in Temporal ({len(causes)} root causes, local + SSH + Windows)",
           len(subset), refused, neutral, bypasses, len({a.id for a, _ in subset}))
    assert not bypasses
    assert {w for _, w in subset} == {"local", "ssh", "windows"}


async def test_a_shell_holders_command_never_sees_the_worker_environment(
        engine: Any, arena: Arena) -> None:
    """The reset environment holds for free text too, locally and over SSH: `env` shows the
    fixed set, never the worker's variables (its canary, OPSC_*, its PATH)."""
    steps = [{"id": "local", "tool": "shell", "inputs": {"command": "env"},
              "description": "env here"},
             {"id": "remote", "tool": "shell", "inputs": {"command": "env",
                                                          "target": arena.ssh_asset},
              "description": "env there"}]
    resp = await engine.execute(request(steps, tenant=f"env-{uuid.uuid4().hex[:8]}"), wait=True)
    assert resp.result is not None and resp.result.status.value == "completed", resp.result
    for s in resp.result.steps:
        names = {line.split("=", 1)[0] for line in s.stdout.splitlines() if "=" in line}
        print(f"\n[env] {s.step_id}: {sorted(names)}")
        assert CANARY not in s.stdout
        assert not any(n.startswith("OPSC_") or n == "PROBES_ATTACK_CANARY" for n in names)
        assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in s.stdout
