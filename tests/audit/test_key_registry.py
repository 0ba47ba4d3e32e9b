"""The guarded key registry: a key change is a keys-admin's signed decision, audited; the
worker trusts a table key only with a valid attestation. The attack: a key written into
`rbac_signers` by SQL is not trusted, `health` names it, and a prod decision signed with it is
refused and audited (a real worker, Temporal and PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from temporalio.client import Client

from opsconductor.safety import rbac
from opsconductor.safety.signatures import attest_key_change, signed_payload
from opsconductor.schema.messages import DecisionOutcome
from opsconductor.starter.client import ExecutionClient
from opsconductor.starter.health import check_signers
from tests.audit.helpers import make_key
from tests.helpers import approval_rows, execution_row, pending, policy_worker, request, step, until
from tests.integration.helpers import opsc_env, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")

PEOPLE = ("kadmin", "kadmin2", "bob", "mallory", "ops")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("registry-keys")
    return {name: make_key(folder, name) for name in PEOPLE}


def pub(key: Path) -> str:
    return key.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def policy_file(keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bootstrap: kadmin's key in the file; kadmin and kadmin2 are keys-admins (kadmin2's
    key comes from the registry); bob approves; prod requires signed decisions."""
    policy = {
        "version": "key-registry",
        "roles": [{"actor": "kadmin", "roles": ["keys-admin"]},
                  {"actor": "kadmin2", "roles": ["keys-admin"]},
                  {"actor": "bob", "roles": ["approver"]},
                  {"actor": "rita", "roles": ["sre"]}],
        "rules": [{"id": "sre", "effect": "allow", "subjects": ["role:sre"],
                   "actions": ["execute", "cancel"]},
                  {"id": "approvers", "effect": "allow", "subjects": ["role:approver"],
                   "actions": ["approve", "reject"]}],
        "allowed_signers": [f"kadmin {pub(keys['kadmin'])}"],
    }
    path = tmp_path_factory.mktemp("registry-policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


async def signers_of(pool: asyncpg.Pool, policy_file: Path) -> rbac.Policy:
    return await rbac.RbacEngine(policy_file).policy(pool)


async def audit_rows(pool: asyncpg.Pool, principal: str) -> list[tuple[str, str, str]]:
    rows = await pool.fetch("SELECT actor, action, decision FROM execution.rbac_audit"
                            " WHERE tenant = '*' AND resource = $1 ORDER BY id",
                            f"signer:{principal}")
    return [(r["actor"], r["action"], r["decision"]) for r in rows]


async def test_key_changes_are_signed_decisions_of_keys_admins(
        db_pool: asyncpg.Pool, keys: dict[str, Path], policy_file: Path) -> None:
    who = f"bob-{uuid.uuid4().hex[:6]}"
    try:
        # refused: unsigned; signed by a non-admin; kadmin's name with mallory's key
        attempts = [
            (None, "no attestation"),
            (await attest_key_change("keys-add", who, pub(keys["bob"]), by="ops",
                                     key=keys["ops"]), "ops is not a keys-admin"),
            (await attest_key_change("keys-add", who, pub(keys["bob"]), by="kadmin",
                                     key=keys["mallory"]), "unknown key"),
        ]
        for att, reason in attempts:
            with pytest.raises(rbac.PolicyError, match=reason):
                await rbac.register_signer(db_pool, who, pub(keys["bob"]), attestation=att,
                                           policy_file=policy_file)
        assert who not in {p for s in (await signers_of(db_pool, policy_file)).signers
                           for p in s.principals}
        # accepted: kadmin signs; then kadmin2's key (attested by kadmin) can vouch in turn
        att = await attest_key_change("keys-add", who, pub(keys["bob"]), by="kadmin",
                                      key=keys["kadmin"])
        await rbac.register_signer(db_pool, who, pub(keys["bob"]), attestation=att,
                                   policy_file=policy_file)
        att2 = await attest_key_change("keys-add", "kadmin2", pub(keys["kadmin2"]),
                                       by="kadmin", key=keys["kadmin"])
        await rbac.register_signer(db_pool, "kadmin2", pub(keys["kadmin2"]), attestation=att2,
                                   policy_file=policy_file)
        who2 = f"{who}-2"
        att3 = await attest_key_change("keys-add", who2, pub(keys["ops"]), by="kadmin2",
                                       key=keys["kadmin2"])
        await rbac.register_signer(db_pool, who2, pub(keys["ops"]), attestation=att3,
                                   policy_file=policy_file)
        policy = await signers_of(db_pool, policy_file)
        trusted = {p for s in policy.signers for p in s.principals}
        assert {who, who2, "kadmin2", "kadmin"} <= trusted and not policy.ignored_signers
        # removal is a decision too
        with pytest.raises(rbac.PolicyError, match="no attestation"):
            await rbac.remove_signer(db_pool, who2, policy_file=policy_file)

        async def by_kadmin(public_key: str) -> Any:
            return await attest_key_change("keys-remove", who2, public_key, by="kadmin",
                                           key=keys["kadmin"])
        assert await rbac.remove_signer(db_pool, who2, attest=by_kadmin,
                                        policy_file=policy_file) == 1
        assert await audit_rows(db_pool, who) == [
            ("unknown", "keys-add", "deny"), ("ops", "keys-add", "deny"),
            ("kadmin", "keys-add", "deny"), ("kadmin", "keys-add", "allow")]
        assert await audit_rows(db_pool, who2) == [
            ("kadmin2", "keys-add", "allow"), ("unknown", "keys-remove", "deny"),
            ("kadmin", "keys-remove", "allow")]
        print(f"key changes: {len(attempts) + 1} refused, 4 made, each an audit row")
    finally:
        await db_pool.execute("DELETE FROM execution.rbac_signers WHERE principal = ANY($1)",
                              [who, f"{who}-2", "kadmin2"])


@pytest.fixture(scope="module")
async def worker(temporal_client: Client, db_pool: asyncpg.Pool, policy_file: Path,
                 session_dir: Path) -> AsyncIterator[ExecutionClient]:
    async with policy_worker(temporal_client, db_pool, policy_file,
                             home=session_dir / "home-registry",
                             queue_prefix="opsc-registry") as client:
        yield client


async def test_a_key_planted_by_sql_is_not_trusted(worker: ExecutionClient,
                                                   db_pool: asyncpg.Pool,
                                                   keys: dict[str, Path],
                                                   policy_file: Path, migrated_pg: str) -> None:
    # the attacker can write the table: mallory's key for bob, once bare and once with an
    # attestation copied from a genuine registration of another key
    genuine = await attest_key_change("keys-add", "bob", pub(keys["bob"]), by="kadmin",
                                      key=keys["kadmin"])
    try:
        await db_pool.execute("INSERT INTO execution.rbac_signers (principal, public_key)"
                              " VALUES ('bob', $1)", " ".join(pub(keys["mallory"]).split()[:2]))
        await db_pool.execute(
            "INSERT INTO execution.rbac_signers (principal, public_key, attestation)"
            " VALUES ('bob', $1, $2::jsonb)", " ".join(pub(keys["ops"]).split()[:2]),
            json.dumps(genuine.as_json()))
        policy = await signers_of(db_pool, policy_file)
        assert "bob" not in {p for s in policy.signers for p in s.principals}
        reasons = sorted(i.reason for i in policy.ignored_signers if i.principal == "bob")
        assert len(reasons) == 2 and reasons[0].startswith("its attestation does not verify")
        assert reasons[1].startswith("no attestation")
        health = await check_signers(migrated_pg, policy_file)
        assert not health["ok"] and "NOT trusted" in health["detail"]
        print(f"health: {health['detail']}")

        resp = await worker.execute(request([step("s")], tenant=f"reg-{uuid.uuid4().hex[:6]}",
                                            actor="rita", environment="prod",
                                            approval_level=1), wait=False)
        await until(worker, resp.workflow_id, pending)
        row = await execution_row(db_pool, resp.execution_id)
        payload = await signed_payload(
            {"approver": "bob", "comment": "ok"}, kind="approve", principal="bob",
            comment="ok", key=keys["mallory"], execution_id=resp.execution_id,
            gate="execution", plan_hash=row["plan_hash"])
        handle = worker.temporal.get_workflow_handle(resp.workflow_id)
        outcome = await handle.execute_update("approve_update", payload,
                                              result_type=DecisionOutcome)
        assert not outcome.accepted and "unknown key" in outcome.reason, outcome
        decisions = json.loads((await approval_rows(db_pool, resp.execution_id))[0]["decisions"])
        assert [(d["approver"], d["accepted"]) for d in decisions] == [("bob", False)]
        denied = await db_pool.fetch(
            "SELECT reason FROM execution.rbac_audit WHERE execution_id = $1"
            " AND decision = 'deny'", resp.execution_id)
        assert any("unknown key" in r["reason"] for r in denied), denied
        print(f"planted key: prod approval refused ({outcome.reason}); audited: "
              f"{denied[0]['reason']}")
        await handle.terminate("test over")
    finally:
        await db_pool.execute("DELETE FROM execution.rbac_signers WHERE principal = 'bob'")


async def test_keys_cli_signs_each_change(db_pool: asyncpg.Pool, keys: dict[str, Path],
                                          policy_file: Path, temporal_server: Any,
                                          migrated_pg: str, tmp_path: Path) -> None:
    who = f"cli-{uuid.uuid4().hex[:6]}"
    env = opsc_env(temporal_address=temporal_server.address, database_url=migrated_pg,
                   task_queue="opsc-tests", home=tmp_path, OPSC_RBAC_POLICY=str(policy_file))
    bob_pub = str(keys["bob"].with_suffix(".pub"))
    try:
        refused = await run_cli(env, "keys", "add", who, bob_pub, "--as", "ops",
                                "--key", str(keys["ops"]))
        assert refused.code == 1 and "ops is not a keys-admin" in refused.stderr, refused
        added = await run_cli(env, "keys", "add", who, bob_pub, "--as", "kadmin",
                              "--key", str(keys["kadmin"]), "--json")
        assert added.code == 0, added
        policy = await signers_of(db_pool, policy_file)
        assert who in {p for s in policy.signers for p in s.principals}
        removed = await run_cli(env, "keys", "remove", who, "--as", "kadmin",
                                "--key", str(keys["kadmin"]), "--json")
        assert removed.code == 0 and removed.json == {"removed": 1}, removed
        assert await audit_rows(db_pool, who) == [
            ("ops", "keys-add", "deny"), ("kadmin", "keys-add", "allow"),
            ("kadmin", "keys-remove", "allow")]
        await db_pool.execute("INSERT INTO execution.rbac_signers (principal, public_key)"
                              " VALUES ($1, $2)", who, " ".join(pub(keys["mallory"]).split()[:2]))
        listed = await run_cli(env, "keys", "list", "--json")
        mine = [r for r in listed.json if r["principal"] == who]
        assert [(r["trusted"], r["reason"][:15]) for r in mine] == [(False, "no attestation:")]
    finally:
        await db_pool.execute("DELETE FROM execution.rbac_signers WHERE principal = $1", who)
