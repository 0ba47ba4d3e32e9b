"""Role-based access control, checked in the worker at the moment of action, every decision audited.

Sources: a policy file (YAML or JSON, path in the settings' `rbac_policy`, `OPSC_RBAC_POLICY`)
and/or the Postgres tables `execution.rbac_rules` and `execution.rbac_role_bindings`; rules and
bindings of both are merged. When neither holds any rule, a built-in development policy
applies (below). The table carries a revision bumped by a trigger on every change, so a worker
(one `RbacEngine`, built from the settings) reloads the policy only when something changed and
a permission revoked mid-run stops the very next step.

File format::

    version: "2026-11-28"          # optional label; the policy version is label + content hash
    strict: [prod]                 # environments where no matching rule = deny (default: [prod]);
                                   # `true` = everywhere, `false` = nowhere
    roles:                         # role bindings: actor -> roles, per tenant (glob),
      - actor: alice               #   optionally only in some environments
        tenant: "*"
        roles: [sre, approver]
        environments: [staging, prod]
    rules:
      - id: sre-exec               # unique, recorded in the audit
        effect: allow              # allow | deny; deny wins over any allow
        tenants: ["acme"]          # globs, default ["*"]
        subjects: ["role:sre", "actor:bob"]   # actor:GLOB, role:GLOB or "*", default ["*"]
        actions: [execute]         # execute, approve, cancel, requeue, resolve or "*"
        assets: ["web-*"]          # asset globs, default ["*"]   (also `resources:` with
        tools: ["shell", "systemctl"]  # tool globs, default ["*"]  "asset:X" / "tool:Y" items)
        environments: [dev, staging]   # default ["*"]
        description: SREs run anything on web hosts outside prod
    allowed_signers:               # principals' SSH public keys, `allowed_signers` lines
      - alice ssh-ed25519 AAAAC3Nza... alice@laptop          #   (ssh-keygen(1)); also a
      - 'bob namespaces="opsconductor-decision" ssh-ed25519 AAAA...'  # mapping name: [keys]
    signatures:                    # signed operator decisions (safety/signatures.py)
      required: [prod]             # unsigned decisions refused there (default: `strict`)
      submissions: [prod]          # submissions must be signed by their actor (default: none)
      max_age_seconds: 900         # a signed decision older than this when handled: refused
      max_skew_seconds: 120        # issued further in the future than this: refused

A rule matches when every field matches the request (lists are "any of"). A request without
an asset or tool (approve, cancel, ...) only matches rules whose patterns for it include `*`.
Decision: any matching deny → denied (first deny's id); else any matching allow → allowed;
else strict environment → denied ("no rule allows ..."), non-strict → allowed by default.

Strict mode: `rbac_strict` (`OPSC_RBAC_STRICT`) overrides the policy: `true`/`1`/`yes` = every
environment, `false`/`0`/`no` = none, or a comma list of environments.

Built-in policy (no file, no table rules): rule `builtin-nonprod-execute` allows `execute` for
everyone in dev and staging; prod is strict, so prod needs a real policy.

Table rows: `rbac_rules(id, effect, tenants[], subjects[], actions[], assets[], tools[],
environments[], description, enabled)`; `rbac_role_bindings(tenant, actor, role,
environments[])` — tenant there is a glob too; `rbac_signers(principal, public_key, options,
comment, enabled, attestation)` — keys added to the file's `allowed_signers`, each trusted
only with a keys-admin's attestation (docs/audit.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from opsconductor.safety.signatures import (
    KEYS_ADMIN_ROLE,
    AllowedSigner,
    Attestation,
    IgnoredSigner,
    SignatureError,
    SigningRules,
    TableSigner,
    check_attestation,
    parse_allowed_signer,
    parse_allowed_signers,
    resolve_table_signers,
)
from opsconductor.schema.canonical import canonical_json, sha256_hex
from opsconductor.schema.config import Settings, load_settings

ACTIONS = frozenset({"execute", "approve", "reject", "cancel", "requeue", "resolve"})
DEFAULT_STRICT = frozenset({"prod"})
DEFAULT_SIGNATURE_MAX_AGE = 900.0
DEFAULT_SIGNATURE_MAX_SKEW = 120.0
ALL = frozenset({"*"})


class PolicyError(ValueError):
    """The policy file or a table row is malformed; names the rule and field."""


def _glob(patterns: Iterable[str], value: str | None) -> bool:
    if value is None or value == "*":
        return any(p == "*" for p in patterns)
    return any(p == "*" or fnmatch.fnmatchcase(value, p) for p in patterns)


def _strs(value: Any, where: str, default: Sequence[str] = ("*",)) -> tuple[str, ...]:
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise PolicyError(f"{where}: expected a string or a list of strings")


@dataclass(frozen=True)
class Rule:
    id: str
    effect: str
    tenants: tuple[str, ...] = ("*",)
    subjects: tuple[str, ...] = ("*",)
    actions: tuple[str, ...] = ("*",)
    assets: tuple[str, ...] = ("*",)
    tools: tuple[str, ...] = ("*",)
    environments: tuple[str, ...] = ("*",)
    description: str = ""
    source: str = "file"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str, index: int) -> Rule:
        rid = str(d.get("id") or f"{source}-rule-{index + 1}")
        where = f"rule {rid!r}"
        effect = str(d.get("effect", "allow")).lower()
        if effect not in ("allow", "deny"):
            raise PolicyError(f"{where}.effect: must be allow or deny, not {effect!r}")
        actions = _strs(d.get("actions", d.get("action")), f"{where}.actions")
        unknown = [a for a in actions if a != "*" and a not in ACTIONS]
        if unknown:
            raise PolicyError(f"{where}.actions: unknown {unknown}; one of {sorted(ACTIONS)}")
        assets = list(_strs(d.get("assets"), f"{where}.assets", ()))
        tools = list(_strs(d.get("tools"), f"{where}.tools", ()))
        for item in _strs(d.get("resources"), f"{where}.resources", ()):
            kind, sep, pattern = item.partition(":")
            if sep and kind == "tool":
                tools.append(pattern)
            elif sep and kind == "asset":
                assets.append(pattern)
            else:
                assets.append(item)
        subjects = _strs(d.get("subjects", d.get("subject")), f"{where}.subjects")
        for s in subjects:
            if s != "*" and not s.startswith(("actor:", "role:")):
                raise PolicyError(f"{where}.subjects: {s!r} must be actor:NAME, role:NAME or *")
        return cls(id=rid, effect=effect,
                   tenants=_strs(d.get("tenants", d.get("tenant")), f"{where}.tenants"),
                   subjects=subjects, actions=actions,
                   assets=tuple(assets) or ("*",), tools=tuple(tools) or ("*",),
                   environments=_strs(d.get("environments", d.get("environment")),
                                      f"{where}.environments"),
                   description=str(d.get("description", "")), source=source)

    def matches(self, *, tenant: str, actor: str, roles: set[str], action: str,
                environment: str, asset: str | None, tool: str | None) -> bool:
        if not _glob(self.tenants, tenant) or not _glob(self.environments, environment):
            return False
        if "*" not in self.actions and action not in self.actions:
            return False
        if not _glob(self.assets, asset) or not _glob(self.tools, tool):
            return False
        for s in self.subjects:
            if s == "*":
                return True
            kind, _, pattern = s.partition(":")
            if kind == "actor" and fnmatch.fnmatchcase(actor, pattern):
                return True
            if kind == "role" and any(fnmatch.fnmatchcase(r, pattern) for r in roles):
                return True
        return False


@dataclass(frozen=True)
class RoleBinding:
    actor: str
    roles: tuple[str, ...]
    tenant: str = "*"
    environments: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    rule_id: str | None
    policy_version: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """An immutable snapshot: evaluate and roles_of are pure and synchronous."""

    rules: tuple[Rule, ...] = ()
    bindings: tuple[RoleBinding, ...] = ()
    strict: frozenset[str] = DEFAULT_STRICT
    version: str = "builtin"
    sources: tuple[str, ...] = field(default=())
    signers: tuple[AllowedSigner, ...] = ()  # principals' public keys (allowed_signers)
    signatures_required: frozenset[str] = DEFAULT_STRICT  # unsigned decisions refused there
    signature_max_age_seconds: float = DEFAULT_SIGNATURE_MAX_AGE
    signature_max_skew_seconds: float = DEFAULT_SIGNATURE_MAX_SKEW
    # environments where a submission must be signed by its actor (proves `actor`)
    submissions_signed: frozenset[str] = frozenset()
    # table keys without a valid keys-admin attestation: not trusted, shown by `health`
    ignored_signers: tuple[IgnoredSigner, ...] = ()

    def roles_of(self, tenant: str, actor: str, environment: str | None = None) -> set[str]:
        """The actor's roles in this tenant (and environment): also used for approvers."""
        out: set[str] = set()
        for b in self.bindings:
            if b.actor == actor and _glob((b.tenant,), tenant) and (
                    environment is None or _glob(b.environments, environment)):
                out.update(b.roles)
        return out

    def is_strict(self, environment: str) -> bool:
        return "*" in self.strict or environment in self.strict

    def signing_rules(self, environment: str) -> SigningRules:
        """Whether `environment` refuses unsigned decisions, and the freshness window."""
        required = "*" in self.signatures_required or environment in self.signatures_required
        return SigningRules(required=required,
                            max_age_seconds=self.signature_max_age_seconds,
                            max_skew_seconds=self.signature_max_skew_seconds)

    def submission_rules(self, environment: str) -> SigningRules:
        """Whether `environment` refuses submissions not signed by their actor."""
        required = "*" in self.submissions_signed or environment in self.submissions_signed
        return SigningRules(required=required,
                            max_age_seconds=self.signature_max_age_seconds,
                            max_skew_seconds=self.signature_max_skew_seconds)

    def evaluate(self, *, tenant: str, actor: str, action: str, environment: str,
                 resource: str | None = None, tool: str | None = None,
                 roles: Iterable[str] | None = None) -> Decision:
        """Deny wins; then allow; then the environment's default (strict = deny)."""
        role_set = set(roles) if roles is not None else self.roles_of(tenant, actor, environment)
        allow: Rule | None = None
        for rule in self.rules:
            if rule.matches(tenant=tenant, actor=actor, roles=role_set, action=action,
                            environment=environment, asset=resource, tool=tool):
                if rule.effect == "deny":
                    return Decision(False, f"denied by rule {rule.id}"
                                    + (f" ({rule.description})" if rule.description else ""),
                                    rule.id, self.version, tuple(sorted(role_set)))
                allow = allow or rule
        what = f"{action} of {tool or '-'} on {resource or '-'} in {environment}"
        if allow is not None:
            return Decision(True, f"allowed by rule {allow.id}", allow.id, self.version,
                            tuple(sorted(role_set)))
        if self.is_strict(environment):
            return Decision(False, f"no rule allows {actor} {what} (strict mode)", None,
                            self.version, tuple(sorted(role_set)))
        return Decision(True, f"no rule matched {what}; allowed by default (non-strict)", None,
                        self.version, tuple(sorted(role_set)))


