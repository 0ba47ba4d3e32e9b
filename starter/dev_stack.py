"""The embedded local stack: Temporal dev server + PostgreSQL + migrations + one worker.

Everything comes from pip packages. State lives under `$OPSC_HOME`; the addresses go to
`$OPSC_HOME/stack.json` so every other command finds the running stack without flags.
With OPSC_TEMPORAL_ADDRESS / OPSC_DATABASE_URL set, that part is not started.

One stack per `$OPSC_HOME`: `dev.lock` holds the running stack's pid under `fcntl.flock`
(released by the kernel when that process dies, so a stale pid never blocks). A stack whose
child (Temporal, PostgreSQL, the worker) dies stops the others and says why.

The stack serves the HTTP API (`opsconductor.starter.api`, with the Web UI's payload codec) on
loopback as `serve` does without an issuer: it requires the local token
(`$OPSC_HOME/api-token`, 0600; its path goes to stack.json as `api_token_file`). The Web UI
is started with the codec endpoint that carries the token's codec key in its path: the dev UI
has no login, so it has no access token to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.migrate import migrate
from opsconductor.starter.asgi_server import BackgroundServer, serve_in_background
from opsconductor.starter.auth import (
    AuthConfigError,
    Authenticator,
    LocalTokenAuth,
    authenticator_from_settings,
    token_path,
)
from opsconductor.starter.codec_server import codec_endpoint
from opsconductor.starter.embedded_postgres import EmbeddedPostgres
from opsconductor.starter.pids import pid_alive
from opsconductor.starter.ports import free_port, port_open
from opsconductor.starter.temporal_server import TemporalDevServer
from opsconductor.starter.worker import run_worker

DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_UI_PORT = 8233
DEFAULT_PG_PORT = 55432
LOCK_FILE = "dev.lock"
CHILD_CHECK_INTERVAL = 0.5
log = logging.getLogger(__name__)


class StackAlreadyRunning(RuntimeError):
    """Another stack holds `$OPSC_HOME/dev.lock`; nothing of it was touched."""

    def __init__(self, home: Path, pid: int | None):
        self.pid = pid
        who = f"pid {pid}" if pid else "a process whose pid is not recorded"
        super().__init__(f"an `opsconductor dev` stack is already running on {home} ({who}); "
                         "use it, stop it first, or set OPSC_HOME to another directory")


class ChildDied(RuntimeError):
    """One of the stack's own servers (or its worker) ended while the stack ran."""


def _path_or_none(path: Path | None) -> str | None:
    return str(path.expanduser().resolve()) if path is not None else None


class HomeLock:
    """An exclusive `flock` on `$OPSC_HOME/dev.lock`, which records the holder's pid."""

    def __init__(self, home: Path):
        self.path = home / LOCK_FILE
        self.fd: int | None = None
        self.stale_pid: int | None = None

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StackAlreadyRunning(self.path.parent, self._recorded_pid()) from None
        # We hold it: any pid still written there belongs to a stack that died uncleanly.
        recorded = self._recorded_pid()
        if recorded and recorded != os.getpid() and not pid_alive(recorded):
            self.stale_pid = recorded
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _port(preferred: int) -> int:
    return preferred if not port_open("127.0.0.1", preferred) else free_port()


def stack_alive(settings: Settings) -> bool:
    """A stack.json whose Temporal and Postgres both answer."""
    if not settings.stack_file.exists() or not settings.temporal_address:
        return False
    host, _, port = settings.temporal_address.rpartition(":")
    return port_open(host or "127.0.0.1", int(port))


