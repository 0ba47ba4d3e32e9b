"""Signed decisions end to end, against the session's Temporal and PostgreSQL servers.

A worker of its own reads a policy with the principals' public keys (made by `ssh-keygen` in a
temporary directory): alice, bob and carol approve, rita requests, mallory's key is known to
nobody, dave approves without any key. Prod requires signed decisions (the default); dev
accepts unsigned ones, marked, from principals who have no registered key.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from temporalio.client import Client

from opsconductor.activities.attempts import record_attempt_started
from opsconductor.safety.signatures import signed_payload, ssh_keygen
from opsconductor.schema.messages import DecisionOutcome
from opsconductor.starter.binaries import temporal_cli
from opsconductor.starter.client import ExecutionClient
from tests.helpers import (
    approval_rows,
    events,
    execution_row,
    pending,
    policy_worker,
    request,
    shell,
    step,
    until,
)
from tests.integration.helpers import opsc_env, run_binary, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")

PEOPLE = ("alice", "bob", "carol", "rita", "mallory")


def fingerprint(key: Path) -> str:
    out = subprocess.run([ssh_keygen(), "-lf", str(key.with_suffix(".pub"))], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("operator-keys")
    for name in PEOPLE:
        subprocess.run([ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@ops",
                        "-f", str(folder / name)], check=True)
    return {name: folder / name for name in PEOPLE}


@pytest.fixture(scope="module")
def policy_file(keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    policy = {
        "version": "signed-decisions",
        "roles": [{"actor": a, "roles": ["approver"]} for a in ("alice", "bob", "carol", "dave")]
        + [{"actor": "rita", "roles": ["sre"]}],
        "rules": [
            {"id": "sre-execute", "effect": "allow", "subjects": ["role:sre"],
             "actions": ["execute", "cancel", "resolve"]},
            {"id": "approvers", "effect": "allow", "subjects": ["role:approver"],
             "actions": ["approve", "reject", "cancel"]}],
        "allowed_signers": [f"{name} {keys[name].with_suffix('.pub').read_text().strip()}"
                            for name in ("alice", "bob", "carol", "rita")],
        "signatures": {"max_age_seconds": 600, "max_skew_seconds": 60},
    }
    path = tmp_path_factory.mktemp("policy") / "rbac_policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
async def signed(temporal_client: Client, db_pool: asyncpg.Pool, policy_file: Path,
                 session_dir: Path) -> AsyncIterator[ExecutionClient]:
    """A worker and a client that read the policy with the keys (the submission check reads
    OPSC_RBAC_POLICY, pointed at it for this module)."""
    async with policy_worker(temporal_client, db_pool, policy_file,
                             home=session_dir / "home-signed",
                             queue_prefix="opsc-signed") as client:
        yield client


async def submit(client: ExecutionClient, environment: str, level: int = 1) -> Any:
    resp = await client.execute(request([step("s")], tenant=f"sig-{uuid.uuid4().hex[:6]}",
                                        actor="rita", environment=environment,
                                        approval_level=level), wait=False)
    await until(client, resp.workflow_id, pending)
    return resp


async def facts(client: ExecutionClient, resp: Any) -> dict[str, str]:
    row = await execution_row(client.pool, resp.execution_id)
    return {"execution_id": resp.execution_id, "gate": "execution",
            "plan_hash": row["plan_hash"]}


async def payload_for(keys: dict[str, Path], signer: str, kind: str, principal: str,
                      where: dict[str, str], comment: str = "ok", **changes: Any) -> dict:
    """A signed approve/reject payload for `principal`, signed with `signer`'s key."""
    base = {"approver": principal, "comment": comment}
    return await signed_payload(base, kind=kind, principal=principal, comment=comment,
                                key=keys[signer], **{**where, **changes})


async def decide(client: ExecutionClient, resp: Any, kind: str, payload: dict) -> Any:
    handle = client.temporal.get_workflow_handle(resp.workflow_id)
    return await handle.execute_update(f"{kind}_update", payload, result_type=DecisionOutcome)


