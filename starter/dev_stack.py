"""The embedded local stack: Temporal dev server + PostgreSQL + migrations + one worker.

Everything comes from pip packages. State lives under `$OPSC_HOME`; the addresses go to
`$OPSC_HOME/stack.json` so every other command finds the running stack without flags.
With OPSC_TEMPORAL_ADDRESS / OPSC_DATABASE_URL set, that part is not started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.migrate import migrate
from opsconductor.starter.embedded_postgres import EmbeddedPostgres
from opsconductor.starter.ports import free_port, port_open
from opsconductor.starter.temporal_server import TemporalDevServer
from opsconductor.starter.worker import run_worker

DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_UI_PORT = 8233
DEFAULT_PG_PORT = 55432


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
        try:
            if not self.settings.temporal_address:
                self.temporal = TemporalDevServer(
                    db_file=home / "temporal.db", log_file=home / "temporal.log",
                    port=_port(DEFAULT_TEMPORAL_PORT), ui_port=_port(DEFAULT_UI_PORT),
                    namespace=self.settings.namespace)
                self.settings.temporal_address = self.temporal.start()
                self.settings.ui_url = self.temporal.ui_url
            if not self.settings.database_url:
                self.postgres = EmbeddedPostgres(home / "postgres", port=_port(DEFAULT_PG_PORT))
                self.settings.database_url = self.postgres.start()
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
            "pid": os.getpid(),
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

    def use_default_policy(self) -> Path | None:
        """Without OPSC_RBAC_POLICY, the dev stack uses `$OPSC_HOME/rbac_policy.yaml`, a copy
        of the bundled example made on first start (edit it to try roles and rules)."""
        if os.environ.get("OPSC_RBAC_POLICY"):
            return None
        path = self.settings.home / "rbac_policy.yaml"
        if not path.exists():
            path.write_text((resources.files("opsconductor.starter") / "examples" /
                             "rbac_policy.yaml").read_text())
        os.environ["OPSC_RBAC_POLICY"] = str(path)
        return path

    async def start(self) -> Settings:
        """Servers, migrations, stack.json and a worker task; returns the settings."""
        settings = await asyncio.to_thread(self.start_servers)
        self.policy_file = self.use_default_policy()
        try:
            assert settings.database_url
            await migrate(settings.database_url)
            self.write_stack_file()
            self.worker_task = asyncio.create_task(run_worker(settings, self.stop_event))
            await asyncio.sleep(0)
        except Exception:
            await self.stop()
            raise
        return settings

    async def stop(self) -> None:
        self.stop_event.set()
        if self.worker_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.worker_task, 30)
            self.worker_task = None
        await asyncio.to_thread(self.stop_servers)


def describe(settings: Settings) -> str:
    lines = [f"Temporal:   {settings.temporal_address} (namespace {settings.namespace}, "
             f"task queue {settings.task_queue})",
             f"Postgres:   {_redacted(settings.database_url)}"]
    if settings.ui_url:
        lines.append(f"Web UI:     {settings.ui_url}/namespaces/{settings.namespace}/workflows")
    lines.append(f"State:      {settings.home}")
    return "\n".join(lines)


def _redacted(url: str | None) -> str:
    from opsconductor.activities.db import _redact

    return _redact(url) if url else "(none)"


async def run_dev(print_fn=print) -> int:  # type: ignore[no-untyped-def]
    """`opsconductor dev`: run the stack in the foreground until Ctrl-C or SIGTERM."""
    stack = DevStack.from_env()
    settings = await stack.start()
    print_fn("OpsConductor dev stack is up.\n" + describe(settings))
    if stack.policy_file:
        print_fn(f"RBAC:       {stack.policy_file} (OPSC_RBAC_POLICY overrides)")
    print_fn(f"Stack file: {settings.stack_file}\nPress Ctrl-C to stop.")
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    waiter = asyncio.create_task(done.wait())
    assert stack.worker_task is not None
    finished, _ = await asyncio.wait({waiter, stack.worker_task},
                                     return_when=asyncio.FIRST_COMPLETED)
    failed = stack.worker_task in finished and stack.worker_task.exception() is not None
    if failed:
        print_fn(f"worker stopped: {stack.worker_task.exception()}")
    print_fn("stopping…")
    waiter.cancel()
    await stack.stop()
    print_fn("stopped.")
    return 1 if failed else 0


def home_path() -> Path:
    return load_settings().home