@dataclass
class DevStack:
    settings: Settings
    temporal: TemporalDevServer | None = None
    postgres: EmbeddedPostgres | None = None
    wrote_stack_file: bool = False
    worker_task: asyncio.Task[None] | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    policy_file: Path | None = None
    lock: HomeLock | None = None
    postgres_pid: int | None = None
    api_port: int | None = None  # the HTTP API and the Web UI's codec, served by this process
    api: BackgroundServer | None = None
    api_client: Any = None
    auth: Authenticator | None = None
    new_token: str | None = None  # made on this start: printed once

    @classmethod
    def from_env(cls) -> DevStack:
        env = {k: v for k, v in os.environ.items()}
        settings = load_settings(env)
        # A dev stack decides its own addresses: ignore a stale stack.json.
        settings.temporal_address = env.get("OPSC_TEMPORAL_ADDRESS")
        settings.database_url = env.get("OPSC_DATABASE_URL")
        settings.ui_url = None
        return cls(settings=settings)

    def start_servers(self) -> Settings:
        home = self.settings.home
        home.mkdir(parents=True, exist_ok=True)
        lock = HomeLock(home)
        lock.acquire()  # before anything else: a second stack must touch nothing
        self.lock = lock
        try:
            self.auth, self.new_token = authenticator_from_settings(self.settings)
            self.api_port = free_port()
            if not self.settings.temporal_address:
                self.temporal = TemporalDevServer(
                    db_file=home / "temporal.db", log_file=home / "temporal.log",
                    port=_port(DEFAULT_TEMPORAL_PORT), ui_port=_port(DEFAULT_UI_PORT),
                    namespace=self.settings.namespace, codec_endpoint=self.codec_url)
                self.settings.temporal_address = self.temporal.start()
                self.settings.ui_url = self.temporal.ui_url
            if not self.settings.database_url:
                self.postgres = EmbeddedPostgres(home / "postgres", port=_port(DEFAULT_PG_PORT))
                self.settings.database_url = self.postgres.start()
                self.postgres_pid = self.postgres.server_pid()
        except Exception:
            self.stop_servers()
            raise
        return self.settings

    def write_stack_file(self) -> None:
        self.settings.stack_file.write_text(json.dumps({
            "temporal_address": self.settings.temporal_address,
            "namespace": self.settings.namespace,
            "task_queue": self.settings.task_queue,
            "database_url": self.settings.database_url,
            "ui_url": self.settings.ui_url,
            # what the worker decides with, so every client shell decides the same way
            "rbac_policy": _path_or_none(self.settings.rbac_policy),
            "rbac_strict": self.settings.rbac_strict,
            "inventory": _path_or_none(self.settings.inventory_path()),
            "asset_service_url": self.settings.asset_service_url,
            "codec_url": self.codec_url,
            "api_url": self.api_url,
            "api_token_file": (str(token_path(self.settings))
                               if isinstance(self.auth, LocalTokenAuth) else None),
            "pid": os.getpid(),
            "pids": self.child_pids(),
        }, indent=2) + "\n")
        self.wrote_stack_file = True

    def stop_servers(self) -> None:
        if self.wrote_stack_file:
            with contextlib.suppress(FileNotFoundError):
                self.settings.stack_file.unlink()
            self.wrote_stack_file = False
        if self.temporal:
            self.temporal.stop()
            self.temporal = None
        if self.postgres:
            self.postgres.stop()
            self.postgres = None
        if self.lock:
            self.lock.release()
            self.lock = None

    def child_pids(self) -> dict[str, int]:
        pids = {}
        if self.temporal and self.temporal.proc:
            pids["temporal"] = self.temporal.proc.pid
        if self.postgres and (pg := self.postgres.server_pid()):
            pids["postgres"] = pg
        return pids

    def dead_child(self) -> str | None:
        """Why the stack can no longer serve, or None while every child runs."""
        if self.temporal and self.temporal.proc and self.temporal.proc.poll() is not None:
            return (f"the Temporal dev server exited with code {self.temporal.proc.returncode}"
                    + (f"; see {self.temporal.log_file}" if self.temporal.log_file else ""))
        if self.postgres and self.postgres_pid and not pid_alive(self.postgres_pid):
            return (f"PostgreSQL (pid {self.postgres_pid}) is gone; "
                    f"see {self.postgres.log}")
        if self.worker_task is not None and self.worker_task.done():
            err = None if self.worker_task.cancelled() else self.worker_task.exception()
            return f"the worker stopped: {err or 'it returned'}"
        return None

    async def watch_children(self) -> str:
        """Return, with the reason, once a child has died. Polled: the postmaster is not our
        child (pg_ctl daemonises it), so no event tells us it ended."""
        while (reason := self.dead_child()) is None:  # noqa: ASYNC110
            await asyncio.sleep(CHILD_CHECK_INTERVAL)
        return reason

    def use_default_policy(self) -> Path | None:
        """Without OPSC_RBAC_POLICY, the dev stack uses `$OPSC_HOME/rbac_policy.yaml`, a copy
        of the bundled example made on first start (edit it to try roles and rules)."""
        if self.settings.rbac_policy is not None:
            return None
        path = self.settings.home / "rbac_policy.yaml"
        if not path.exists():
            path.write_text((resources.files("opsconductor.starter") / "examples" /
                             "rbac_policy.yaml").read_text())
        os.environ["OPSC_RBAC_POLICY"] = str(path)
        self.settings.rbac_policy = path  # the worker's settings were loaded before this
        return path

    async def start(self) -> Settings:
        """Servers, migrations, stack.json and a worker task; returns the settings."""
        settings = await asyncio.to_thread(self.start_servers)
        if self.temporal is not None:
            # The stack's own server, for its worker and this process's clients: before any
            # TEMPORAL_* variable or profile the operator has set for other clusters.
            from opsconductor.starter.connect import FLAGS, ConnectionFlags

            FLAGS.set(ConnectionFlags(address=settings.temporal_address,
                                      namespace=settings.namespace))
        self.policy_file = self.use_default_policy()
        try:
            assert settings.database_url
            await migrate(settings.database_url)
            await self.serve_api()
            self.write_stack_file()
            self.worker_task = asyncio.create_task(run_worker(settings, self.stop_event))
            await asyncio.sleep(0)
        except Exception:
            await self.stop()
            raise
        return settings

    @property
    def api_url(self) -> str | None:
        return f"http://127.0.0.1:{self.api_port}" if self.api_port else None

    @property
    def codec_url(self) -> str | None:
        """The endpoint the Web UI decodes payloads through (`--ui-codec-endpoint`)."""
        if not self.api_url:
            return None
        key = self.auth.codec_key if isinstance(self.auth, LocalTokenAuth) else None
        return codec_endpoint(self.api_url, key)

    async def serve_api(self) -> None:
        """The HTTP API with the payload codec, in this process, on loopback, behind the
        stack's authenticator."""
        from opsconductor.starter.api import create_app
        from opsconductor.starter.client import ExecutionClient

        if self.api_port is None or self.auth is None:
            return
        self.api_client = await ExecutionClient.connect(self.settings)
        app = create_app(self.api_client, auth=self.auth)
        try:
            self.api = await serve_in_background(app, "127.0.0.1", self.api_port,
                                                 lifespan="on")
        except OSError as err:  # the port was taken meanwhile: no API, the UI shows binary
            log.warning("HTTP API not served: %s", err)
            self.api_port = None
            await self.api_client.close()
            self.api_client = None

    async def stop(self, worker_grace: float = 30.0) -> None:
        self.stop_event.set()
        if self.worker_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.worker_task, worker_grace)
            self.worker_task = None
        if self.api is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.api.stop(timeout=5)
            self.api = None
        if self.api_client is not None:
            with contextlib.suppress(Exception):
                await self.api_client.close()
            self.api_client = None
        await asyncio.to_thread(self.stop_servers)