BUILTIN_RULES = (Rule(id="builtin-nonprod-execute", effect="allow", actions=("execute",),
                      environments=("dev", "staging"),
                      description="development default: anyone may execute outside prod",
                      source="builtin"),)


def parse_strict(value: Any) -> frozenset[str] | None:
    """`true` → all, `false` → none, a list / comma string → those environments."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ALL if value else frozenset()
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on", "all", "*"):
            return ALL
        if v in ("0", "false", "no", "off", "none", ""):
            return frozenset()
        return frozenset(p.strip() for p in v.split(",") if p.strip())
    if isinstance(value, (list, tuple)):
        return frozenset(str(v) for v in value)
    raise PolicyError(f"strict: expected a boolean or a list of environments, not {value!r}")


def _bindings_from(doc_roles: Any, source: str) -> list[RoleBinding]:
    out: list[RoleBinding] = []
    if doc_roles is None:
        return out
    if isinstance(doc_roles, Mapping):  # short form: {actor: [roles]}
        doc_roles = [{"actor": a, "roles": r} for a, r in doc_roles.items()]
    if not isinstance(doc_roles, list):
        raise PolicyError(f"{source}: roles must be a list of bindings")
    for i, b in enumerate(doc_roles):
        if not isinstance(b, Mapping) or not b.get("actor"):
            raise PolicyError(f"{source}: roles[{i}] needs an actor")
        out.append(RoleBinding(actor=str(b["actor"]),
                               roles=_strs(b.get("roles", b.get("role")), f"roles[{i}].roles", ()),
                               tenant=str(b.get("tenant", "*")),
                               environments=_strs(b.get("environments"),
                                                  f"roles[{i}].environments")))
    return out


def load_policy_document(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise PolicyError(f"cannot read RBAC policy {p}: {err.strerror}") from None
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise PolicyError(f"RBAC policy {p} is not valid JSON/YAML: {err}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise PolicyError(f"RBAC policy {p} must be a mapping with rules/roles")
    return dict(doc)


def _signing_section(doc: Mapping[str, Any], strict: frozenset[str],
                     ) -> tuple[frozenset[str], float, float, frozenset[str]]:
    """`signatures: {required, submissions, max_age_seconds, max_skew_seconds}`; `required`
    defaults to the strict environments, `submissions` to none."""
    section = doc.get("signatures") or {}
    if not isinstance(section, Mapping):
        raise PolicyError("signatures: expected a mapping (required, submissions, "
                          "max_age_seconds, max_skew_seconds)")
    unknown = set(section) - {"required", "submissions", "max_age_seconds", "max_skew_seconds"}
    if unknown:
        raise PolicyError(f"signatures: unknown key(s) {sorted(unknown)}")
    required = parse_strict(section.get("required"))
    windows = []
    for name, default in (("max_age_seconds", DEFAULT_SIGNATURE_MAX_AGE),
                          ("max_skew_seconds", DEFAULT_SIGNATURE_MAX_SKEW)):
        value = section.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise PolicyError(f"signatures.{name}: expected a positive number of seconds")
        windows.append(float(value))
    submissions = parse_strict(section.get("submissions")) or frozenset()
    return (strict if required is None else required), windows[0], windows[1], submissions


def build_policy(doc: Mapping[str, Any] | None, table_rules: Sequence[Rule] = (),
                 table_bindings: Sequence[RoleBinding] = (),
                 strict_override: frozenset[str] | None = None,
                 table_signers: Sequence[AllowedSigner] = ()) -> Policy:
    """Merge file document and table rows into one versioned snapshot."""
    doc = doc or {}
    try:
        signers = parse_allowed_signers(doc.get("allowed_signers"), "policy.allowed_signers")
    except SignatureError as err:
        raise PolicyError(str(err)) from None
    signers += list(table_signers)
    rules_raw = doc.get("rules") or []
    if not isinstance(rules_raw, list):
        raise PolicyError("policy: rules must be a list")
    rules = [Rule.from_dict(r, "file", i) for i, r in enumerate(rules_raw)]
    rules += list(table_rules)
    bindings = _bindings_from(doc.get("roles"), "policy") + list(table_bindings)
    seen: set[str] = set()
    for r in rules:
        if r.id in seen:
            raise PolicyError(f"rule id {r.id!r} is used twice")
        seen.add(r.id)
    sources = tuple(sorted({r.source for r in rules}))
    if not rules and not doc:
        rules = list(BUILTIN_RULES)
        sources = ("builtin",)
    strict = strict_override
    if strict is None:
        strict = parse_strict(doc.get("strict"))
    if strict is None:
        strict = DEFAULT_STRICT
    required, max_age, max_skew, submissions = _signing_section(doc, frozenset(strict))
    content = canonical_json({
        "rules": [r.__dict__ for r in rules], "bindings": [b.__dict__ for b in bindings],
        "strict": sorted(strict), "signers": [s.line() for s in signers],
        "signatures": [sorted(required), max_age, max_skew, sorted(submissions)]})
    digest = sha256_hex(content)[:12]
    label = doc.get("version")
    version = f"{label}+{digest}" if label else digest
    return Policy(rules=tuple(rules), bindings=tuple(bindings), strict=frozenset(strict),
                  version=version, sources=sources, signers=tuple(signers),
                  signatures_required=required, signature_max_age_seconds=max_age,
                  signature_max_skew_seconds=max_skew, submissions_signed=submissions)


def builtin_policy(settings: Settings | None = None) -> Policy:
    return build_policy(None, strict_override=strict_from_settings(settings or load_settings()))


def strict_from_settings(settings: Settings) -> frozenset[str] | None:
    """The settings' strict override (`OPSC_RBAC_STRICT`), None when unset."""
    raw = settings.rbac_strict
    return parse_strict(raw) if raw is not None else None


