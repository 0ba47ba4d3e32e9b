"""Signed decisions with real `ssh-keygen` keys: the canonical message, signing with a key file
and with an ssh-agent, verification and every refusal reason, and the policy's public keys
(file and table)."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from opsconductor.safety import rbac
from opsconductor.safety.signatures import (
    AllowedSigner,
    SignatureError,
    SigningRules,
    parse_allowed_signers,
    sign_message,
    signed_payload,
    ssh_keygen,
    verify_decision,
)
from opsconductor.schema.decisions import DecisionMessage, SignatureCheck, claim_mismatch
from opsconductor.schema.messages import ApprovalDecision, CancelRequest
from tests.helpers import wait_for_sync

NOW = datetime(2026, 11, 28, 20, 0, 0, tzinfo=UTC)
STRICT = SigningRules(required=True, max_age_seconds=600, max_skew_seconds=60)


def make_key(folder: Path, name: str) -> Path:
    """A fresh ed25519 key pair, made by ssh-keygen itself."""
    path = folder / name
    subprocess.run([ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test",
                    "-f", str(path)], check=True)
    return path


def signer(principal: str, key: Path) -> str:
    return f"{principal} {key.with_suffix('.pub').read_text().strip()}"


def fingerprint(key: Path) -> str:
    out = subprocess.run([ssh_keygen(), "-lf", str(key.with_suffix(".pub"))], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: make_key(folder, name) for name in ("alice", "bob", "mallory")}


@pytest.fixture(scope="module")
def signers(keys: dict[str, Path]) -> list[AllowedSigner]:
    return parse_allowed_signers([signer("alice", keys["alice"]), signer("bob", keys["bob"])])


def message(**changes: object) -> DecisionMessage:
    base: dict[str, object] = dict(execution_id="e-1", gate="execution", decision="approve",
                                   plan_hash="a" * 64, principal="alice", issued_at=NOW,
                                   nonce="n0nce-0001", comment="looks fine")
    return DecisionMessage.model_validate({**base, **changes})


def test_canonical_text_is_stable_and_binds_every_field() -> None:
    m = message()
    assert m.canonical_text() == (
        '{"comment":"looks fine","decision":"approve","execution_id":"e-1","gate":"execution",'
        '"issued_at":"2026-11-28T20:00:00Z","nonce":"n0nce-0001","plan_hash":"' + "a" * 64
        + '","principal":"alice","v":"opsconductor-decision/v1"}')
    assert message(issued_at=NOW + timedelta(microseconds=5)).canonical_bytes() == \
        m.canonical_bytes()  # whole seconds: one spelling of an instant
    variants = [message(**{k: v}) for k, v in [
        ("execution_id", "e-2"), ("gate", "step-1"), ("decision", "reject"),
        ("plan_hash", "b" * 64), ("principal", "bob"), ("nonce", "n0nce-0002"),
        ("comment", "other"), ("issued_at", NOW + timedelta(seconds=1))]]
    assert len({v.canonical_bytes() for v in variants} | {m.canonical_bytes()}) == 9


async def check(msg: DecisionMessage, signature: str | None, signers: list[AllowedSigner],
                rules: SigningRules = STRICT, received: datetime = NOW):
    return await verify_decision(SignatureCheck(message=msg, signature=signature,
                                                received_at=received), signers, rules)


async def test_valid_signature_is_accepted_with_its_fingerprint(
        keys: dict[str, Path], signers: list[AllowedSigner]) -> None:
    sig = await sign_message(message(), keys["alice"])
    assert sig.startswith("-----BEGIN SSH SIGNATURE-----")
    verdict = await check(message(), sig, signers)
    assert verdict.accepted and verdict.signed, verdict
    assert verdict.key_fingerprint == fingerprint(keys["alice"])
    assert verdict.key_principals == ["alice"] and verdict.signature == sig
    assert verdict.marks() == {"signed": True, "key_fingerprint": fingerprint(keys["alice"]),
                               "signature": sig}


async def test_every_refusal_names_its_reason(keys: dict[str, Path],
                                              signers: list[AllowedSigner]) -> None:
    bob_as_alice = await sign_message(message(), keys["bob"])  # bob's key, alice's name
    verdict = await check(message(), bob_as_alice, signers)
    assert not verdict.accepted
    assert verdict.reason == (f"impersonation: key {fingerprint(keys['bob'])} belongs to bob, "
                              "not alice")

    unknown = await sign_message(message(), keys["mallory"])
    verdict = await check(message(), unknown, signers)
    assert verdict.reason == (f"unknown key {fingerprint(keys['mallory'])}: it is not "
                              "registered for any principal")

    sig = await sign_message(message(), keys["alice"])
    for other in (message(execution_id="e-2"), message(gate="step-1"),
                  message(plan_hash="b" * 64), message(decision="reject"),
                  message(comment="swapped")):
        verdict = await check(other, sig, signers)
        assert not verdict.accepted and verdict.reason.startswith(
            "signature does not verify over this decision"), (other, verdict)

    late = await check(message(), sig, signers, received=NOW + timedelta(seconds=601))
    assert late.reason == ("expired: issued at 2026-11-28T20:00:00Z, 601s before it was "
                           "handled (limit 600s)")
    early = await check(message(), sig, signers, received=NOW - timedelta(seconds=61))
    assert early.reason.startswith("issued in the future: 2026-11-28T20:00:00Z is 61s ahead")
    assert (await check(message(), sig, signers, received=NOW + timedelta(seconds=599))).accepted

    other_namespace = sign_for_git(keys["alice"], message().canonical_bytes())
    assert not (await check(message(), other_namespace, signers)).accepted

    unsigned = await check(message(), None, signers)
    assert (unsigned.accepted, unsigned.signed) == (False, False)
    assert unsigned.reason.startswith("unsigned decision: this environment requires")
    lax = SigningRules(required=False)
    keyless = await check(message(principal="dave"), None, signers, lax)
    assert (keyless.accepted, keyless.signed, keyless.marks()) == (True, False, {"signed": False})
    holder = await check(message(), None, signers, lax)  # alice has a key: never unsigned
    assert (holder.accepted, holder.reason) == (
        False, "unsigned decision in the name of alice, who has a registered key: their "
               "decisions must be signed")


def sign_for_git(key: Path, data: bytes) -> str:
    """A valid SSH signature, but in git's namespace rather than ours."""
    return subprocess.run([ssh_keygen(), "-Y", "sign", "-f", str(key), "-n", "git"],
                          input=data, capture_output=True, check=True).stdout.decode()


