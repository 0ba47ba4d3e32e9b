"""Integration-test helpers: `opsconductor` subprocesses, workers, process groups.

Waiting and mirror reads live in tests/helpers.py (re-exported here for older imports)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import events, execution_row, step_rows, wait_for
from tests.helpers import wait_for as poll
from tests.processes import alive, group_members

__all__ = ["OPSCONDUCTOR", "Cli", "alive", "events", "execution_row", "group_members",
           "kill_group", "opsc_env", "poll", "run_binary", "run_cli", "start_worker",
           "step_rows", "stop_process", "wait_for", "wait_group_gone"]

VENV_BIN = Path(sys.executable).parent
OPSCONDUCTOR = str(VENV_BIN / "opsconductor")


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def wait_group_gone(pgid: int, timeout: float = 10) -> list[int]:
    """Wait until the group has no live member; return the survivors (empty when gone)."""
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: not group_members(pgid), timeout=timeout,
                       what=f"process group {pgid} to end")
    return group_members(pgid)


@dataclass
class Cli:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr[-3000:]}"


async def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> Cli:
    """Run `opsconductor ARGS` without blocking the event loop (the in-process worker runs
    on it)."""
    proc = await asyncio.create_subprocess_exec(
        OPSCONDUCTOR, *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"opsconductor {' '.join(args)} did not finish in {timeout}s") \
            from None
    assert proc.returncode is not None
    return Cli(proc.returncode, out.decode(), err.decode())


async def run_binary(*args: str, timeout: float = 60) -> Cli:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Cli(proc.returncode, out.decode(), err.decode())


def opsc_env(*, temporal_address: str, database_url: str, task_queue: str, home: Path,
             **extra: str) -> dict[str, str]:
    """The environment of an `opsconductor` subprocess: this session's env (which carries
    OPSC_RBAC_POLICY) without any other OPSC_* configuration, plus the given servers."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OPSC_") or k in ("OPSC_RBAC_POLICY",)}
    env.update(OPSC_TEMPORAL_ADDRESS=temporal_address, OPSC_DATABASE_URL=database_url,
               OPSC_TASK_QUEUE=task_queue, OPSC_HOME=str(home), **extra)
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`opsconductor worker` in its own session (so nothing it leaves behind shares our group)."""
    with log.open("ab") as fh:
        return subprocess.Popen([OPSCONDUCTOR, "worker"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