async def test_a_signed_approval_is_accepted_and_keeps_its_proof(
        signed: ExecutionClient, keys: dict[str, Path]) -> None:
    resp = await submit(signed, "prod")
    outcome = await signed.approve(resp.execution_id, "alice", "go", key=keys["alice"])
    assert outcome.accepted and outcome.approval_state.value == "approved", outcome
    result = await signed.result(resp.execution_id)
    assert result.status.value == "completed"
    decision = json.loads((await approval_rows(signed.pool, resp.execution_id))[0]["decisions"])
    assert [(d["approver"], d["accepted"], d["signed"], d["key_fingerprint"]) for d in decision] \
        == [("alice", True, True, fingerprint(keys["alice"]))]
    assert decision[0]["signature"].startswith("-----BEGIN SSH SIGNATURE-----")
    ev = next(e for e in await events(signed.pool, resp.execution_id)
              if e["event_type"] == "approval.approve")
    data = json.loads(ev["data"])
    assert (ev["actor"], data["signed"], data["key_fingerprint"]) == (
        "alice", True, fingerprint(keys["alice"]))
    view = await signed.status(resp.execution_id)
    assert [(d["approver"], d["signed"]) for a in view["approvals"] for d in a["decisions"]] == [
        ("alice", True)]


async def test_forged_replayed_and_stale_decisions_are_refused_with_their_reasons(
        signed: ExecutionClient, keys: dict[str, Path]) -> None:
    resp = await submit(signed, "prod", level=2)
    other = await submit(signed, "prod")
    here, there = await facts(signed, resp), await facts(signed, other)
    now = datetime.now(UTC)
    attempts = [
        # bob signs a decision that names alice, with his own key
        (await payload_for(keys, "bob", "approve", "alice", here),
         f"impersonation: key {fingerprint(keys['bob'])} belongs to bob, not alice"),
        # a key nobody registered, claiming alice
        (await payload_for(keys, "mallory", "approve", "alice", here),
         f"unknown key {fingerprint(keys['mallory'])}: it is not registered"),
        # alice's genuine approval of another execution, sent here
        (await payload_for(keys, "alice", "approve", "alice", there),
         f"signed for execution {other.execution_id}, not this one"),
        # ... and the same with the claim rewritten to this execution
        ({**await payload_for(keys, "alice", "approve", "alice", there),
          "execution_id": resp.execution_id},
         "signature does not verify over this decision"),
        # signed for another gate
        (await payload_for(keys, "alice", "approve", "alice", {**here, "gate": "s"}),
         "signed for gate 's', not 'execution'"),
        # signed over another plan
        (await payload_for(keys, "alice", "approve", "alice", {**here, "plan_hash": "f" * 64}),
         "plan hash mismatch"),
        # signed as a rejection, sent as an approval
        (await payload_for(keys, "alice", "reject", "alice", here),
         "signature does not verify over this decision"),
        # issued too long ago, and too far ahead
        (await payload_for(keys, "alice", "approve", "alice", here,
                           issued_at=now - timedelta(seconds=900)), "expired: issued at"),
        (await payload_for(keys, "alice", "approve", "alice", here,
                           issued_at=now + timedelta(seconds=900)), "issued in the future"),
    ]
    for payload, reason in attempts:
        outcome = await decide(signed, resp, "approve", payload)
        assert not outcome.accepted and reason in outcome.reason, (reason, outcome)

    genuine = await payload_for(keys, "alice", "approve", "alice", here)
    assert (await decide(signed, resp, "approve", genuine)).accepted
    replay = await decide(signed, resp, "approve", genuine)
    assert not replay.accepted
    assert replay.reason == f"replay: nonce {genuine['nonce']} was already used " \
                            "(approve by alice at execution)"
    assert (await signed.progress(resp.workflow_id)).status.value == "pending_approval"

    rows = await approval_rows(signed.pool, resp.execution_id)
    recorded = json.loads(rows[0]["decisions"])
    assert len(recorded) == len(attempts) + 2
    for (_, reason), entry in zip(attempts, recorded, strict=False):
        assert not entry["accepted"] and reason in entry["reason"], entry
    assert recorded[-2]["accepted"] and recorded[-2]["signed"]
    assert "replay" in recorded[-1]["reason"]
    refused = [e for e in await events(signed.pool, resp.execution_id)
               if e["event_type"] == "approve.refused"]
    assert len(refused) == len(attempts) + 1
    assert [r for _, r in attempts if not any(r in e["message"] for e in refused)] == []
    audit = await signed.pool.fetch(
        "SELECT actor, reason FROM execution.rbac_audit WHERE execution_id = $1 "
        "AND decision = 'deny'", resp.execution_id)
    assert any("impersonation" in a["reason"] and a["actor"] == "alice" for a in audit)

    second = await payload_for(keys, "bob", "approve", "bob", here)
    assert (await decide(signed, resp, "approve", second)).accepted
    assert (await signed.result(resp.execution_id)).status.value == "completed"
    await signed.cancel(other.execution_id, "rita", "done here", key=keys["rita"])


