"""Fixtures for the upstream-plan tests: stand-ins of the Automation and Asset services, an
HTTP digest camera, and a loopback sshd of this directory's own (the executors' and the
integration tests' sshd fixtures serve only their directories)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.executors.conftest import SshServer, keyed_sshd, secret_env_name
from tests.executors.servers import serve
from tests.planner.helpers import inventory_text
from tests.planner.standins import ASSET_SERVICE, AUTOMATION, AssetService, AutomationService

SSH_KEY_SECRET = "planner/ssh/key"
WINDOWS_SECRET = "planner/windows/admin"


@pytest.fixture(scope="session")
def planner_sshd(session_dir: Path) -> Iterator[SshServer]:
    with keyed_sshd(session_dir / "sshd-planner", SSH_KEY_SECRET) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
async def _close_planner_ssh_connections() -> AsyncIterator[None]:
    yield
    from opsconductor.activities.executors.ssh import close_connections

    await close_connections()


@pytest.fixture
def automation_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve(AutomationService) as url:
        AUTOMATION.calls.clear()
        monkeypatch.setenv(secret_env_name(WINDOWS_SECRET), "Win-Pass-1!")
        yield url


@pytest.fixture
def asset_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve(AssetService) as url:
        ASSET_SERVICE.calls.clear()
        ASSET_SERVICE.assets.clear()
        monkeypatch.setenv("OPSC_ASSET_SERVICE_URL", url)
        yield url


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The planner corpus's inventory, in use (OPSC_INVENTORY) with no Asset service."""
    inv = tmp_path / "inventory.yaml"
    inv.write_text(inventory_text())
    monkeypatch.setenv("OPSC_INVENTORY", str(inv))
    monkeypatch.delenv("OPSC_ASSET_SERVICE_URL", raising=False)
    return inv