class RbacEngine:
    """Loads the policy from file + table, reloading only when either changed."""

    def __init__(self, policy_file: str | Path | None = None, *,
                 strict: frozenset[str] | None = None, use_table: bool = True):
        self.policy_file = Path(policy_file) if policy_file else None
        self.strict = strict
        self.use_table = use_table
        self._stamp: tuple[Any, ...] | None = None
        self._policy: Policy | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> RbacEngine:
        """The engine for the settings' policy file and strict override; a process keeps
        one, so the policy is re-read only when the file or the table changed."""
        return cls(settings.rbac_policy, strict=strict_from_settings(settings))

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.policy_file is None:
            return None
        try:
            st = self.policy_file.stat()
        except OSError as err:
            raise PolicyError(f"cannot read RBAC policy {self.policy_file}: "
                              f"{err.strerror}") from None
        return (st.st_mtime_ns, st.st_size)

    async def policy(self, db: asyncpg.Pool | asyncpg.Connection | None = None) -> Policy:
        """The current snapshot: one cheap revision query when nothing changed."""
        revision = None
        if db is not None and self.use_table:
            revision = await db.fetchval(
                "SELECT revision FROM execution.rbac_policy_state WHERE id = 1")
        stamp = (self._file_stamp(), revision)
        if self._policy is not None and stamp == self._stamp:
            return self._policy
        async with self._lock:
            doc = load_policy_document(self.policy_file) if self.policy_file else None
            rules: list[Rule] = []
            bindings: list[RoleBinding] = []
            signers: list[AllowedSigner] = []
            ignored: list[IgnoredSigner] = []
            if db is not None and self.use_table:
                rules, bindings = await _load_table(db)
                signers, ignored = await trusted_table_signers(doc, await _load_signers(db))
            self._policy = dataclasses.replace(
                build_policy(doc, rules, bindings, self.strict, signers),
                ignored_signers=tuple(ignored))
            self._stamp = stamp
            return self._policy