@pytest.fixture
def agent_with_keys(keys: dict[str, Path], tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private ssh-agent holding bob's key, then alice's; the environment that reaches it."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        wait_for_sync(sock.exists, what="the ssh-agent socket", timeout=10)
        for name in ("bob", "alice"):
            subprocess.run(["ssh-add", "-q", str(keys[name])], env=env, check=True)
        yield env
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)


async def test_agent_signs_with_the_public_key_file(keys: dict[str, Path],
                                                    signers: list[AllowedSigner],
                                                    agent_with_keys: dict[str, str]) -> None:
    env = agent_with_keys
    by_agent = await sign_message(message(principal="bob"), None, env=env)
    assert (await check(message(principal="bob"), by_agent, signers)).accepted
    by_pub = await sign_message(message(principal="bob"), keys["bob"].with_suffix(".pub"),
                                env=env)
    assert (await check(message(principal="bob"), by_pub, signers)).accepted
    # Two keys in the agent: the one registered for the principal signs.
    for_alice = await sign_message(message(), None, env=env, registered=signers)
    assert (await check(message(), for_alice, signers)).accepted
    no_agent = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    with pytest.raises(SignatureError, match="no signing key"):
        await sign_message(message(), None, env=no_agent)


async def test_signed_payload_round_trips_through_the_decision_models(
        keys: dict[str, Path], signers: list[AllowedSigner]) -> None:
    payload = await signed_payload({"approver": "alice", "comment": "go"}, kind="approve",
                                   execution_id="e-1", gate="execution", plan_hash="a" * 64,
                                   principal="alice", comment="go", key=keys["alice"])
    decision = ApprovalDecision.model_validate(payload)
    assert decision.signed and claim_mismatch(decision, execution_id="e-1", gate="execution",
                                              plan_hash="a" * 64) is None
    assert claim_mismatch(decision, execution_id="e-9", gate="execution",
                          plan_hash="a" * 64) == "signed for execution e-1, not this one (e-9)"
    assert claim_mismatch(decision, execution_id="e-1", gate="s2",
                          plan_hash="a" * 64) == "signed for gate 'execution', not 's2'"
    rebuilt = DecisionMessage(execution_id="e-1", gate="execution", decision="approve",
                              plan_hash="a" * 64, principal=decision.approver,
                              issued_at=decision.issued_at, nonce=decision.nonce,
                              comment=decision.comment or "")
    verdict = await check(rebuilt, decision.signature, signers,
                          received=decision.issued_at + timedelta(seconds=1))
    assert verdict.accepted, verdict
    with pytest.raises(ValueError, match="needs issued_at and nonce"):
        CancelRequest.model_validate({"actor": "bob", "signature": "x"})


