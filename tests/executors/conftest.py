"""Real servers for the executor tests: an OpenSSH sshd on loopback, plain HTTP services.

sshd runs from /usr/sbin/sshd (Debian package `openssh-server`; `.ci/run` installs it) with its
own host key, authorized key and config in a temp dir. Password login needs a real account,
so as root a dedicated test user gets a fresh random password each session.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opsconductor.starter.ports import free_port, port_open
from tests.helpers import wait_for_sync

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


@contextlib.contextmanager
def openssh_server(d: Path, *, password_auth: bool) -> Iterator[tuple[int, Path]]:
    """Keys, known_hosts, config and a running sshd in `d`; yields (port, log)."""
    if not Path(SSHD).exists():
        pytest.skip("OpenSSH server not installed (apt-get install -y openssh-server)")
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
PasswordAuthentication {"yes" if password_auth else "no"}
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

    def listening() -> bool:
        if proc.poll() is not None:
            pytest.skip(f"sshd cannot run here: {log.read_text()[-1000:]}")
        return port_open("127.0.0.1", port)

    try:
        wait_for_sync(listening, timeout=10, what=f"sshd to listen on port {port}")
    except AssertionError:
        proc.kill()
        pytest.fail(f"sshd did not listen: {log.read_text()[-1000:]}")
    try:
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def sshd(session_dir: Path) -> Iterator[SshServer]:
    d = session_dir / "sshd"
    user = pwd.getpwuid(os.geteuid()).pw_name
    password_user = _ensure_password_user()
    password = None
    if password_user:
        password = "pw-" + secrets.token_hex(12)
        subprocess.run(["chpasswd"], input=f"{password_user}:{password}\n", text=True,
                       check=True, capture_output=True)
    with openssh_server(d, password_auth=True) as (port, log):
        set_secret("test/ssh/key", (d / "client_key").read_text())
        if password:
            set_secret("test/ssh/password", password)
        yield SshServer(host="127.0.0.1", port=port, dir=d, user=user,
                        client_key=(d / "client_key").read_text(),
                        known_hosts=d / "known_hosts", empty_known_hosts=d / "empty_known_hosts",
                        password_user=password_user, password=password, log=log)


@pytest.fixture(scope="session", autouse=True)
async def _close_ssh_connections() -> AsyncIterator[None]:
    """Connections are cached per worker (here: per test session); close them at the end."""
    yield
    from opsconductor.activities.executors.ssh import close_connections

    await close_connections()


@contextlib.contextmanager
def keyed_sshd(d: Path, key_secret: str) -> Iterator[SshServer]:
    """A key-only loopback sshd whose client key is the secret `key_secret` (an
    OPSC_SECRET_<PATH> variable) while it runs: each test directory's own."""
    with openssh_server(d, password_auth=False) as (port, log):
        env_name = secret_env_name(key_secret)
        os.environ[env_name] = (d / "client_key").read_text()
        try:
            yield SshServer(host="127.0.0.1", port=port, dir=d,
                            user=pwd.getpwuid(os.geteuid()).pw_name,
                            client_key=(d / "client_key").read_text(),
                            known_hosts=d / "known_hosts",
                            empty_known_hosts=d / "empty_known_hosts",
                            password_user=None, password=None, log=log)
        finally:
            os.environ.pop(env_name, None)
