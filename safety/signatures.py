"""Signed operator decisions: SSH signatures (`ssh-keygen -Y`, the format git uses for signed
commits) made with keys operators already have, and verified against `allowed_signers`.

Signing: `sign_message` runs `ssh-keygen -Y sign -n opsconductor-decision` with a private key
file, or with a public key file whose private half is in the ssh-agent (`SSH_AUTH_SOCK`).
`signed_payload` turns a plain decision payload into a signed one.

Unsigned decisions are refused where the policy requires signatures, and everywhere in the
name of a principal who has a registered key (so a key-holder cannot be impersonated even in
dev); the rest are accepted and marked unsigned.

Verifying (`verify_decision`, run by the worker, never by workflow code): the signature must
verify over the message the workflow rebuilt from its own facts (`check-novalidate`), its key
must be registered for the claimed principal (`find-principals`, then `verify -I`), and the
message must be fresh: issued no longer than `max_age_seconds` before the workflow handled it,
and not more than `max_skew_seconds` after. Every refusal names its reason.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsconductor.schema.decisions import (
    SIGNATURE_NAMESPACE,
    DecisionMessage,
    SignatureCheck,
    SignatureVerdict,
    canonical_time,
)
from opsconductor.schema.submissions import (
    SIGNATURE_FIELD,
    SubmissionSignature,
    canonical_request,
    submission_message,
    unsigned_envelope,
)

KEY_TYPE = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-\S+|sk-\S+@openssh\.com)$")
FINGERPRINT = re.compile(r"(SHA256:[A-Za-z0-9+/=]+)")
SSH_TIMEOUT_SECONDS = 10.0


class SignatureError(RuntimeError):
    """Signing is impossible (no key, no agent, ssh-keygen refused) or a signer line is
    malformed; the message says which."""


def ssh_keygen() -> str:
    """The `ssh-keygen` binary (openssh-client)."""
    found = shutil.which("ssh-keygen") or ("/usr/bin/ssh-keygen"
                                           if Path("/usr/bin/ssh-keygen").exists() else None)
    if found is None:
        raise SignatureError("ssh-keygen not found: install openssh-client")
    return found


# ---------------------------------------------------------------------------- allowed signers

@dataclass(frozen=True)
class AllowedSigner:
    """One `allowed_signers` line: principals, options, a public key (type + base64)."""

    principals: tuple[str, ...]
    key_type: str
    key_data: str
    options: str = ""
    comment: str = ""

    @property
    def public_key(self) -> str:
        return f"{self.key_type} {self.key_data}"

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.key_data)

    def line(self) -> str:
        parts = [",".join(self.principals)]
        if self.options:
            parts.append(self.options)
        parts.append(self.public_key)
        return " ".join(parts)


def key_fingerprint(key_data: str) -> str:
    """`SHA256:...` exactly as `ssh-keygen -l` prints it, from the key's base64 blob."""
    digest = hashlib.sha256(base64.b64decode(key_data)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_allowed_signer(line: str, where: str = "allowed_signers") -> AllowedSigner:
    """Parse `principals [options] keytype base64 [comment]` (sshd's AUTHORIZED_KEYS-like
    form that `ssh-keygen -Y verify` reads); options may be quoted."""
    try:
        tokens = shlex.split(line.strip(), posix=False)
    except ValueError as err:
        raise SignatureError(f"{where}: {err}") from None
    if len(tokens) < 3:
        raise SignatureError(f"{where}: expected 'principals [options] keytype key', "
                             f"got {line.strip()!r}")
    principals = tuple(p for p in tokens[0].split(",") if p)
    if any(set(p) & set("*?!") for p in principals):
        raise SignatureError(f"{where}: principal patterns ({tokens[0]!r}) are not accepted: "
                             "name each principal")
    i = 1
    options = ""
    if not KEY_TYPE.match(tokens[1]):
        options, i = tokens[1], 2
    if len(tokens) < i + 2 or not KEY_TYPE.match(tokens[i]):
        raise SignatureError(f"{where}: no public key (ssh-ed25519, ssh-rsa, ecdsa-…) in "
                             f"{line.strip()!r}")
    key_type, key_data = tokens[i], tokens[i + 1]
    try:
        blob = base64.b64decode(key_data, validate=True)
    except ValueError:
        raise SignatureError(f"{where}: the key of {principals} is not base64") from None
    if not blob:
        raise SignatureError(f"{where}: the key of {principals} is empty")
    return AllowedSigner(principals=principals, key_type=key_type, key_data=key_data,
                         options=options, comment=" ".join(tokens[i + 2:]))


def parse_allowed_signers(value: Any, where: str = "allowed_signers") -> list[AllowedSigner]:
    """A policy's `allowed_signers`: a list of lines, or a mapping principal -> key(s)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [ln for ln in value.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if isinstance(value, Mapping):
        lines = []
        for principal, keys in value.items():
            for key in [keys] if isinstance(keys, str) else list(keys or []):
                lines.append(f"{principal} {key}")
        value = lines
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SignatureError(f"{where}: expected a list of allowed_signers lines or a "
                             "mapping principal -> public keys")
    return [parse_allowed_signer(v, f"{where}[{i}]") for i, v in enumerate(value)]


# ---------------------------------------------------------------------------- subprocesses

async def _run(args: Sequence[str], stdin: bytes = b"",
               env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(env) if env is not None else None)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), SSH_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SignatureError(f"{Path(args[0]).name} did not answer within "
                             f"{SSH_TIMEOUT_SECONDS:g}s") from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def sign_message(message: DecisionMessage, key: str | Path | None = None, *,
                       env: Mapping[str, str] | None = None,
                       registered: Sequence[AllowedSigner] = ()) -> str:
    """Sign the canonical message: `key` is a private key file, or a `.pub` file whose
    private key is in the agent; None uses the agent's key registered for the message's
    principal in `registered` (else the agent's first key)."""
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="opsc-sign-") as tmp:
        if key is None:
            keys = await agent_keys(env)
            if not keys:
                raise SignatureError("no signing key: pass --key FILE (or set "
                                     "OPSC_SIGNING_KEY), or add a key to the ssh-agent")
            key = Path(tmp) / "agent_key.pub"
            key.write_text(choose_agent_key(keys, message.principal, registered) + "\n")
        path = _key_file(key)
        code, out, err = await _run([ssh_keygen(), "-Y", "sign", "-f", str(path),
                                     "-n", SIGNATURE_NAMESPACE], message.canonical_bytes(), env)
    if code != 0 or "BEGIN SSH SIGNATURE" not in out:
        detail = " ".join(ln for ln in err.splitlines()
                          if "Signing data on standard input" not in ln).strip()
        raise SignatureError(f"ssh-keygen could not sign with {path}: {detail or code}")
    return out.strip()


def _key_file(key: str | Path) -> Path:
    path = Path(key).expanduser()
    if not path.is_file():
        raise SignatureError(f"signing key {path} not found")
    return path


async def agent_keys(env: Mapping[str, str] | None = None) -> list[str]:
    """The public keys the ssh-agent holds (`ssh-add -L`), none without an agent."""
    env = dict(os.environ if env is None else env)
    if not env.get("SSH_AUTH_SOCK"):
        return []
    add = shutil.which("ssh-add") or str(Path(ssh_keygen()).with_name("ssh-add"))
    code, out, _ = await _run([add, "-L"], env=env)
    return [ln.strip() for ln in out.splitlines() if ln.strip()] if code == 0 else []


def choose_agent_key(keys: Sequence[str], principal: str,
                     registered: Sequence[AllowedSigner]) -> str:
    """The first agent key registered for `principal`, else the agent's first key."""
    mine = {s.public_key for s in registered if principal in s.principals}
    for line in keys:
        if " ".join(line.split()[:2]) in mine:
            return line
    return keys[0]


def new_nonce() -> str:
    return secrets.token_hex(16)


async def signed_payload(payload: Mapping[str, Any], *, kind: str, execution_id: str, gate: str,
                         plan_hash: str, principal: str, comment: str = "",
                         key: str | Path | None = None, issued_at: datetime | None = None,
                         nonce: str | None = None, env: Mapping[str, str] | None = None,
                         registered: Sequence[AllowedSigner] = ()) -> dict[str, Any]:
    """`payload` with the signed fields added: what a `temporal workflow signal --input`,
    the CLI and the library send. `kind` is approve, reject, cancel or resolve:<action>."""
    message = DecisionMessage(
        execution_id=execution_id, gate=gate, decision=kind, plan_hash=plan_hash,
        principal=principal, issued_at=issued_at or datetime.now(UTC),
        nonce=nonce or new_nonce(), comment=comment)
    signature = await sign_message(message, key, env=env, registered=registered)
    return {**payload, "execution_id": execution_id, "gate": gate, "plan_hash": plan_hash,
            "issued_at": canonical_time(message.issued_at), "nonce": message.nonce,
            "signature": signature}


# ---------------------------------------------------------------------------- verifying

@dataclass(frozen=True)
class SigningRules:
    """Where unsigned decisions are refused and how fresh a signed one must be."""

    required: bool
    max_age_seconds: float = 900.0
    max_skew_seconds: float = 120.0


async def verify_decision(check: SignatureCheck, signers: Sequence[AllowedSigner],
                          rules: SigningRules) -> SignatureVerdict:
    """Verify one decision; the verdict names the reason of any refusal."""
    message = check.message
    if check.signature is None:
        if rules.required:
            return SignatureVerdict(
                accepted=False, signed=False,
                reason="unsigned decision: this environment requires decisions signed with "
                       "a registered SSH key")
        if any(message.principal in s.principals for s in signers):
            return SignatureVerdict(
                accepted=False, signed=False,
                reason=f"unsigned decision in the name of {message.principal}, who has a "
                       "registered key: their decisions must be signed")
        return SignatureVerdict(accepted=True, signed=False,
                                reason="unsigned decision (accepted: signatures are not "
                                       "required in this environment)")
    with tempfile.TemporaryDirectory(prefix="opsc-verify-") as tmp:
        sig = Path(tmp) / "decision.sig"
        sig.write_text(check.signature.strip() + "\n")
        allowed = Path(tmp) / "allowed_signers"
        allowed.write_text("".join(s.line() + "\n" for s in signers))
        data = message.canonical_bytes()
        keygen = ssh_keygen()
        code, out, err = await _run([keygen, "-Y", "check-novalidate", "-n",
                                     SIGNATURE_NAMESPACE, "-s", str(sig)], data)
        found = FINGERPRINT.search(out + err)
        fingerprint = found.group(1) if found else None
        if code != 0:
            return SignatureVerdict(
                accepted=False, signed=True, key_fingerprint=fingerprint,
                reason="signature does not verify over this decision: it was made for "
                       "another execution, gate, decision, plan, principal, time, nonce or "
                       "comment (or is not an opsconductor-decision signature)")
        principals: list[str] = []
        if signers:
            code, out, _ = await _run([keygen, "-Y", "find-principals", "-f", str(allowed),
                                       "-s", str(sig)])
            principals = sorted({p for ln in out.splitlines() for p in ln.strip().split(",")
                                 if p}) if code == 0 else []
        if not principals:
            return SignatureVerdict(
                accepted=False, signed=True, key_fingerprint=fingerprint,
                reason=f"unknown key {fingerprint}: it is not registered for any principal")
        if message.principal not in principals:
            return SignatureVerdict(
                accepted=False, signed=True, key_fingerprint=fingerprint,
                key_principals=principals,
                reason=f"impersonation: key {fingerprint} belongs to "
                       f"{', '.join(principals)}, not {message.principal}")
        code, out, err = await _run([keygen, "-Y", "verify", "-f", str(allowed), "-I",
                                     message.principal, "-n", SIGNATURE_NAMESPACE,
                                     "-s", str(sig)], data)
        if code != 0:
            return SignatureVerdict(
                accepted=False, signed=True, key_fingerprint=fingerprint,
                key_principals=principals,
                reason=f"signature of {message.principal} refused by its allowed_signers "
                       f"entry: {(err or out).strip()[:300]}")
    age = (check.received_at - message.issued_at).total_seconds()
    if age > rules.max_age_seconds:
        return SignatureVerdict(
            accepted=False, signed=True, key_fingerprint=fingerprint, key_principals=principals,
            reason=f"expired: issued at {canonical_time(message.issued_at)}, {age:.0f}s "
                   f"before it was handled (limit {rules.max_age_seconds:g}s)")
    if -age > rules.max_skew_seconds:
        return SignatureVerdict(
            accepted=False, signed=True, key_fingerprint=fingerprint, key_principals=principals,
            reason=f"issued in the future: {canonical_time(message.issued_at)} is {-age:.0f}s "
                   f"ahead of the execution's clock (allowed skew {rules.max_skew_seconds:g}s)")
    return SignatureVerdict(
        accepted=True, signed=True, key_fingerprint=fingerprint, key_principals=principals,
        signature=check.signature.strip(),
        reason=f"signed by {message.principal} with key {fingerprint}")


async def sign_submission(envelope: Mapping[str, Any], *, key: str | Path | None = None,
                          issued_at: datetime | None = None, nonce: str | None = None,
                          env: Mapping[str, str] | None = None,
                          registered: Sequence[AllowedSigner] = ()) -> dict[str, Any]:
    """The envelope with its actor's `signature` (schema/submissions.py): what Stage D sends
    where the policy requires signed submissions."""
    unsigned = unsigned_envelope(dict(envelope))
    actor = unsigned.get("actor")
    if not isinstance(actor, str) or not actor:
        raise SignatureError("a submission names its actor before it can be signed")
    proof = SubmissionSignature(issued_at=issued_at or datetime.now(UTC),
                                nonce=nonce or new_nonce(), signature="-")
    message = submission_message(actor, proof, canonical_request(unsigned))
    signature = await sign_message(message, key, env=env, registered=registered)
    return {**unsigned, SIGNATURE_FIELD: {"issued_at": canonical_time(proof.issued_at),
                                          "nonce": proof.nonce, "signature": signature}}


async def public_key_of(key: str | Path) -> AllowedSigner:
    """The public half of a key file: its `.pub` beside it, else `ssh-keygen -y`."""
    path = _key_file(key)
    pub = path if path.suffix == ".pub" else path.with_name(path.name + ".pub")
    if pub.is_file():
        text = pub.read_text().strip()
    else:
        code, out, err = await _run([ssh_keygen(), "-y", "-f", str(path)])
        if code != 0:
            raise SignatureError(f"cannot read the public key of {path}: {err.strip() or code}")
        text = out.strip()
    return parse_allowed_signer(f"key-of-file {text}", str(pub))


# ---------------------------------------------------------------------------- key registry
#
# Adding or removing a signer is a decision of a `keys-admin`: the same canonical decision
# message and `ssh-keygen -Y` signature as an approval, bound to the principal and the key.
# The signed record (the attestation) is stored with the key; the worker verifies it on load
# and trusts no table key without one (docs/audit.md: trust model and bootstrap).

KEYS_ADMIN_ROLE = "keys-admin"
KEYS_SUBJECT = "opsconductor-keys"


def key_change_message(op: str, principal: str, public_key: str, *, by: str,
                       issued_at: datetime, nonce: str, comment: str = "") -> DecisionMessage:
    """What a keys-admin signs to add (`keys-add`) or remove (`keys-remove`) `public_key`
    for `principal`: the key (type and base64, not its comment) is hashed into `plan_hash`."""
    bare = " ".join(public_key.split()[:2])
    return DecisionMessage(execution_id=KEYS_SUBJECT, gate=principal, decision=op,
                           plan_hash=hashlib.sha256(bare.encode()).hexdigest(),
                           principal=by, issued_at=issued_at, nonce=nonce, comment=comment)


@dataclass(frozen=True)
class Attestation:
    """A signed key change as stored in `rbac_signers.attestation`."""

    by: str
    issued_at: datetime
    nonce: str
    signature: str
    comment: str = ""

    def as_json(self) -> dict[str, str]:
        return {"by": self.by, "issued_at": canonical_time(self.issued_at),
                "nonce": self.nonce, "signature": self.signature, "comment": self.comment}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Attestation:
        return cls(by=str(value["by"]), issued_at=datetime.fromisoformat(
            str(value["issued_at"]).replace("Z", "+00:00")), nonce=str(value["nonce"]),
            signature=str(value["signature"]), comment=str(value.get("comment", "")))

    def message(self, op: str, principal: str, public_key: str) -> DecisionMessage:
        return key_change_message(op, principal, public_key, by=self.by,
                                  issued_at=self.issued_at, nonce=self.nonce,
                                  comment=self.comment)


async def attest_key_change(op: str, principal: str, public_key: str, *, by: str,
                            key: str | Path | None, comment: str = "",
                            env: Mapping[str, str] | None = None) -> Attestation:
    """Sign a key change as keys-admin `by` (with `key`, or the agent's key)."""
    issued = datetime.now(UTC)
    nonce = new_nonce()
    message = key_change_message(op, principal, public_key, by=by, issued_at=issued,
                                 nonce=nonce, comment=comment)
    signature = await sign_message(message, key, env=env)
    return Attestation(by=by, issued_at=issued, nonce=nonce, signature=signature,
                       comment=comment)


async def check_attestation(op: str, principal: str, public_key: str, att: Attestation,
                            admin_keys: Sequence[AllowedSigner],
                            fresh_at: datetime | None = None) -> str | None:
    """None when `att` is a valid signature of a trusted keys-admin over this change; else
    why not. `fresh_at`: also require it was issued recently (at registration); on load the
    stored record is judged at its own time."""
    rules = SigningRules(required=True, max_age_seconds=900.0 if fresh_at else 1e12,
                         max_skew_seconds=120.0 if fresh_at else 1e12)
    verdict = await verify_decision(
        SignatureCheck(message=att.message(op, principal, public_key), signature=att.signature,
                       received_at=fresh_at or att.issued_at), admin_keys, rules)
    return None if verdict.accepted else verdict.reason


@dataclass(frozen=True)
class TableSigner:
    """One `rbac_signers` row as read, before its attestation is judged."""

    signer: AllowedSigner
    attestation: Mapping[str, Any] | None


@dataclass(frozen=True)
class IgnoredSigner:
    """A table key the worker does not trust, and why (shown by `opsconductor health`)."""

    principal: str
    fingerprint: str
    reason: str


# verdicts already reached (a worker reloads the keys on every RBAC change; each check runs
# ssh-keygen three times): keyed by the row, its attestation and the admin keys it was judged by
_ATTESTATIONS: dict[tuple[str, str, Attestation, tuple[str, ...]], str | None] = {}


async def resolve_table_signers(file_signers: Sequence[AllowedSigner], admins: set[str],
                                rows: Sequence[TableSigner],
                                ) -> tuple[list[AllowedSigner], list[IgnoredSigner]]:
    """The table keys a valid attestation vouches for. Trust starts at the policy file's
    keys of keys-admins and grows through attested keys of keys-admins (a fixed point)."""
    admin_keys = [s for s in file_signers if set(s.principals) & admins]
    trusted: list[AllowedSigner] = []
    why: dict[int, str] = {}
    pending = list(enumerate(rows))
    progress = True
    while pending and progress:
        progress = False
        for item in list(pending):
            i, row = item
            principal = row.signer.principals[0]
            if row.attestation is None:
                why[i] = "no attestation: written into the table without a keys-admin's signature"
                pending.remove(item)
                continue
            try:
                att = Attestation.from_json(row.attestation)
            except (KeyError, ValueError, TypeError):
                why[i] = "its attestation is malformed"
                pending.remove(item)
                continue
            if att.by not in admins:
                why[i] = f"attested by {att.by}, who is not a {KEYS_ADMIN_ROLE} in the policy file"
                pending.remove(item)
                continue
            memo = (principal, row.signer.public_key, att, tuple(k.line() for k in admin_keys))
            if memo not in _ATTESTATIONS:
                if len(_ATTESTATIONS) > 4096:
                    _ATTESTATIONS.clear()
                _ATTESTATIONS[memo] = await check_attestation(
                    "keys-add", principal, row.signer.public_key, att, admin_keys)
            reason = _ATTESTATIONS[memo]
            if reason is None:
                trusted.append(row.signer)
                if principal in admins:
                    admin_keys.append(row.signer)
                pending.remove(item)
                progress = True
            else:
                why[i] = f"its attestation does not verify: {reason}"
    ignored = [IgnoredSigner(principal=rows[i].signer.principals[0],
                             fingerprint=rows[i].signer.fingerprint,
                             reason=why.get(i, "unverified"))
               for i in sorted({i for i, _ in pending} | set(why))
               if rows[i].signer not in trusted]
    return trusted, ignored