async def test_unsigned_decisions_are_refused_in_prod_and_marked_in_dev(
        signed: ExecutionClient, keys: dict[str, Path]) -> None:
    prod = await submit(signed, "prod")
    refused = await signed.approve(prod.execution_id, "alice", "trust me", sign=False)
    assert not refused.accepted
    assert refused.reason.startswith("unsigned decision: this environment requires")
    cancel = await signed.cancel(prod.execution_id, "rita", "unsigned", sign=False)
    assert not cancel.accepted and "unsigned decision" in cancel.reason
    assert (await signed.progress(prod.workflow_id)).status.value == "pending_approval"

    dev = await submit(signed, "dev")
    holder = await signed.approve(dev.execution_id, "alice", "as alice", sign=False)
    assert not holder.accepted  # alice has a key: nobody decides unsigned in her name
    assert holder.reason == ("unsigned decision in the name of alice, who has a registered "
                             "key: their decisions must be signed")
    accepted = await signed.approve(dev.execution_id, "dave", "fine", sign=False)
    assert accepted.accepted, accepted
    assert (await signed.result(dev.execution_id)).status.value == "completed"
    decision = json.loads((await approval_rows(signed.pool, dev.execution_id))[0]["decisions"])
    assert [(d["approver"], d["accepted"], d["signed"], d["signature"]) for d in decision] == [
        ("alice", False, False, None), ("dave", True, False, None)]
    ev = next(e for e in await events(signed.pool, dev.execution_id)
              if e["event_type"] == "approval.approve")
    assert json.loads(ev["data"])["signed"] is False
    view = await signed.status(dev.execution_id)
    assert [(d["approver"], d["signed"]) for a in view["approvals"] for d in a["decisions"]] == [
        ("alice", False), ("dave", False)]
    assert (await signed.cancel(prod.execution_id, "rita", "tidy", key=keys["rita"])).accepted


async def test_a_signed_cancel_is_accepted_and_recorded(signed: ExecutionClient,
                                                        keys: dict[str, Path]) -> None:
    resp = await submit(signed, "prod")
    outcome = await signed.cancel(resp.execution_id, "rita", "window closed", key=keys["rita"])
    assert outcome.accepted, outcome
    result = await signed.result(resp.execution_id)
    assert result.status.value == "cancelled" and result.cancel_actor == "rita"
    ev = next(e for e in await events(signed.pool, resp.execution_id)
              if e["event_type"] == "cancel.requested")
    data = json.loads(ev["data"])
    assert (ev["actor"], data["signed"], data["key_fingerprint"]) == (
        "rita", True, fingerprint(keys["rita"]))


