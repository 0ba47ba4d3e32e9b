"""Every `OPSC_*` environment variable, in one settings object.

`Settings` is loaded once per process (the worker builds its activities with it) and passed
down as a dependency. Unset means the embedded default. Server addresses fall back to a
running dev stack: `opsconductor dev` writes `$OPSC_HOME/stack.json`, and every command reads
it when the variables are unset, so nobody has to pass addresses by hand.

Files named here (RBAC policy, inventory, secrets file) are read by the modules that use them
at the moment of use, so a changed file takes effect without restarting a worker; the
variables themselves are read when the settings are loaded.

One dynamic family is not a field: `OPSC_SECRET_<PATH>` holds secret values for the env
secret backend (see `opsconductor.safety.secrets`); it is read only through
`read_secret_variable` (or `Settings.secret_variable`), at the moment of use.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "OPSC_"
SECRET_ENV_PREFIX = "OPSC_SECRET_"
DEFAULT_HOME = "./.opsconductor"
DEFAULT_TASK_QUEUE = "opsconductor-execution"
DEFAULT_NAMESPACE = "default"
STACK_FILE = "stack.json"
# What a running dev stack's stack.json may provide (when the variable is unset): the servers,
# and the files the worker decides with, so a client in another shell (only OPSC_HOME set)
# reaches the same RBAC and asset decisions as the stack's worker.
STACK_FIELDS = ("temporal_address", "namespace", "task_queue", "database_url", "ui_url",
                "rbac_policy", "rbac_strict", "inventory", "asset_service_url")
INVENTORY_NAMES = ("inventory.yaml", "inventory.yml", "inventory.json")
# Secret-bearing settings that may come from a file instead (Docker and Kubernetes secrets):
# `OPSC_<FIELD>_FILE` names a file whose text, less one trailing newline, is the value.
FILE_FIELDS = ("database_url", "vault_token", "asset_service_token", "alert_webhook_secret")

# The environment `load_settings(env)` reads instead of the process's, while it builds.
_environ_override: ContextVar[Mapping[str, str] | None] = ContextVar("opsc_environ",
                                                                     default=None)


def secret_env_name(path: str, key: str | None = None) -> str:
    """`OPSC_SECRET_<PATH>[_<KEY>]`: upper-cased, every non-alphanumeric character -> `_`."""
    name = SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", path).upper()
    return name if key is None else f"{name}_{re.sub(r'[^A-Za-z0-9]', '_', key).upper()}"


def read_secret_variable(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The one reader of the `OPSC_SECRET_<PATH>` family (None when unset).

    Only names with that prefix are readable, so a plan's secret reference can never read
    the worker's own configuration (`OPSC_VAULT_TOKEN`, ...). Read at the moment of use.
    """
    if not name.startswith(SECRET_ENV_PREFIX) or name == SECRET_ENV_PREFIX:
        raise ValueError(f"{name!r} is not an {SECRET_ENV_PREFIX}<PATH> variable")
    return (os.environ if environ is None else environ).get(name)


class _EnvSource(EnvSettingsSource):
    """`OPSC_*` variables from the process, or from the mapping `load_settings(env)` got."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        override = _environ_override.get()
        if override is None:
            return super()._load_env_vars()
        from pydantic_settings.sources.utils import parse_env_vars

        return parse_env_vars(override, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)


class SettingsFileError(ValueError):
    """An `OPSC_<FIELD>_FILE` that cannot be read, or set beside `OPSC_<FIELD>`."""


class _SecretFileSource(PydanticBaseSettingsSource):
    """`OPSC_<FIELD>_FILE` for the fields of FILE_FIELDS: the value is the file's text."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = _environ_override.get()
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in FILE_FIELDS:
            direct = f"{ENV_PREFIX}{name.upper()}"
            variable = f"{direct}_FILE"
            path = env.get(variable)
            if not path:
                continue
            if env.get(direct):
                raise SettingsFileError(f"set {direct} or {variable}, not both")
            try:
                text = Path(path).read_text()
            except OSError as err:
                raise SettingsFileError(f"{variable}={path}: cannot read it: "
                                        f"{err.strerror}") from None
            values[name] = text.removesuffix("\n").removesuffix("\r")
        return values