async def _load_table(db: asyncpg.Pool | asyncpg.Connection,
                      ) -> tuple[list[Rule], list[RoleBinding]]:
    rule_rows = await db.fetch("SELECT * FROM execution.rbac_rules WHERE enabled ORDER BY id")
    rules = [Rule.from_dict({**dict(r), "resources": None}, "table", i)
             for i, r in enumerate(rule_rows)]
    binding_rows = await db.fetch(
        "SELECT tenant, actor, array_agg(role ORDER BY role) AS roles, environments"
        " FROM execution.rbac_role_bindings GROUP BY tenant, actor, environments"
        " ORDER BY tenant, actor")
    bindings = [RoleBinding(actor=b["actor"], roles=tuple(b["roles"]), tenant=b["tenant"],
                            environments=tuple(b["environments"])) for b in binding_rows]
    return rules, bindings


async def _load_signers(db: asyncpg.Pool | asyncpg.Connection) -> list[TableSigner]:
    """`execution.rbac_signers`: one enabled row per principal and public key, with the
    attestation it was registered with (judged by `trusted_table_signers`)."""
    rows = await db.fetch("SELECT principal, options, public_key, comment, attestation"
                          " FROM execution.rbac_signers WHERE enabled"
                          " ORDER BY principal, public_key")
    try:
        return [TableSigner(parse_allowed_signer(
                    " ".join(p for p in (r["principal"], r["options"], r["public_key"],
                                         r["comment"]) if p), f"rbac_signers[{r['principal']}]"),
                    json.loads(r["attestation"]) if r["attestation"] else None) for r in rows]
    except SignatureError as err:
        raise PolicyError(str(err)) from None


