"""Resolve a step's `target` to an asset, and an asset's credentials to values.

Where assets come from:

* the settings' `asset_service_url` (`OPSC_ASSET_SERVICE_URL`) set: OpsConductor's Asset
  Service (`asset_service_token` is its bearer token). Its credentials endpoint is used when a
  record names no secret refs.
* otherwise an inventory file: `inventory` (`OPSC_INVENTORY`), else
  `$OPSC_HOME/inventory.yaml|yml|json`; re-read when it changes.

Every function takes the settings (and, for credentials, the secret resolver) the caller
holds; without them they are loaded for that call.

Inventory format (YAML or JSON; see examples/inventory.yaml)::

    assets:
      - id: web-1                      # unique; a step's target matches id or hostname
        hostname: web-1.example.internal
        connector: ssh                 # local | ssh | automation-service
        address: 10.0.0.11             # optional, defaults to hostname
        port: 22                       # optional
        user: deploy
        os: linux                      # windows -> PowerShell via the Automation Service
        credentials:                   # secret references only, never values
          private_key: {type: secret, path: ssh/web-1/key}
          passphrase: {type: secret, path: ssh/web-1/passphrase}
          password: {type: secret, path: ssh/web-1/password}
        host_key_checking: strict      # strict (default) | accept-new | off
        known_hosts: /etc/opsconductor/known_hosts   # else OPSC_SSH_KNOWN_HOSTS
        tags: [web, prod]
        database:                      # for sql_query steps
          host: 10.0.0.21
          dbname: app
          user: reporter
          password: {type: secret, path: db/app/reporter}
        automation:                    # for connector automation-service
          base_url: http://automation:3003
          connection_type: powershell  # ssh | powershell | local

`None`, `localhost` and `local` mean the worker's own machine (no asset). A target that is not
found raises `UnknownAsset`; `check_targets` lets the submitter refuse a plan before anything
starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from opsconductor.activities.service_clients import AssetNotFound, AssetServiceClient
from opsconductor.safety.secrets import SecretError, SecretNotFound, SecretResolver
from opsconductor.schema.assets import Asset, Inventory
from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.errors import ErrorType

LOCAL_TARGETS = frozenset({"localhost", "local", "127.0.0.1", "::1"})

_inventory_cache: dict[str, tuple[tuple[int, int], Inventory]] = {}


class UnknownAsset(LookupError):
    def __init__(self, target: str, where: str = ""):
        super().__init__(f"unknown asset {target!r}" + (f" ({where})" if where else ""))
        self.target = target


class InventoryError(ValueError):
    pass


def secret_failure(err: SecretError) -> tuple[ErrorType, bool]:
    """(error_type, retryable) for a secret that could not be resolved: a missing secret
    stays missing; a backend outage (Vault down) may pass."""
    if isinstance(err, SecretNotFound):
        return ErrorType.SECRET_NOT_FOUND, False
    return ErrorType.SECRET_BACKEND_ERROR, True


def is_local_target(target: str | None) -> bool:
    return target is None or target.strip().lower() in LOCAL_TARGETS or not target.strip()


def inventory_path(settings: Settings | None = None) -> Path | None:
    return (settings or load_settings()).inventory_path()


def load_inventory(path: str | Path) -> Inventory:
    """Parse and validate an inventory file; cached until the file changes."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as err:
        raise InventoryError(f"cannot read inventory {p}: {err}") from err
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _inventory_cache.get(str(p))
    if cached and cached[0] == stamp:
        return cached[1]
    text = p.read_text()
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise InventoryError(f"inventory {p} is not valid {p.suffix.lstrip('.') or 'YAML'}: "
                             f"{err}") from err
    if isinstance(doc, list):
        doc = {"assets": doc}
    try:
        inv = Inventory.model_validate(doc or {})
    except ValidationError as err:  # each problem with where it is, not pydantic's dump
        raise InventoryError(f"inventory {p}: " + "; ".join(
            (".".join(str(x) for x in e["loc"]) + ": " if e["loc"] else "")
            + str(e["msg"]).removeprefix("Value error, ") for e in err.errors())) from None
    except ValueError as err:
        raise InventoryError(f"inventory {p}: {err}") from err
    _inventory_cache[str(p)] = (stamp, inv)
    return inv