class _StackFileSource(PydanticBaseSettingsSource):
    """Server addresses from `$OPSC_HOME/stack.json`, below the variables in priority."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        home = self.current_state.get("home") or DEFAULT_HOME
        path = Path(home).expanduser().resolve() / STACK_FILE
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict):
            return {}
        return {k: doc[k] for k in STACK_FIELDS if doc.get(k)}


class Settings(BaseSettings):
    """The process's configuration: each field is the variable `OPSC_<FIELD NAME>`.

    Priority: explicit arguments, then `OPSC_*` variables (empty = unset), then
    `$OPSC_HOME/stack.json` (server addresses and the worker's policy and inventory files),
    then the defaults below.

    Dynamic family, not a field: `OPSC_SECRET_<PATH>` (path upper-cased, every
    non-alphanumeric character -> `_`; with a key `OPSC_SECRET_<PATH>_<KEY>`) holds secret
    values for the env secret backend. Read it only through `secret_variable`.
    `OPSC_SECRET_BACKENDS` is the one name in that family that is configuration.

    Secrets from files: for the fields in FILE_FIELDS (`database_url`, `vault_token`,
    `asset_service_token`, `alert_webhook_secret`), `OPSC_<FIELD>_FILE` names a file holding
    the value (a mounted Docker or Kubernetes secret); setting both forms is an error.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
                                      extra="ignore")

    # -- where things are
    home: Path = Field(Path(DEFAULT_HOME), description=(
        "State directory: Temporal SQLite file, PostgreSQL data, logs, stack.json, and the "
        "dev stack's default RBAC policy and inventory."))
    temporal_address: str | None = Field(None, description=(
        "Temporal frontend host:port. Set it and the dev stack starts no Temporal server; "
        "unset, a running dev stack's stack.json provides it."))
    namespace: str = Field(DEFAULT_NAMESPACE, description="Temporal namespace.")
    temporal_outage_seconds: float = Field(30.0, gt=0, description=(
        "The longest Temporal outage (a restart, a rolling upgrade) that work rides through: "
        "every call to Temporal (a step's heartbeat and result, a command's signal) is "
        "retried for this long before it fails. TLS, API keys and profiles come from the "
        "`temporal` CLI's own TEMPORAL_* variables and temporal.toml (docs/temporal.md)."))
    task_queue: str = Field(DEFAULT_TASK_QUEUE, description=(
        "Task queue the workers poll and executions are started on."))
    database_url: str | None = Field(None, description=(
        "PostgreSQL URL of the mirror, locks, audit and idempotency records. Set it and the "
        "dev stack starts no embedded server; unset, stack.json provides it."))
    ui_url: str | None = Field(None, description=(
        "Temporal Web UI base URL, for links; normally written to stack.json by the dev "
        "stack."))
    codec_origins: str | None = Field(None, description=(
        "Comma list of Web UI origins (scheme://host:port) allowed to call the payload codec "
        "at `/codec` (CORS), so the UI can show compressed payloads; unset: the origin of "
        "`OPSC_UI_URL`. Point the UI at it with `--ui-codec-endpoint` (the dev stack does)."))
    # -- the HTTP API's authentication (opsconductor.starter.auth)
    oidc_issuer: str | None = Field(None, description=(
        "OIDC issuer URL (Keycloak: `https://<host>/realms/<realm>`) whose bearer tokens the "
        "HTTP API and the payload codec accept; the token's `iss` must equal it. Unset: "
        "`serve` binds only to loopback and accepts only its local token "
        "(`OPSC_API_TOKEN_FILE`)."))
    oidc_audience: str | None = Field(None, description=(
        "Comma list of accepted `aud` values (the client id of the API in Keycloak); "
        "required with `OPSC_OIDC_ISSUER`."))
    oidc_jwks: str | None = Field(None, description=(
        "The issuer's signing keys: an https URL (a loopback http URL is accepted too) or a "
        "JWKS file. Cached; fetched again on an unknown `kid` (at most once per "
        "`OPSC_OIDC_JWKS_REFRESH_SECONDS`). Unset: the `jwks_uri` of the issuer's "
        "`/.well-known/openid-configuration`."))
    oidc_tenant_claim: str = Field("tenant", description=(
        "The claim naming the token's tenant; a token without it is refused (unless it holds "
        "`OPSC_OIDC_ALL_TENANTS_ROLE`)."))
    oidc_actor_claim: str = Field("preferred_username", description=(
        "The claim naming the actor (the RBAC principal `actor:<name>`); `sub` when the "
        "token lacks it."))
    oidc_client_id: str | None = Field(None, description=(
        "Comma list of clients whose Keycloak `resource_access.<client>.roles` count as "
        "roles (beside `realm_access.roles` and a `roles` claim); default: the audiences."))
    oidc_algorithms: str = Field("RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,ES512,EdDSA",
                                 description=(
        "Comma list of accepted signature algorithms; only asymmetric ones may be named "
        "(never `none`, never HS*)."))
    oidc_all_tenants_role: str | None = Field(None, description=(
        "A role that lets a token see every tenant (an operator's); unset: no token sees "
        "more than its own tenant."))
    oidc_leeway_seconds: float = Field(30.0, ge=0, le=300, description=(
        "Clock skew allowed when checking `exp` and `nbf`."))
    oidc_jwks_cache_seconds: float = Field(300.0, gt=0, description=(
        "How long fetched signing keys are used before they are fetched again."))
    oidc_jwks_refresh_seconds: float = Field(30.0, ge=0, description=(
        "At most one fetch of the keys per this many seconds on account of unknown `kid`s, "
        "so forged tokens cannot make the API hammer the issuer."))
    oidc_allow_http: bool = Field(False, description=(
        "Accept an http (not https) issuer and JWKS URL off loopback: only inside a trusted "
        "network (a compose network reaching Keycloak as http://keycloak:8080)."))
    api_roles: str | None = Field(None, description=(
        "Comma list of roles of which an OIDC token must hold one to use the API (403 "
        "otherwise); unset: any valid token of a tenant reads that tenant."))
    api_metrics_public: bool = Field(False, description=(
        "Serve the HTTP API's `/metrics` without a token (for a scraper inside the network); "
        "`/healthz` and `/readyz` are always public."))
    api_token_file: Path | None = Field(None, description=(
        "The local API token of `serve` without an issuer (and of the dev stack's API): "
        "random, made on first start with mode 0600, reused while the file exists; default "
        "`$OPSC_HOME/api-token`."))
    # -- behaviour
    idempotency_window_seconds: float = Field(86_400.0, description=(
        "A duplicate request within this window returns the existing execution."))
    workflow_sandbox: Literal["fast", "strict"] = Field("fast", description=(
        "`fast`: the workflow modules are passed through the sandbox (a third less worker "
        "CPU); `strict`: re-imported for every run, so a non-deterministic call fails loudly "
        "(the test suite's mode)."))
    actor: str | None = Field(None, description=(
        "Default actor of CLI commands that act for someone (else the login name)."))
    graceful_shutdown_seconds: float = Field(30.0, ge=0, description=(
        "On SIGTERM a worker stops taking work and lets running steps finish (heartbeating) "
        "for up to this long before it cancels what is left."))
    sticky_queue_timeout_seconds: float = Field(2.0, gt=0, description=(
        "How long a workflow task waits on a worker's sticky queue before any worker may "
        "take it: how fast a new worker takes over from a dead one."))
    output_excerpt_chars: int = Field(4096, ge=256, le=65536, description=(
        "Per stream, how much of a step's output its result in Temporal history carries: the "
        "whole stream below this, else an escaped head and tail. The full masked output (up to "
        "10 MiB per stream, truncation marked) is stored in execution.step_outputs and shown "
        "by `opsconductor logs`."))
    # -- observability
    metrics_address: str = Field("127.0.0.1:9464", description=(
        "host:port where a worker serves its Prometheus `/metrics` (our `opsc_*` metrics and "
        "the Temporal SDK's); empty disables it; a port in use falls back to a free one (the "
        "worker logs the URL). Traces and OTLP metrics follow the standard `OTEL_*` "
        "variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, ...); unset, tracing is off."))
    alert_webhook_url: str | None = Field(None, description=(
        "Where workers POST SLA alerts (at risk, violated) as JSON; unset, alerts are only "
        "events and metrics."))
    alert_webhook_secret: SecretStr | None = Field(None, description=(
        "HMAC-SHA256 key: each alert's body is signed in `X-Opsc-Signature: sha256=<hex>`."))
    sla_check_seconds: float = Field(10.0, gt=0, description=(
        "How often a worker compares executions' ETA and SLA deadline (from the mirror)."))
    stall_seconds: float = Field(900.0, gt=0, description=(
        "`opsconductor health` reports executions in flight (not waiting for approval) with "
        "no event for this long as without progress."))
    metrics_refresh_seconds: float = Field(10.0, gt=0, description=(
        "How often a worker reads the gauges that come from the mirror (executions in "
        "flight, dead-letter queue depth)."))
    # -- safety
    rbac_policy: Path | None = Field(None, description=(
        "RBAC policy file (YAML/JSON, format in opsconductor.safety.rbac), re-read when it "
        "changes. Unset: the table rules only, else the built-in development policy."))
    signing_key: Path | None = Field(None, description=(
        "SSH key that approve/reject/cancel/resolve sign with (a private key file, or a "
        "`.pub` whose private key is in the ssh-agent). Unset: the ssh-agent's key registered "
        "for the principal, if an agent runs; else decisions are sent unsigned."))
    rbac_strict: str | None = Field(None, description=(
        "Overrides the policy's strict environments: true/1/yes = all, false/0/no = none, "
        "or a comma list of environments."))
    window_policy: Path | None = Field(None, description=(
        "Change windows and blackouts (YAML/JSON, format in opsconductor.schema.windows and "
        "docs/schedules.md), re-read by the worker before a run starts and while it waits. "
        "Unset: no window governs any run (a plan whose safety checks ask for a maintenance "
        "window is then refused)."))
    # -- audit chain and retention (docs/audit.md)
    audit_signing_key: Path | None = Field(None, description=(
        "SSH private key (or a `.pub` whose key is in the ssh-agent) that signs audit "
        "checkpoints (`opsconductor audit checkpoint`, `prune`). Its public half verifies "
        "them unless `OPSC_AUDIT_TRUSTED_KEYS` is set."))
    audit_trusted_keys: Path | None = Field(None, description=(
        "allowed_signers file whose `opsconductor-audit` lines are the keys `audit verify` "
        "accepts on checkpoints (for verifiers that do not hold the signing key)."))
    retention_outputs_days: float | None = Field(None, gt=0, description=(
        "`opsconductor prune` deletes step outputs older than this many days (never a "
        "running execution's or one with an open DLQ entry). Unset: kept."))
    retention_events_days: float | None = Field(None, gt=0, description=(
        "`opsconductor prune` deletes execution events older than this (same exceptions), "
        "behind a signed checkpoint. Unset: kept."))
    retention_audit_days: float | None = Field(None, gt=0, description=(
        "`opsconductor prune` deletes RBAC audit rows and approvals older than this (same "
        "exceptions), behind a signed checkpoint. Unset: kept."))
    mask_patterns: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "Extra masking regexes, a JSON list of strings; a group named `secret` (or the first "
        "group) masks just that part."))
    secrets_file: Path | None = Field(None, description=(
        "Secrets file (JSON/YAML, mode 0600) for the file secret backend."))
    vault_addr: str | None = Field(None, description=(
        "Vault / OpenBao address for the vault secret backend (KV v2)."))
    vault_token: SecretStr | None = Field(None, description="Token of the vault backend.")
    vault_mount: str = Field("secret", description="KV v2 mount of the vault backend.")
    secret_backends: str | None = Field(None, description=(
        "Order in which a reference without a scheme tries the secret backends, a comma list "
        "(default env,file,vault)."))
    # -- assets and services
    inventory: Path | None = Field(None, description=(
        "Asset inventory file (format in opsconductor.activities.assets), re-read when it "
        "changes; unset: $OPSC_HOME/inventory.yaml|yml|json if present."))
    asset_service_url: str | None = Field(None, description=(
        "OpsConductor Asset Service base URL; set, it replaces the inventory file."))
    asset_service_token: SecretStr | None = Field(None, description=(
        "Bearer token for the Asset Service."))
    automation_service_url: str | None = Field(None, description=(
        "OpsConductor Automation Service base URL, for assets whose connector is "
        "`automation-service` and that name none themselves."))
    network_service_url: str | None = Field(None, description=(
        "OpsConductor network service base URL: catalog tools routed to `network-service` "
        "are sent there by POST /execute-plan (docs/catalog.md); unset, they are refused."))
    communication_service_url: str | None = Field(None, description=(
        "OpsConductor communication service base URL: sendmail, slack/teams CLIs and "
        "webhook_sender are sent there by POST /execute-plan; unset, they are refused."))
    ssh_known_hosts: Path | None = Field(None, description=(
        "known_hosts for strict SSH host-key checking when the asset names none "
        "(default ~/.ssh/known_hosts)."))
    stage_e_environment: Literal["dev", "staging", "prod"] = Field("prod", description=(
        "The environment OpsConductor's Stage E calls (`opsconductor.starter.stage_e`) run "
        "in when their context names none: prod, the strictest, unless set."))
    # -- the test suite
    test_database_url: str | None = Field(None, description=(
        "Test suite only: an existing PostgreSQL to test against instead of an embedded "
        "one."))
    record_histories: bool = Field(False, description=(
        "Test suite only: re-record the workflow histories the replay test checks."))
    fault_counts: str | None = Field(None, description=(
        "Test suite only: rounds of the fault-injection suite, e.g. "
        "`kill9=10,sigterm=5,temporal=5,postgres=5,restart5=5,restart25=5` (default: what "
        "fits in ~4 minutes, one round of each restart length)."))

    _environ: Mapping[str, str] = PrivateAttr(default_factory=lambda: os.environ)

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), _SecretFileSource(settings_cls),
                _StackFileSource(settings_cls))

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("workflow_sandbox", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("mask_patterns", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            parsed = json.loads(value)
        except ValueError as err:
            raise ValueError(f"OPSC_MASK_PATTERNS must be a JSON list of regex strings: "
                             f"{err}") from None
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise ValueError("OPSC_MASK_PATTERNS must be a JSON list of regex strings")
        return parsed

    @property
    def stack_file(self) -> Path:
        return self.home / STACK_FILE

    @property
    def environ(self) -> Mapping[str, str]:
        """The environment these settings were loaded from (live for the process's own)."""
        return self._environ

    def inventory_path(self) -> Path | None:
        """The inventory file in force: `inventory`, else the first one found in `home`."""
        if self.inventory is not None:
            return self.inventory.expanduser()
        for name in INVENTORY_NAMES:
            if (self.home / name).is_file():
                return self.home / name
        return None

    def secret_variable(self, path: str, key: str | None = None) -> str | None:
        """`OPSC_SECRET_<PATH>[_<KEY>]` from these settings' environment, at the moment of use."""
        return read_secret_variable(secret_env_name(path, key), self._environ)


@contextmanager
def _reading(env: Mapping[str, str]) -> Iterator[None]:
    token = _environ_override.set(env)
    try:
        yield
    finally:
        _environ_override.reset(token)


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """The settings from `env` (default: this process's environment) and stack.json.

    With `env` given, nothing is read from the process's environment, so a test or a child
    process's configuration can be loaded exactly.
    """
    if env is None:
        return Settings(**overrides)
    env = dict(env)
    with _reading(env):
        settings = Settings(**overrides)
    settings._environ = env
    return settings