def keys_admins(doc: Mapping[str, Any] | None) -> set[str]:
    """Principals holding `keys-admin` in the policy *file* (never the tables: whoever can
    write the tables must not be able to make themselves an admin)."""
    return {b.actor for b in _bindings_from((doc or {}).get("roles"), "policy")
            if KEYS_ADMIN_ROLE in b.roles}


async def trusted_table_signers(doc: Mapping[str, Any] | None, rows: Sequence[TableSigner],
                                ) -> tuple[list[AllowedSigner], list[IgnoredSigner]]:
    """The table keys a keys-admin's valid attestation vouches for, and the ignored rest."""
    try:
        file_signers = parse_allowed_signers((doc or {}).get("allowed_signers"),
                                             "policy.allowed_signers")
    except SignatureError as err:
        raise PolicyError(str(err)) from None
    return await resolve_table_signers(file_signers, keys_admins(doc), rows)


async def _admin_keys(db: asyncpg.Pool | asyncpg.Connection,
                      doc: Mapping[str, Any] | None) -> list[AllowedSigner]:
    """Keys of keys-admins trusted right now: the file's, then attested table keys."""
    admins = keys_admins(doc)
    file_signers = parse_allowed_signers((doc or {}).get("allowed_signers"),
                                         "policy.allowed_signers")
    trusted, _ = await trusted_table_signers(doc, await _load_signers(db))
    return [s for s in [*file_signers, *trusted] if set(s.principals) & admins]