async def test_operators_sign_on_the_command_line_and_through_the_temporal_binary(
        signed: ExecutionClient, keys: dict[str, Path], policy_file: Path,
        temporal_server: Any, migrated_pg: str, tmp_path: Path) -> None:
    env = opsc_env(temporal_address=temporal_server.address, database_url=migrated_pg,
                   task_queue=signed.settings.task_queue, home=tmp_path,
                   OPSC_RBAC_POLICY=str(policy_file))
    env.pop("SSH_AUTH_SOCK", None)
    resp = await submit(signed, "prod", level=2)
    wid = resp.workflow_id
    approved = await run_cli(env, "approve", wid, "--approver", "alice", "--comment",
                             "reviewed", "--key", str(keys["alice"]), "--json")
    assert approved.code == 0 and approved.json["accepted"], approved
    assert approved.json["approvals_counted"] == 1
    unsigned = await run_cli(env, "approve", wid, "--approver", "bob", "--unsigned")
    assert unsigned.code == 1, unsigned
    assert unsigned.stdout.startswith("refused: unsigned decision: this environment requires")

    signed_json = await run_cli(env, "sign", "approve", wid, "--as", "carol", "--comment", "go",
                                "--key", str(keys["carol"]))
    assert signed_json.code == 0, signed_json
    payload = json.loads(signed_json.stdout)
    assert (payload["approver"], payload["execution_id"], payload["gate"]) == (
        "carol", resp.execution_id, "execution")
    proc = await run_binary(temporal_cli(), "workflow", "signal", "--address",
                            temporal_server.address, "--workflow-id", wid, "--name", "approve",
                            "--input", signed_json.stdout.strip())
    assert proc.code == 0, proc
    assert (await signed.result(resp.execution_id)).status.value == "completed"

    status = await run_cli(env, "status", wid)
    assert status.code == 0, status
    shown = [ln.split() for ln in status.stdout.splitlines() if ln.startswith("  approve ")]
    assert shown == [
        ["approve", "alice", "accepted", "signed", fingerprint(keys["alice"])],
        ["approve", "bob", "refused", "UNSIGNED", "unsigned", "decision:", "this",
         "environment", "requires", "decisions", "signed", "with", "a", "registered", "SSH",
         "key"],
        ["approve", "carol", "accepted", "signed", fingerprint(keys["carol"])]]


async def test_a_resolution_must_be_signed_for_its_step(
        signed: ExecutionClient, keys: dict[str, Path]) -> None:
    """An attempt that started and never finished (its worker is gone) makes the step's
    outcome unknown; only a resolution signed for that step moves it on."""
    resp = await client_submit_shell(signed)
    async with signed.pool.acquire() as conn:
        # attempt 9 of a worker that died: the step's own first attempt finds it unfinished
        await record_attempt_started(conn, resp.execution_id, "act", 9, "worker-that-died")
    here = await facts(signed, resp)
    approval = await payload_for(keys, "alice", "approve", "alice", here)
    assert (await decide(signed, resp, "approve", approval)).accepted
    await until(signed, resp.workflow_id, waiting_for_resolution)

    unsigned = await signed.resolve(resp.execution_id, "rita", "skip", sign=False)
    assert not unsigned.accepted and "unsigned decision" in unsigned.reason
    for_other_step = await signed.sign_decision(resp.execution_id, "resolve", "rita",
                                                action="skip", step_id="other", key=keys["rita"])
    wrong = await decide(signed, resp, "resolve", {**for_other_step, "step_id": "act",
                                                   "gate": "act"})
    assert not wrong.accepted
    assert "signature does not verify over this decision" in wrong.reason
    payload = await signed.sign_decision(resp.execution_id, "resolve", "rita", action="skip",
                                         comment="checked the host by hand", key=keys["rita"])
    assert payload["gate"] == "act" and payload["step_id"] == "act"
    assert (await decide(signed, resp, "resolve", payload)).accepted
    result = await signed.result(resp.execution_id)
    assert result.status.value == "completed", result  # skipped by the operator
    assert [(s.step_id, s.status.value) for s in result.steps] == [("act", "skipped")]
    evs = await events(signed.pool, resp.execution_id)
    resolved = next(e for e in evs if e["event_type"] == "step.resolved")
    data = json.loads(resolved["data"])
    assert (resolved["actor"], data["signed"], data["key_fingerprint"]) == (
        "rita", True, fingerprint(keys["rita"]))
    refused = [e["message"] for e in evs if e["event_type"] == "resolve.refused"]
    assert len(refused) == 2 and "unsigned decision" in refused[0]


async def client_submit_shell(client: ExecutionClient) -> Any:
    resp = await client.execute(request([shell("act", "echo acted")],
                                        tenant=f"sig-{uuid.uuid4().hex[:6]}", actor="rita",
                                        environment="prod", approval_level=1), wait=False)
    await until(client, resp.workflow_id, pending)
    return resp


def waiting_for_resolution(progress: Any) -> bool:
    """The step `act` waits for an operator's resolution."""
    return bool(progress.waiting_on and "resol" in progress.waiting_on)
