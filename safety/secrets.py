"""Just-in-time resolution of secret references inside the activity that uses them.

A plan carries references only: `{"type": "secret", "path": "db/prod", "key": "password"}`
anywhere in a step's inputs (`key` optional). `SecretResolver.resolve(obj)` returns a copy with
every reference replaced by its value, plus the list of values so the caller can mask them.
Values never leave the activity; errors name the path, never a value.

Backends and resolution order:

1. An explicit scheme in the path picks one backend and nothing else:
   - `env:NAME`    environment variable `OPSC_SECRET_<NAME>` (see below), read through
                   `opsconductor.schema.config.read_secret_variable`: only that prefix is
                   readable, so a plan cannot read the worker's own configuration
                   (e.g. `OPSC_VAULT_TOKEN`);
   - `file:PATH`   the secrets file;
   - `vault:PATH`  Vault / OpenBao KV v2.
2. A path without a scheme tries, in order, the backends in `OPSC_SECRET_BACKENDS`
   (comma list, default `env,file,vault`), skipping the ones not configured; the first that
   has the secret wins. `SecretNotFound` if none has it.

Backend details:

- env: `OPSC_SECRET_<PATH upper-cased, every non-alphanumeric character → _>`, e.g. path
  `db/prod` → `OPSC_SECRET_DB_PROD`. With a `key`: `OPSC_SECRET_<PATH>_<KEY>`, else the
  variable holds a JSON object and `key` picks a field.
- file: `OPSC_SECRETS_FILE`, JSON or YAML, a mapping of path → value or path → {key: value}
  (nested mappings are walked by `/`). It must not be readable or writable by group or others
  (mode 0600 or 0400); otherwise resolution fails with `SecretBackendError`. Re-read when it
  changes.
- vault: `OPSC_VAULT_ADDR`, `OPSC_VAULT_TOKEN`, `OPSC_VAULT_MOUNT` (default `secret`); KV v2
  read of the path. With `key` that field; without, the field `value` or the only field.
  hvac is synchronous, so calls run in a worker thread.

The configuration comes from the settings (`SecretResolver.from_settings`); the worker builds
one resolver and hands it to its activities, so the file's parsed content and the Vault HTTP
session live as long as the worker.
"""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from opsconductor.schema.config import (
    SECRET_ENV_PREFIX,
    Settings,
    load_settings,
    read_secret_variable,
    secret_env_name,
)
from opsconductor.schema.tools import is_secret_ref

ENV_PREFIX = SECRET_ENV_PREFIX
DEFAULT_ORDER = ("env", "file", "vault")


class SecretError(Exception):
    """Base: secrets failures are not retryable (a retry would not make the secret appear)."""

    non_retryable = True


class SecretNotFound(SecretError):
    def __init__(self, path: str, key: str | None = None, detail: str = ""):
        self.path, self.key = path, key
        where = f"{path}#{key}" if key else path
        super().__init__(f"secret not found: {where}" + (f" ({detail})" if detail else ""))


class SecretBackendError(SecretError):
    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"secret {path}: {message}")


class Backend(Protocol):
    name: str

    async def get(self, path: str, key: str | None) -> str | None:
        """The value, or None if this backend does not have it."""
        ...


def _pick(path: str, key: str | None, data: Any) -> str | None:
    """A value from a scalar or a mapping of fields; None if the key is absent."""
    if isinstance(data, Mapping):
        if key is not None:
            value = data.get(key)
        elif "value" in data:
            value = data["value"]
        elif len(data) == 1:
            value = next(iter(data.values()))
        else:
            raise SecretBackendError(path, f"has several fields ({', '.join(sorted(data))}); "
                                           f"give \"key\"")
        if isinstance(value, Mapping):
            raise SecretBackendError(path, "the selected field is a mapping, not a value")
        return None if value is None else str(value)
    if key is not None:
        return None
    return None if data is None else str(data)


class EnvBackend:
    """`OPSC_SECRET_<PATH>` variables of `env` (default: the process's, read at each use)."""

    name = "env"

    def __init__(self, env: Mapping[str, str] | None = None):
        self.env = env

    async def get(self, path: str, key: str | None) -> str | None:
        if key is not None:
            direct = read_secret_variable(secret_env_name(path, key), self.env)
            if direct is not None:
                return direct
            raw = read_secret_variable(secret_env_name(path), self.env)
            if raw is None:
                return None
            try:
                data = json.loads(raw)
            except ValueError:
                return None
            return _pick(path, key, data) if isinstance(data, Mapping) else None
        return read_secret_variable(secret_env_name(path), self.env)


class FileBackend:
    """A 0600 JSON/YAML file; refused if group or others may read or write it."""

    name = "file"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._cache: tuple[tuple[int, int], Any] | None = None
        self._lock = threading.Lock()

    def _load(self, secret_path: str) -> Any:
        try:
            st = self.path.stat()
        except OSError as err:
            raise SecretBackendError(secret_path, f"cannot read secrets file {self.path}: "
                                                  f"{err.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretBackendError(
                secret_path, f"secrets file {self.path} has mode "
                             f"{stat.S_IMODE(st.st_mode):04o}: it must not be accessible to "
                             f"group or others (chmod 600 {self.path})")
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
            text = self.path.read_text()
            try:
                data = (json.loads(text) if self.path.suffix == ".json"
                        else yaml.safe_load(text))
            except (ValueError, yaml.YAMLError):
                # never echo the parser's message: it may quote the file's content
                raise SecretBackendError(secret_path, f"secrets file {self.path} is not valid "
                                                      f"JSON/YAML") from None
            if not isinstance(data, Mapping):
                raise SecretBackendError(secret_path, f"secrets file {self.path} must hold a "
                                                      f"mapping of path to value")
            self._cache = (stamp, data)
            return data

    async def get(self, path: str, key: str | None) -> str | None:
        data = self._load(path)
        if path in data:
            return _pick(path, key, data[path])
        node: Any = data
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return _pick(path, key, node)


