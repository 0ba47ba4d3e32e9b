"""Fixtures shared by the integration tests.

`ssh_host` is a real OpenSSH sshd on loopback for the whole engine (the executors' `sshd`
fixture lives in tests/executors/conftest.py and only serves that directory). It reuses that
fixture's server description (`SshServer`) and secret naming, but registers its client key
under its own secret path: re-exporting `sshd` here would start a second server that
overwrites the executors' `OPSC_SECRET_TEST_SSH_KEY` in a session that runs both.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from starter.ports import free_port, port_open
from tests.executors.conftest import SSHD, SshServer, secret_env_name

SSH_KEY_SECRET = "integration/ssh/key"
SSH_ASSET = "ssh-int"


@pytest.fixture(scope="session")
def ssh_host(session_dir: Path) -> Iterator[SshServer]:
    if not Path(SSHD).exists():
        pytest.skip("OpenSSH server not installed (apt-get install -y openssh-server)")
    d = session_dir / "sshd-integration"
    d.mkdir()
    d.chmod(0o755)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    (d / "authorized_keys").chmod(0o644)
    port = free_port()
    kind, key = (d / "host_key.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {key}\n")
    (d / "empty_known_hosts").write_text("")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
MaxSessions 64
MaxStartups 64
LogLevel VERBOSE
""")
    log = d / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None:
            pytest.skip(f"sshd cannot run here: {log.read_text()[-1000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"sshd did not listen: {log.read_text()[-1000:]}")
        time.sleep(0.05)
    env_name = secret_env_name(SSH_KEY_SECRET)
    os.environ[env_name] = (d / "client_key").read_text()
    try:
        yield SshServer(host="127.0.0.1", port=port, dir=d,
                        user=pwd.getpwuid(os.geteuid()).pw_name,
                        client_key=(d / "client_key").read_text(),
                        known_hosts=d / "known_hosts", empty_known_hosts=d / "empty_known_hosts",
                        password_user=None, password=None, log=log)
    finally:
        os.environ.pop(env_name, None)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def ssh_inventory(ssh_host: SshServer, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An inventory with the loopback sshd as asset `ssh-int`, set as OPSC_INVENTORY for the
    test (the worker and the submitter both read the variable at call time)."""
    path = tmp_path / "inventory.json"
    asset = ssh_host.asset(id=SSH_ASSET, hostname="ssh-int.example.internal",
                           credentials={"private_key": {"type": "secret",
                                                        "path": SSH_KEY_SECRET}})
    path.write_text(json.dumps({"assets": [asset]}))
    monkeypatch.setenv("OPSC_INVENTORY", str(path))
    yield path


@pytest.fixture(scope="session", autouse=True)
async def _close_integration_ssh_connections() -> AsyncIterator[None]:
    """The in-process worker caches SSH connections; close them at the end of the session."""
    yield
    from activities.executors.ssh import close_connections

    await close_connections()
