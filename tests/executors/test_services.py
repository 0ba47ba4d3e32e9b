"""Asset Service client, asset resolution, and the Automation Service connector, against real
local services implementing their contracts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsconductor.activities.assets import (
    UnknownAsset,
    check_targets,
    resolve_asset,
    resolve_credentials,
)
from opsconductor.activities.executors.automation import AutomationCommandRunner
from opsconductor.activities.executors.registry import command_runner_for
from opsconductor.activities.service_clients import (
    AssetNotFound,
    AssetServiceAuthError,
    AssetServiceClient,
    AssetServiceError,
    AutomationServiceClient,
)
from opsconductor.schema.assets import Asset
from opsconductor.schema.enums import StepKind
from opsconductor.starter.ports import free_port
from tests.executors.conftest import set_secret
from tests.executors.helpers import make_ctx
from tests.executors.servers import AssetService, AutomationService, serve

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def asset_service() -> Iterator[str]:
    AssetService.assets = {
        "42": {"id": 42, "name": "app-1", "hostname": "app-1.corp", "ip_address": "10.1.1.1",
               "os_type": "linux", "service_type": "ssh", "port": 2222, "username": "ops"},
        "win": {"id": "win", "hostname": "win-9", "connector": "automation-service",
                "os": "windows", "credentials": {"password": {"type": "secret",
                                                               "path": "test/win/pw"}}},
    }
    AssetService.creds = {"42": {"username": "ops", "password": "from-service", "extra": "x"}}
    AssetService.fail_next = 0
    AssetService.calls = 0
    with serve(AssetService) as url:
        yield url


async def test_asset_client_get_query_credentials(asset_service: str) -> None:
    async with AssetServiceClient(asset_service, token="asset-token", backoff=0.01) as c:
        assert (await c.get("42"))["hostname"] == "app-1.corp"
        assert (await c.get_by_hostname("APP-1.corp"))["id"] == 42
        assert [a["id"] for a in await c.query(os_type="linux")] == [42]
        assert (await c.find("win-9"))["id"] == "win"
        assert (await c.credentials("42"))["password"] == "from-service"
        with pytest.raises(AssetNotFound):
            await c.get("nope")
        with pytest.raises(AssetNotFound):
            await c.find("nope")


async def test_asset_client_retries_5xx_then_typed_errors(asset_service: str) -> None:
    async with AssetServiceClient(asset_service, token="asset-token", backoff=0.01) as c:
        AssetService.fail_next = 2
        AssetService.calls = 0
        assert (await c.get("42"))["id"] == 42
        assert AssetService.calls == 3
        AssetService.fail_next = 10
        with pytest.raises(AssetServiceError, match="503"):
            await c.get("42")
        AssetService.fail_next = 0
    async with AssetServiceClient(asset_service, token="wrong", backoff=0.01) as c:
        with pytest.raises(AssetServiceAuthError):
            await c.get("42")
    dead = AssetServiceClient(f"http://127.0.0.1:{free_port()}", attempts=3, backoff=0.01)
    with pytest.raises(AssetServiceError, match="after 3 attempts"):
        await dead.get("42")
    await dead.aclose()


async def test_resolve_through_asset_service(asset_service: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSC_ASSET_SERVICE_URL", asset_service)
    monkeypatch.setenv("OPSC_ASSET_SERVICE_TOKEN", "asset-token")
    asset = await resolve_asset("app-1.corp")
    assert asset is not None and asset.id == "42" and asset.connector == "ssh"
    assert asset.host == "10.1.1.1" and asset.ssh_port == 2222 and asset.user == "ops"
    creds, values = await resolve_credentials(asset)
    assert creds == {"username": "ops", "password": "from-service"}
    assert values == ["from-service"]
    win = await resolve_asset("win")
    assert win is not None and win.connector == "automation-service" and win.is_windows
    assert await resolve_asset("localhost") is None and await resolve_asset(None) is None
    with pytest.raises(UnknownAsset):
        await resolve_asset("ghost")
    assert await check_targets(["42", "ghost", None, "localhost", "ghost"]) == ["ghost"]


async def test_resolve_through_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSC_ASSET_SERVICE_URL", raising=False)
    monkeypatch.setenv("OPSC_INVENTORY", str(ROOT / "examples" / "inventory.yaml"))
    web = await resolve_asset("web-1.example.internal")
    assert web is not None and web.id == "web-1" and web.credentials["private_key"].path
    db = await resolve_asset("DB-1")
    assert db is not None and db.database is not None and db.database.dbname == "app"
    assert await check_targets(["web-1", "win-1", "nope"]) == ["nope"]
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({"assets": [{"id": "a", "hostname": "a", "connector": "ssh",
                                           "credentials": {"password": "plain"}}]}))
    monkeypatch.setenv("OPSC_INVENTORY", str(inv))
    with pytest.raises(ValueError, match="secret reference"):
        await resolve_asset("a")
    monkeypatch.delenv("OPSC_INVENTORY")
    monkeypatch.setenv("OPSC_HOME", str(tmp_path))
    with pytest.raises(UnknownAsset, match="no inventory"):
        await resolve_asset("a")


@pytest.fixture
def automation() -> Iterator[str]:
    AutomationService.token = "auto-token"
    AutomationService.requests = []
    with serve(AutomationService) as url:
        yield url


def win_asset(url: str, **over: object) -> Asset:
    set_secret("test/win/pw", "w1n-pass")
    set_secret("test/auto/token", "auto-token")
    doc: dict[str, object] = {
        "id": "win-1", "hostname": "win-1.corp", "connector": "automation-service",
        "os": "windows", "user": "svc", "credentials": {"password": {"type": "secret",
                                                                     "path": "test/win/pw"}},
        "automation": {"base_url": url, "api_token": {"type": "secret",
                                                      "path": "test/auto/token"}}}
    doc.update(over)
    return Asset.model_validate(doc)


async def test_automation_connector(automation: str, tmp_path: Path) -> None:
    asset = win_asset(automation)
    runner = command_runner_for("automation-service")
    assert isinstance(runner, AutomationCommandRunner)
    ctx = make_ctx(StepKind.COMMAND, {"command": "x"}, asset=asset)
    out = await runner.run(ctx, 'echo "$GREETING from $(pwd)"', env={"GREETING": "hi"},
                           cwd=str(tmp_path), timeout=10)
    assert out.ok, out.error
    assert out.stdout.strip() == f"hi from {tmp_path}"
    assert out.output["execution_id"] == "ex-1" and out.output["status"] == "completed"
    req = AutomationService.requests[-1]
    assert req["connection_type"] == "powershell" and req["target_host"] == "win-1.corp"
    assert req["credentials"] == {"password": "w1n-pass", "username": "svc"}
    assert req["timeout"] == 10 and req["working_directory"] == str(tmp_path)
    failed = await runner.run(ctx, "echo oops >&2; exit 4", env={}, cwd=None, timeout=10)
    assert not failed.ok and failed.exit_code == 4 and failed.error_type == "CommandFailed"
    assert "oops" in (failed.error or "")
    slow = await runner.run(ctx, "sleep 5", env={}, cwd=None, timeout=1)
    assert slow.error_type == "StepTimeout"
    async with AutomationServiceClient(automation, token="auto-token") as c:
        assert (await c.status())["status"] == "healthy"


async def test_automation_errors(automation: str) -> None:
    ctx = make_ctx(StepKind.COMMAND, {"command": "x"})
    bad_token = win_asset(automation, automation={"base_url": automation})
    ctx.asset = bad_token
    out = await AutomationCommandRunner().run(ctx, "true", env={}, cwd=None, timeout=5)
    assert not out.ok and "401" in (out.error or "")
    ctx.asset = win_asset(f"http://127.0.0.1:{free_port()}")
    out = await AutomationCommandRunner().run(ctx, "true", env={}, cwd=None, timeout=5)
    assert out.error_type == "AutomationServiceError" and out.retryable  # nothing was sent
    ctx.asset = win_asset(automation, credentials={"password": {"type": "secret",
                                                                "path": "test/missing"}})
    out = await AutomationCommandRunner().run(ctx, "true", env={}, cwd=None, timeout=5)
    assert out.error_type == "SecretNotFound" and not out.retryable