class VaultBackend:
    """HashiCorp Vault / OpenBao KV v2 through hvac (sync, so run in a thread)."""

    name = "vault"

    def __init__(self, url: str, token: str, mount: str = "secret", timeout: float = 10.0):
        import hvac

        self.url, self.mount = url, mount
        self._client = hvac.Client(url=url, token=token, timeout=timeout)
        self._lock = threading.Lock()

    def _read(self, path: str) -> Any:
        import hvac.exceptions as hx
        import requests

        try:
            with self._lock:
                resp = self._client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=self.mount, raise_on_deleted_version=True)
        except hx.InvalidPath:
            return None
        except hx.Forbidden:
            raise SecretBackendError(path, f"vault at {self.url} refused access (403)") from None
        except hx.VaultError as err:
            raise SecretBackendError(path, f"vault error {type(err).__name__}") from None
        except requests.RequestException as err:
            raise SecretBackendError(path, f"vault at {self.url} unreachable: "
                                           f"{type(err).__name__}") from None
        return resp["data"]["data"]

    async def get(self, path: str, key: str | None) -> str | None:
        data = await asyncio.to_thread(self._read, path)
        if data is None:
            return None
        return _pick(path, key, data)


class SecretResolver:
    """Replaces secret references in nested data; knows which backends exist and their order."""

    def __init__(self, backends: Mapping[str, Backend], order: tuple[str, ...] = DEFAULT_ORDER):
        self.backends = dict(backends)
        self.order = tuple(n for n in order if n in self.backends)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretResolver:
        """env always (the settings' environment), file and vault when configured."""
        backends: dict[str, Backend] = {"env": EnvBackend(settings.environ)}
        if settings.secrets_file:
            backends["file"] = FileBackend(settings.secrets_file)
        if settings.vault_addr and settings.vault_token:
            backends["vault"] = VaultBackend(settings.vault_addr,
                                             settings.vault_token.get_secret_value(),
                                             settings.vault_mount)
        raw = settings.secret_backends
        order = tuple(p.strip() for p in raw.split(",") if p.strip()) if raw else DEFAULT_ORDER
        return cls(backends, order)

    async def get(self, path: str, key: str | None = None) -> str:
        scheme, sep, rest = path.partition(":")
        if sep and scheme in ("env", "file", "vault"):
            backend = self.backends.get(scheme)
            if backend is None:
                raise SecretBackendError(path, f"backend {scheme!r} is not configured")
            value = await backend.get(rest, key)
            if value is None:
                raise SecretNotFound(path, key, f"not in {scheme}")
            return value
        if not self.order:
            raise SecretNotFound(path, key, "no secret backend is configured")
        for name in self.order:
            value = await self.backends[name].get(path, key)
            if value is not None:
                return value
        raise SecretNotFound(path, key, f"looked in {', '.join(self.order)}")

    async def resolve(self, obj: Any) -> tuple[Any, list[str]]:
        """A copy of `obj` with every reference resolved, and every value used (for masking)."""
        refs: dict[tuple[str, str | None], str] = {}
        _collect(obj, refs)
        if not refs:
            return obj, []
        keys = list(refs)
        values = await asyncio.gather(*(self.get(p, k) for p, k in keys))
        resolved = dict(zip(keys, values, strict=True))
        return _substitute(obj, resolved), sorted(set(values))


def _ref_key(ref: Mapping[str, Any]) -> tuple[str, str | None]:
    path = ref.get("path")
    if not isinstance(path, str) or not path:
        raise SecretBackendError(str(path), "a secret reference needs a non-empty \"path\"")
    key = ref.get("key")
    return path, (None if key is None else str(key))


def _collect(obj: Any, out: dict[tuple[str, str | None], str]) -> None:
    if is_secret_ref(obj):
        out[_ref_key(obj)] = ""
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _collect(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect(v, out)


def _substitute(obj: Any, values: dict[tuple[str, str | None], str]) -> Any:
    if is_secret_ref(obj):
        return values[_ref_key(obj)]
    if isinstance(obj, Mapping):
        return {k: _substitute(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, values) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_substitute(v, values) for v in obj)
    return obj


def contains_secret_refs(obj: Any) -> bool:
    refs: dict[tuple[str, str | None], str] = {}
    _collect(obj, refs)
    return bool(refs)


def resolver_from_env(env: Mapping[str, str] | None = None) -> SecretResolver:
    """A resolver for `env` (default: the process's environment), through the settings.

    Each call builds new backends: a long-lived process builds one resolver with
    `SecretResolver.from_settings` and keeps it.
    """
    return SecretResolver.from_settings(load_settings(env))