async def _audit_key_change(db: asyncpg.Connection, op: str, principal: str, fingerprint: str,
                            by: str, allowed: bool, reason: str, version: str) -> None:
    """Every key change, made or refused, is an audit row naming who asked."""
    await db.execute(AUDIT_INSERT, "*", by, [KEYS_ADMIN_ROLE] if allowed else [], op,
                     f"signer:{principal}", None, "*", None, None,
                     "allow" if allowed else "deny", None,
                     f"{reason} (key {fingerprint} of {principal})", version)


async def register_signer(db: asyncpg.Pool, principal: str, key_line: str, comment: str = "",
                          *, attestation: Attestation | None,
                          policy_file: str | Path | None = None) -> AllowedSigner:
    """Add (or re-enable) a principal's public key in `execution.rbac_signers`, vouched for
    by `attestation` (a keys-admin's signature over the change, `attest_key_change`); the
    change and its author are an audit row. Refused (and audited) without a valid one.
    `key_line` is a `.pub` file's text. Workers pick it up at their next decision."""
    try:
        signer = parse_allowed_signer(f"{principal} {key_line.strip()}", f"key of {principal}")
    except SignatureError as err:
        raise PolicyError(str(err)) from None
    if len(signer.principals) != 1 or signer.options:
        raise PolicyError(f"register one principal and a bare public key, not {key_line!r}")
    await _change_signer(db, "keys-add", signer, attestation, policy_file,
                         comment or signer.comment)
    return signer


async def _change_signer(db: asyncpg.Pool, op: str, signer: AllowedSigner,
                         attestation: Attestation | None, policy_file: str | Path | None,
                         comment: str = "") -> None:
    from datetime import UTC, datetime

    doc = load_policy_document(policy_file) if policy_file else None
    principal = signer.principals[0]
    version = build_policy(doc).version
    async with db.acquire() as conn, conn.transaction():
        reason = "no attestation: a key change needs a keys-admin's signature (--as, --key)"
        if attestation is not None:
            admins = await _admin_keys(conn, doc)
            reason = await check_attestation(op, principal, signer.public_key, attestation,
                                             admins, fresh_at=datetime.now(UTC)) or ""
            if reason and attestation.by not in keys_admins(doc):
                reason = f"{attestation.by} is not a {KEYS_ADMIN_ROLE} in the policy file"
        if reason:
            await _audit_key_change(conn, op, principal, signer.fingerprint,
                                    attestation.by if attestation else "unknown", False,
                                    f"refused: {reason}", version)
        else:
            assert attestation is not None
            if op == "keys-add":
                await conn.execute(
                    "INSERT INTO execution.rbac_signers (principal, public_key, comment,"
                    " attestation, added_by) VALUES ($1, $2, $3, $4::jsonb, $5)"
                    " ON CONFLICT (principal, public_key) DO UPDATE SET enabled = true,"
                    " comment = excluded.comment, attestation = excluded.attestation,"
                    " added_by = excluded.added_by", principal, signer.public_key, comment,
                    json.dumps(attestation.as_json()), attestation.by)
            else:
                await conn.execute("DELETE FROM execution.rbac_signers WHERE principal = $1"
                                   " AND public_key = $2", principal, signer.public_key)
            await _audit_key_change(conn, op, principal, signer.fingerprint, attestation.by,
                                    True, f"{op} by {attestation.by}", version)
    if reason:  # the refusal's audit row is committed; the change is not made
        raise PolicyError(f"{op} of {principal}'s key {signer.fingerprint} refused: {reason}")


