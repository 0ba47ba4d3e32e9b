"""Assets: the machines, databases and services a step acts on.

An asset says how to reach a target (its connector, address, port, user) and where its
credentials live. Credentials are always secret references, resolved inside the activity that
uses them, so an inventory file or an Asset Service answer never carries a password.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opsconductor.schema.tools import SecretRef

Connector = Literal["local", "ssh", "automation-service"]
HostKeyChecking = Literal["strict", "accept-new", "off"]


class DatabaseTarget(BaseModel):
    """A PostgreSQL database on an asset: a DSN, or its parts plus a password reference.

    `dsn` may itself be a secret reference when the whole URL is secret.
    """

    model_config = ConfigDict(extra="forbid")
    dsn: str | SecretRef | None = None
    host: str | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str | None = None
    user: str | None = None
    password: SecretRef | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca",
                     "verify-full"] | None = None
    connect_timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _dsn_or_parts(self) -> DatabaseTarget:
        if self.dsn is None and not self.dbname:
            raise ValueError("a database target needs `dsn` or `dbname` (with host/user)")
        return self


class AutomationTarget(BaseModel):
    """How OpsConductor's Automation Service reaches this asset."""

    model_config = ConfigDict(extra="forbid")
    base_url: str | None = None  # default: env OPSC_AUTOMATION_SERVICE_URL
    connection_type: Literal["ssh", "powershell", "local"] | None = None  # default by `os`
    api_token: SecretRef | None = None  # bearer token for the service itself


class Asset(BaseModel):
    """One target. `address` defaults to `hostname`; `port` to the connector's default."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1)
    hostname: str = Field(min_length=1)
    connector: Connector = "ssh"
    address: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    os: str = "linux"
    credentials: dict[str, SecretRef] = Field(default_factory=dict)
    known_hosts: str | None = None  # path of a known_hosts file for this asset
    host_key_checking: HostKeyChecking = "strict"
    tags: list[str] = Field(default_factory=list)
    database: DatabaseTarget | None = None
    automation: AutomationTarget | None = None
    source: Literal["inventory", "asset-service"] = "inventory"

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("credentials", mode="before")
    @classmethod
    def _refuse_plain_secrets(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name, value in v.items():
                if not isinstance(value, dict | SecretRef):
                    raise ValueError(f"credentials.{name} must be a secret reference "
                                     '({"type": "secret", "path": "..."}), not a plain value')
        return v

    @property
    def host(self) -> str:
        return self.address or self.hostname

    @property
    def ssh_port(self) -> int:
        return self.port or 22

    @property
    def is_windows(self) -> bool:
        return self.os.lower().startswith("win")

    def matches(self, target: str) -> bool:
        t = target.lower()
        return t in (self.id.lower(), self.hostname.lower())


class Inventory(BaseModel):
    """The inventory file's shape: `{"assets": [...]}` (YAML or JSON)."""

    model_config = ConfigDict(extra="forbid")
    assets: list[Asset] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        seen: dict[str, str] = {}
        for asset in self.assets:
            for key in {asset.id.lower(), asset.hostname.lower()}:
                if key in seen and seen[key] != asset.id:
                    raise ValueError(f"assets {seen[key]!r} and {asset.id!r} share the name "
                                     f"{key!r}")
                seen[key] = asset.id
        return self

    def find(self, target: str) -> Asset | None:
        """By id first, then by hostname (both case-insensitive)."""
        t = target.lower()
        for asset in self.assets:
            if asset.id.lower() == t:
                return asset
        for asset in self.assets:
            if asset.hostname.lower() == t:
                return asset
        return None
