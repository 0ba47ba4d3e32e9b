"""Real servers for the executor tests: an OpenSSH sshd on loopback, plain HTTP services.

sshd runs from /usr/sbin/sshd (Debian package `openssh-server`; `.ci/run` installs it) with its
own host key, authorized key and config in a temp dir. Password login needs a real account,
so as root a dedicated test user gets a fresh random password each session.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from starter.ports import free_port, port_open

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PASSWORD_USER = "opsc_sshtest"


def secret_env_name(path: str) -> str:
    return "OPSC_SECRET_" + "".join(c if c.isalnum() else "_" for c in path).upper()


def set_secret(path: str, value: str) -> None:
    os.environ[secret_env_name(path)] = value


@dataclass
class SshServer:
    host: str
    port: int
    dir: Path
    user: str
    client_key: str  # private key text (OpenSSH format)
    known_hosts: Path  # trusts this server's host key
    empty_known_hosts: Path
    password_user: str | None
    password: str | None
    log: Path

    def asset(self, **over: object) -> dict[str, object]:
        base: dict[str, object] = {
            "id": "ssh-test", "hostname": "ssh-test.local", "connector": "ssh",
            "address": self.host, "port": self.port, "user": self.user,
            "credentials": {"private_key": {"type": "secret", "path": "test/ssh/key"}},
            "known_hosts": str(self.known_hosts),
        }
        base.update(over)
        return base


def _ensure_password_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PASSWORD_USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", "/tmp", "--shell", "/bin/sh",
                        PASSWORD_USER], check=True, capture_output=True)
    return PASSWORD_USER


@pytest.fixture(scope="session")
def sshd(session_dir: Path) -> Iterator[SshServer]:
    if not Path(SSHD).exists():
        pytest.skip("OpenSSH server not installed (apt-get install -y openssh-server)")
    d = session_dir / "sshd"
    d.mkdir()
    d.chmod(0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")],
                   check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    (d / "authorized_keys").chmod(0o644)
    port = free_port()
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (d / "empty_known_hosts").write_text("")
    user = pwd.getpwuid(os.geteuid()).pw_name
    password_user = _ensure_password_user()
    password = None
    if password_user:
        password = "pw-" + secrets.token_hex(12)
        subprocess.run(["chpasswd"], input=f"{password_user}:{password}\n", text=True,
                       check=True, capture_output=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True) if os.geteuid() == 0 else None
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
MaxSessions 64
MaxStartups 64
Subsystem sftp internal-sftp
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
    set_secret("test/ssh/key", (d / "client_key").read_text())
    if password:
        set_secret("test/ssh/password", password)
    try:
        yield SshServer(host="127.0.0.1", port=port, dir=d, user=user,
                        client_key=(d / "client_key").read_text(),
                        known_hosts=d / "known_hosts", empty_known_hosts=d / "empty_known_hosts",
                        password_user=password_user, password=password, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session", autouse=True)
async def _close_ssh_connections() -> AsyncIterator[None]:
    """Connections are cached per worker (here: per test session); close them at the end."""
    yield
    from activities.executors.ssh import close_connections

    await close_connections()
