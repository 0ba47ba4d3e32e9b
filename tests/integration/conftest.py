"""Fixtures shared by the integration tests.

`ssh_host` is a real OpenSSH sshd on loopback for the whole engine (the executors' `sshd`
fixture lives in tests/executors/conftest.py and only serves that directory). It reuses that
fixture's server description (`SshServer`) and secret naming, but registers its client key
under its own secret path: re-exporting `sshd` here would start a second server that
overwrites the executors' `OPSC_SECRET_TEST_SSH_KEY` in a session that runs both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.executors.conftest import SshServer, keyed_sshd
from tests.integration.helpers import opsc_env

SSH_KEY_SECRET = "integration/ssh/key"
SSH_ASSET = "ssh-int"


@pytest.fixture(scope="session")
def ssh_host(session_dir: Path) -> Iterator[SshServer]:
    with keyed_sshd(session_dir / "sshd-integration", SSH_KEY_SECRET) as server:
        yield server


@pytest.fixture
def ssh_inventory(ssh_host: SshServer, tmp_path: Path, engine: Any,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An inventory with the loopback sshd as asset `ssh-int`, for the test: the in-process
    worker's settings, and OPSC_INVENTORY for the submitter (read at call time)."""
    path = tmp_path / "inventory.json"
    asset = ssh_host.asset(id=SSH_ASSET, hostname="ssh-int.example.internal",
                           credentials={"private_key": {"type": "secret",
                                                        "path": SSH_KEY_SECRET}})
    path.write_text(json.dumps({"assets": [asset]}))
    monkeypatch.setenv("OPSC_INVENTORY", str(path))
    monkeypatch.setattr(engine.settings, "inventory", path)
    yield path


@pytest.fixture(scope="session", autouse=True)
async def _close_integration_ssh_connections() -> AsyncIterator[None]:
    """The in-process worker caches SSH connections; close them at the end of the session."""
    yield
    from opsconductor.activities.executors.ssh import close_connections

    await close_connections()


@pytest.fixture
def env(engine: Any, temporal_server: Any, migrated_pg: str, tmp_path: Path) -> dict[str, str]:
    """The environment of an `opsconductor` subprocess against the session's servers and the
    session worker's task queue, with a fresh OPSC_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    return opsc_env(temporal_address=temporal_server.address, database_url=migrated_pg,
                    task_queue="opsc-tests", home=home)