def describe(settings: Settings, codec_url: str | None = None, api_url: str | None = None,
             token_file: str | None = None) -> str:
    lines = [f"Temporal:   {settings.temporal_address} (namespace {settings.namespace}, "
             f"task queue {settings.task_queue})",
             f"Postgres:   {_redacted(settings.database_url)}"]
    if settings.ui_url:
        lines.append(f"Web UI:     {settings.ui_url}/namespaces/{settings.namespace}/workflows")
    if api_url:
        lines.append(f"HTTP API:   {api_url} (bearer token in {token_file or 'the issuer'})")
    if codec_url:
        lines.append(f"UI codec:   {codec_url} (shows compressed payloads as JSON)")
    lines.append(f"State:      {settings.home}")
    return "\n".join(lines)


def _redacted(url: str | None) -> str:
    from opsconductor.activities.db import _redact

    return _redact(url) if url else "(none)"


class _OneLineWarnings(logging.Formatter):
    """Warnings (a library retrying a lost connection) as one line with their cause; errors
    keep their traceback."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno < logging.ERROR and (record.exc_info or record.exc_text):
            # The masking filter may already have rendered the exception into `exc_text`.
            err = record.exc_info[1] if record.exc_info else None
            cause = (f"{type(err).__name__}: {err}" if err is not None
                     else (record.exc_text or "").strip().splitlines()[-1])
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None,
                                            "exc_text": None, "args": None,
                                            "msg": f"{record.getMessage()} ({cause})"})
        return super().format(record)


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineWarnings("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


async def run_dev(print_fn: Callable[..., None] = print) -> int:
    """`opsconductor dev`: run the stack in the foreground until Ctrl-C or SIGTERM (exit 0),
    or until one of its children dies (exit 1, saying which)."""
    _configure_logging()
    stack = DevStack.from_env()
    try:
        settings = await stack.start()
    except (StackAlreadyRunning, AuthConfigError) as err:
        print_fn(f"error: {err}", file=sys.stderr)
        return 1
    if stack.lock and stack.lock.stale_pid:
        print_fn(f"(a stack with pid {stack.lock.stale_pid} ended without cleaning up; "
                 "its lock was stale)")
    token_file = (str(token_path(settings)) if isinstance(stack.auth, LocalTokenAuth)
                  else None)
    print_fn("OpsConductor dev stack is up.\n" + describe(settings, stack.codec_url,
                                                         stack.api_url, token_file))
    if stack.new_token:
        print_fn(f"API token:  {stack.new_token} (shown once)")
    if stack.policy_file:
        print_fn(f"RBAC:       {stack.policy_file} (OPSC_RBAC_POLICY overrides)")
    print_fn(f"Stack file: {settings.stack_file}\nPress Ctrl-C to stop.")
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    waiter = asyncio.create_task(done.wait())
    monitor = asyncio.create_task(stack.watch_children())
    await asyncio.wait({waiter, monitor}, return_when=asyncio.FIRST_COMPLETED)
    reason = monitor.result() if monitor.done() else None
    waiter.cancel()
    monitor.cancel()
    if reason:
        print_fn(f"error: {reason}; stopping the rest of the stack", file=sys.stderr)
    print_fn("stopping…")
    # A worker whose server died cannot finish its polls cleanly: do not wait long for it.
    await stack.stop(worker_grace=5.0 if reason else 30.0)
    print_fn("stopped." if not reason else f"stopped: {reason}")
    return 1 if reason else 0


def home_path() -> Path:
    return load_settings().home