async def remove_signer(db: asyncpg.Pool, principal: str, fingerprint: str | None = None,
                        *, attest: Any = None, policy_file: str | Path | None = None) -> int:
    """Remove a principal's keys (all, or the one with this `SHA256:` fingerprint); each
    removal is a keys-admin's signed decision: `attest(public_key) -> Attestation` signs it."""
    rows = await db.fetch("SELECT public_key FROM execution.rbac_signers WHERE principal = $1",
                          principal)
    doomed = [parse_allowed_signer(f"{principal} {r['public_key']}") for r in rows]
    doomed = [s for s in doomed if fingerprint is None or s.fingerprint == fingerprint]
    for signer in doomed:
        attestation = await attest(signer.public_key) if attest is not None else None
        await _change_signer(db, "keys-remove", signer, attestation, policy_file)
    return len(doomed)


def engine_from_env(env: Mapping[str, str] | None = None) -> RbacEngine:
    """A new engine for `env` (default: the process's environment), through the settings."""
    return RbacEngine.from_settings(load_settings(env))


async def load_policy(db: asyncpg.Pool | asyncpg.Connection | None = None,
                      engine: RbacEngine | None = None) -> Policy:
    """The current policy (file + table). Without an engine one is built from the settings
    for this call: callers that decide often keep an `RbacEngine` and pass it."""
    return await (engine or engine_from_env()).policy(db)


AUDIT_INSERT = (
    "INSERT INTO execution.rbac_audit (at, tenant, actor, roles, action, resource, tool,"
    " environment, execution_id, step_id, decision, rule_id, reason, policy_version)"
    " VALUES (clock_timestamp(), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")


@dataclass(frozen=True)
class AuditEntry:
    """One decision and what it was about, as `execution.rbac_audit` records it."""

    decision: Decision
    tenant: str
    actor: str
    action: str
    environment: str
    resource: str | None = None
    tool: str | None = None
    execution_id: str | None = None
    step_id: str | None = None

    def row(self) -> tuple[Any, ...]:
        d = self.decision
        return (self.tenant, self.actor, list(d.roles), self.action, self.resource, self.tool,
                self.environment, self.execution_id, self.step_id,
                "allow" if d.allowed else "deny", d.rule_id, d.reason, d.policy_version)


async def audit_many(db: asyncpg.Pool | asyncpg.Connection, entries: Sequence[AuditEntry]) -> None:
    """Record several decisions in one round trip (a submission checks every step)."""
    if entries:
        await db.executemany(AUDIT_INSERT, [e.row() for e in entries])


async def audit(db: asyncpg.Pool | asyncpg.Connection, decision: Decision, *, tenant: str,
                actor: str, action: str, environment: str, resource: str | None = None,
                tool: str | None = None, execution_id: str | None = None,
                step_id: str | None = None) -> None:
    """Record one decision in `execution.rbac_audit` (who, what, where, outcome, rule, version)."""
    entry = AuditEntry(decision, tenant, actor, action, environment, resource, tool,
                       execution_id, step_id)
    await db.execute(AUDIT_INSERT, *entry.row())


async def check(db: asyncpg.Pool | asyncpg.Connection, *, tenant: str, actor: str, action: str,
                environment: str, resource: str | None = None, tool: str | None = None,
                execution_id: str | None = None, step_id: str | None = None,
                engine: RbacEngine | None = None) -> Decision:
    """Load the current policy, decide, audit: what the worker calls before each action."""
    policy = await (engine or engine_from_env()).policy(db)
    decision = policy.evaluate(tenant=tenant, actor=actor, action=action,
                               environment=environment, resource=resource, tool=tool)
    await audit(db, decision, tenant=tenant, actor=actor, action=action,
                environment=environment, resource=resource, tool=tool,
                execution_id=execution_id, step_id=step_id)
    return decision

