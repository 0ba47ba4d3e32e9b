"""The arena the attacks run in: a loopback sshd of this directory's own, an inventory with
its SSH asset and a Windows asset, a directory of booby traps, a listener that records every
connection, and canaries in the worker's environment that no output may ever show."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.executors.conftest import SshServer, keyed_sshd
from tests.helpers import decoded_payloads as decoded_payloads  # re-exported to its tests
from tests.helpers import inventory_in_use

SSH_KEY_SECRET = "attacks/ssh/key"
# In the worker's (this process's) environment: a command that inherited it would show it. Its
# name matches no credential pattern, so the masker would not hide a leak.
CANARY_NAME = "PROBES_ATTACK_CANARY"
CANARY = "canary-" + secrets.token_hex(12)
os.environ[CANARY_NAME] = CANARY


@pytest.fixture(scope="session")
def attack_sshd(session_dir: Path) -> Iterator[SshServer]:
    with keyed_sshd(session_dir / "sshd-attacks", SSH_KEY_SECRET) as server:
        yield server


@dataclass
class Listener:
    """Records every connection (a curl to gopher:// or dict://, a call to the Automation
    Service): any connection at all is an attack that got through."""

    port: int = 0
    connections: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.connections.append(await asyncio.wait_for(reader.read(4096), 2))
        except TimeoutError:
            self.connections.append(b"")
        writer.close()


@dataclass
class Arena:
    root: Path
    evil: Path
    listener: Listener
    ssh_asset: str
    windows_asset: str
    worker_pid: int

    def fill(self, text: str, attack_id: str) -> str:
        return (text.replace("{M}", str(self.marker(attack_id)))
                .replace("{V}", str(self.victim(attack_id)))
                .replace("{E}", str(self.evil)).replace("{P}", str(self.listener.port))
                .replace("{W}", str(self.worker_pid)).replace("{C}", CANARY_NAME))

    def marker(self, attack_id: str) -> Path:
        return self.root / "markers" / attack_id

    def victim(self, attack_id: str) -> Path:
        return self.root / "victims" / attack_id


def _booby_traps(evil: Path, root: Path) -> None:
    evil.mkdir(parents=True)
    for name in ("uptime", "df", "ps"):
        trap = evil / name
        trap.write_text(f"#!/bin/sh\necho trapped > {root}/markers/$(basename $0)-trap\n"
                        f"env > {root}/markers/leaked-env\n")
        trap.chmod(0o755)
    (evil / "evil.so").write_bytes(b"not a library")
    (evil / "kubeconfig").write_text("users: [{name: x, user: {exec: {command: touch}}}]\n")
    (evil / "curlrc").write_text(f'output = "{root}/markers/curlrc"\n')
    (evil / "rc").write_text(f"touch {root}/markers/rc\n")
    ssh_dir = Path.home() / ".ssh"
    (evil / "link-to-ssh").symlink_to(ssh_dir)


@pytest.fixture(scope="module")
async def arena(engine: Any, attack_sshd: SshServer,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Arena]:
    root = tmp_path_factory.mktemp("attacks")
    (root / "markers").mkdir()
    (root / "victims").mkdir()
    _booby_traps(root / "evil", root)
    listener = Listener()
    server = await asyncio.start_server(listener.handle, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    assets = [
        attack_sshd.asset(id="attack-ssh", hostname="attack-ssh.local",
                          credentials={"private_key": {"type": "secret",
                                                       "path": SSH_KEY_SECRET}}),
        {"id": "attack-win", "hostname": "attack-win.local", "address": "127.0.0.1",
         "connector": "automation-service", "os": "windows", "user": "admin",
         "automation": {"base_url": f"http://127.0.0.1:{listener.port}"}},
    ]
    with inventory_in_use(engine, root / "inventory.yaml", assets):
        yield Arena(root=root, evil=root / "evil", listener=listener, ssh_asset="attack-ssh",
                    windows_asset="attack-win", worker_pid=os.getpid())
    server.close()
    await server.wait_closed()