_SSH_SERVICES = {"ssh", "sftp", "scp"}
_AUTOMATION_SERVICES = {"winrm", "powershell", "winrm_https", "rdp"}


def asset_from_record(record: dict[str, Any]) -> Asset:
    """An Asset Service record in our shape, or in the service's own field names."""
    if "connector" in record:
        return Asset.model_validate({**record, "source": "asset-service"})
    hostname = record.get("hostname") or record.get("name") or record.get("ip_address")
    service = str(record.get("service_type") or "").lower()
    os_name = str(record.get("os_type") or record.get("os") or "linux")
    if service in _AUTOMATION_SERVICES or (not service and os_name.lower().startswith("win")):
        connector = "automation-service"
    else:
        connector = "ssh"
    return Asset.model_validate({
        "id": record.get("id") if record.get("id") is not None else hostname,
        "hostname": hostname,
        "connector": connector,
        "address": record.get("ip_address") or hostname,
        "port": record.get("port"),
        "user": record.get("username") or record.get("user"),
        "os": os_name,
        "tags": record.get("tags") or [],
        "source": "asset-service",
    })


async def resolve_asset(target: str | None, settings: Settings | None = None) -> Asset | None:
    """The asset a step targets; None for the worker's own machine."""
    if is_local_target(target):
        return None
    assert target is not None
    settings = settings or load_settings()
    client = AssetServiceClient.from_settings(settings)
    if client is not None:
        async with client:
            try:
                return asset_from_record(await client.find(target))
            except AssetNotFound as err:
                raise UnknownAsset(target, "not in the Asset Service") from err
    path = settings.inventory_path()
    if path is None:
        raise UnknownAsset(target, "no inventory: set OPSC_INVENTORY or OPSC_ASSET_SERVICE_URL")
    asset = load_inventory(path).find(target.strip())
    if asset is None:
        raise UnknownAsset(target, f"not in inventory {path}")
    return asset


async def resolve_targets(targets: Iterable[str | None], settings: Settings | None = None,
                          ) -> tuple[dict[str, str | None], list[str]]:
    """Each target's asset id (None: this machine) and the targets that do not resolve
    (unique, in order): for submission, so that locks key on the asset, not the name used.

    Asset Service outages and a broken inventory raise: they are not "unknown asset".
    """
    settings = settings or load_settings()
    ids: dict[str, str | None] = {}
    unknown: list[str] = []
    for target in dict.fromkeys(targets):
        if not target:
            continue
        try:
            asset = await resolve_asset(target, settings)
        except UnknownAsset:
            unknown.append(str(target))
            continue
        ids[target] = asset.id if asset is not None else None
    return ids, unknown


async def check_targets(targets: Iterable[str | None],
                        settings: Settings | None = None) -> list[str]:
    """The targets that do not resolve (unique, in order)."""
    return (await resolve_targets(targets, settings))[1]


async def resolve_secret_refs(obj: Any, secrets: SecretResolver | None = None,
                              ) -> tuple[Any, list[str]]:
    """Replace secret references in `obj` with values; also return the values for masking."""
    resolver = secrets or SecretResolver.from_settings(load_settings())
    resolved, values = await resolver.resolve(obj)
    return resolved, list(values)


async def resolve_credentials(asset: Asset, secrets: SecretResolver | None = None,
                              settings: Settings | None = None,
                              ) -> tuple[dict[str, str], list[str]]:
    """The asset's credentials as values (resolved now, never stored) and the secret values.

    Raises `opsconductor.safety.secrets.SecretError` (`SecretNotFound` when a reference does not
    resolve).
    """
    if asset.credentials:
        refs = {k: v.model_dump(exclude_none=True) for k, v in asset.credentials.items()}
        resolved, values = await resolve_secret_refs(refs, secrets)
        return {k: str(v) for k, v in resolved.items() if v is not None}, values
    if asset.source == "asset-service":
        client = AssetServiceClient.from_settings(settings or load_settings())
        if client is not None:
            async with client:
                creds = await client.credentials(asset.id)
            out = {k: str(v) for k, v in creds.items()
                   if k in ("password", "private_key", "passphrase", "username", "token")
                   and v not in (None, "")}
            return out, [v for k, v in out.items() if k != "username"]
    return {}, []
