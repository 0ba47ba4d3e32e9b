"""RBAC matrix: environments, deny wins, strict mode, role bindings, audit, revocation by table."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from opsconductor.safety import rbac
from tests.helpers import request, shell

EXAMPLE = Path(__file__).resolve().parents[2] / "starter" / "examples" / "rbac_policy.yaml"


@pytest.fixture
def policy() -> rbac.Policy:
    return rbac.build_policy(rbac.load_policy_document(EXAMPLE))


@pytest.mark.parametrize(("actor", "action", "env", "asset", "tool", "allowed", "rule"), [
    ("bob", "execute", "dev", "web-1", "shell", True, "dev-staging-execute"),
    ("bob", "execute", "prod", "web-1", "shell", False, None),            # strict prod
    ("alice", "execute", "prod", "web-1", "shell", True, "sre-prod"),
    ("bob", "execute", "dev", "db-1", "sql_query", False, "no-db-writes-by-developers"),
    ("bob", "execute", "dev", "db-1", "http_request", True, "dev-staging-execute"),
    ("bot-7", "execute", "prod", "web-1", "shell", False, "no-prod-shell-for-bots"),
    ("bot-7", "execute", "dev", "web-1", "shell", True, "dev-staging-execute"),
    ("alice", "approve", "prod", None, None, True, "approvers"),
    ("carol", "approve", "prod", None, None, True, "approvers"),
    ("bob", "approve", "prod", None, None, False, None),
    ("bob", "approve", "staging", None, None, True, None),                 # non-strict default
    ("alice", "requeue", "staging", None, None, True, None),
])
def test_matrix(policy: rbac.Policy, actor: str, action: str, env: str, asset: str | None,
                tool: str | None, allowed: bool, rule: str | None) -> None:
    tenant = "acme"
    d = policy.evaluate(tenant=tenant, actor=actor, action=action, environment=env,
                        resource=asset, tool=tool)
    assert d.allowed is allowed, d.reason
    assert d.rule_id == rule
    assert d.policy_version.startswith("2026-11-28+")


def test_deny_wins_even_with_allow(policy: rbac.Policy) -> None:
    # bob's developer role is bound only in tenant acme; in tenant other the deny does not apply
    d = policy.evaluate(tenant="acme", actor="bob", action="execute", environment="dev",
                        resource="db-main", tool="shell")
    assert not d.allowed and "no-db-writes-by-developers" in d.reason
    d = policy.evaluate(tenant="other", actor="bob", action="execute", environment="dev",
                        resource="db-main", tool="shell")
    assert d.allowed


def test_role_bindings_per_environment(policy: rbac.Policy) -> None:
    assert policy.roles_of("acme", "alice", "dev") == {"sre", "approver"}
    assert policy.roles_of("acme", "carol", "prod") == {"senior_approver"}
    assert policy.roles_of("other", "bob", "dev") == set()
    limited = rbac.build_policy({"roles": [{"actor": "carol", "tenant": "*",
                                            "roles": ["senior_approver"],
                                            "environments": ["prod"]}]})
    assert limited.roles_of("acme", "carol", "prod") == {"senior_approver"}
    assert limited.roles_of("acme", "carol", "staging") == set()


def test_strict_mode_override(policy: rbac.Policy) -> None:
    doc = rbac.load_policy_document(EXAMPLE)
    strict_all = rbac.build_policy(doc, strict_override=rbac.parse_strict("true"))
    d = strict_all.evaluate(tenant="acme", actor="bob", action="approve", environment="staging")
    assert not d.allowed and "strict" in d.reason
    lax = rbac.build_policy(doc, strict_override=rbac.parse_strict("false"))
    assert lax.evaluate(tenant="acme", actor="bob", action="execute", environment="prod",
                        resource="web-1", tool="shell").allowed
    assert rbac.parse_strict("prod,staging") == frozenset({"prod", "staging"})
    assert strict_all.version != policy.version


def test_builtin_policy() -> None:
    p = rbac.build_policy(None)
    assert p.evaluate(tenant="t", actor="x", action="execute", environment="dev",
                      resource="h", tool="shell").rule_id == "builtin-nonprod-execute"
    d = p.evaluate(tenant="t", actor="x", action="execute", environment="prod",
                   resource="h", tool="shell")
    assert not d.allowed and "strict" in d.reason


def test_bad_policy_names_the_field(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("rules:\n  - id: r1\n    effect: maybe\n")
    with pytest.raises(rbac.PolicyError, match=r"rule 'r1'.effect"):
        rbac.build_policy(rbac.load_policy_document(f))
    f.write_text("rules:\n  - id: r2\n    actions: [explode]\n")
    with pytest.raises(rbac.PolicyError, match="unknown"):
        rbac.build_policy(rbac.load_policy_document(f))


async def test_table_rules_audit_and_revocation(db_pool: asyncpg.Pool) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    rid = f"allow-dave-{tenant}"
    engine = rbac.RbacEngine(None, strict=frozenset({"prod"}))
    await db_pool.execute(
        "INSERT INTO execution.rbac_rules (id, effect, tenants, subjects, actions, environments)"
        " VALUES ($1, 'allow', $2, '{role:oncall}', '{execute}', '{prod}')", rid, [tenant])
    await db_pool.execute(
        "INSERT INTO execution.rbac_role_bindings (tenant, actor, role) VALUES ($1, 'dave',"
        " 'oncall')", tenant)
    exec_id = str(uuid.uuid4())
    d1 = await rbac.check(db_pool, tenant=tenant, actor="dave", action="execute",
                          environment="prod", resource="web-1", tool="shell",
                          execution_id=exec_id, step_id="s1", engine=engine)
    assert d1.allowed and d1.rule_id == rid and d1.roles == ("oncall",)
    assert (await engine.policy(db_pool)).roles_of(tenant, "dave", "prod") == {"oncall"}
    # revoke between two steps
    await db_pool.execute("DELETE FROM execution.rbac_role_bindings WHERE tenant = $1", tenant)
    d2 = await rbac.check(db_pool, tenant=tenant, actor="dave", action="execute",
                          environment="prod", resource="web-1", tool="shell",
                          execution_id=exec_id, step_id="s2", engine=engine)
    assert not d2.allowed and "strict" in d2.reason
    assert d2.policy_version != d1.policy_version
    rows = await db_pool.fetch(
        "SELECT * FROM execution.rbac_audit WHERE execution_id = $1 ORDER BY id", exec_id)
    assert [(r["step_id"], r["decision"], r["rule_id"]) for r in rows] == [
        ("s1", "allow", rid), ("s2", "deny", None)]
    assert rows[0]["actor"] == "dave" and rows[0]["resource"] == "web-1"
    assert rows[0]["tool"] == "shell" and rows[0]["environment"] == "prod"
    assert rows[0]["policy_version"] == d1.policy_version and rows[0]["at"] is not None
    # a deny row in the table wins over the file's allow
    await db_pool.execute(
        "INSERT INTO execution.rbac_rules (id, effect, tenants, actions) VALUES ($1, 'deny', $2,"
        " '{execute}')", f"deny-all-{tenant}", [tenant])
    file_engine = rbac.RbacEngine(EXAMPLE)
    d3 = await rbac.check(db_pool, tenant=tenant, actor="alice", action="execute",
                          environment="prod", resource="web-1", tool="shell",
                          engine=file_engine)
    assert not d3.allowed and d3.rule_id == f"deny-all-{tenant}"
    await db_pool.execute("DELETE FROM execution.rbac_rules WHERE id = ANY($1)",
                          [rid, f"deny-all-{tenant}"])


async def test_engine_from_env(monkeypatch: pytest.MonkeyPatch, db_pool: asyncpg.Pool) -> None:
    monkeypatch.setenv("OPSC_RBAC_POLICY", str(EXAMPLE))
    monkeypatch.setenv("OPSC_RBAC_STRICT", "prod,staging")
    policy = await rbac.load_policy(db_pool)
    assert policy.strict == frozenset({"prod", "staging"})
    assert policy.roles_of("acme", "alice", "prod") >= {"sre"}


async def test_the_dry_run_judges_on_the_rule_tables_too(db_pool: asyncpg.Pool) -> None:
    from opsconductor.starter.dry_run import dry_run

    tenant = f"t{uuid.uuid4().hex[:8]}"
    doc = request([shell("s", "uptime")], tenant=tenant)
    await db_pool.execute(
        "INSERT INTO execution.rbac_rules (id, effect, tenants, actions) VALUES ($1, 'deny',"
        " $2, '{execute}')", f"deny-all-{tenant}", [tenant])
    try:
        without = await dry_run(doc, db_problem="not given")
        judged = await dry_run(doc, db_pool)
    finally:
        await db_pool.execute("DELETE FROM execution.rbac_rules WHERE id = $1",
                              f"deny-all-{tenant}")
    assert without.would_run and without.policy_source == "policy file only (not given)"
    assert not judged.would_run and judged.policy_source == "policy file and rule tables"
    assert f"deny-all-{tenant}" in judged.steps[0].rbac_reason