def test_policy_keys_and_signing_rules(keys: dict[str, Path]) -> None:
    doc = {"strict": ["prod", "staging"],
           "allowed_signers": [signer("alice", keys["alice"]),
                               'bob namespaces="opsconductor-decision" '
                               + keys["bob"].with_suffix(".pub").read_text().strip()]}
    policy = rbac.build_policy(doc)
    assert [s.principals for s in policy.signers] == [("alice",), ("bob",)]
    assert policy.signers[1].options == 'namespaces="opsconductor-decision"'
    assert policy.signing_rules("staging").required  # defaults to the strict environments
    assert not policy.signing_rules("dev").required
    mapped = rbac.build_policy({"allowed_signers": {
        "carol": [keys["alice"].with_suffix(".pub").read_text().strip()]},
        "signatures": {"required": False, "max_age_seconds": 30, "max_skew_seconds": 5}})
    assert mapped.signers[0].principals == ("carol",)
    assert mapped.signing_rules("prod") == SigningRules(False, 30.0, 5.0)
    assert mapped.version != rbac.build_policy({"signatures": {"required": False}}).version
    assert rbac.build_policy(None).signing_rules("prod").required  # prod by default
    for bad, match in [({"allowed_signers": ["alice"]}, "expected 'principals"),
                       ({"allowed_signers": ["alice ssh-ed25519 !!!"]}, "not base64"),
                       ({"allowed_signers": ["alice opt=1 nokey AAAA"]}, "no public key"),
                       ({"allowed_signers": ["* ssh-ed25519 AAAA"]}, "patterns"),
                       ({"signatures": {"max_age_seconds": -1}}, "positive number"),
                       ({"signatures": {"require": True}}, "unknown key")]:
        with pytest.raises(rbac.PolicyError, match=match):
            rbac.build_policy(bad)


async def test_table_keys_need_an_attestation(db_pool: asyncpg.Pool,
                                              keys: dict[str, Path]) -> None:
    """A key change is a keys-admin's signed decision (tests/audit/test_key_registry.py has
    the whole registry): unsigned it is refused, and a row written by SQL is not trusted."""
    principal = f"ops-{uuid.uuid4().hex[:8]}"
    engine = rbac.RbacEngine(None)
    mallory = keys["mallory"].with_suffix(".pub").read_text()
    with pytest.raises(rbac.PolicyError, match="refused: no attestation"):
        await rbac.register_signer(db_pool, principal, mallory, attestation=None)
    with pytest.raises(rbac.PolicyError, match="no public key"):
        await rbac.register_signer(db_pool, principal, "not a key", attestation=None)
    try:
        await db_pool.execute("INSERT INTO execution.rbac_signers (principal, public_key)"
                              " VALUES ($1, $2)", principal, " ".join(mallory.split()[:2]))
        after = await engine.policy(db_pool)
        assert principal not in {p for s in after.signers for p in s.principals}
        assert [i.principal for i in after.ignored_signers] == [principal]
        assert await rbac.remove_signer(db_pool, principal, "SHA256:other") == 0
    finally:
        await db_pool.execute("DELETE FROM execution.rbac_signers WHERE principal = $1",
                              principal)
    gone = await engine.policy(db_pool)
    assert not gone.ignored_signers
