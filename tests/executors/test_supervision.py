"""No unsupervised command: a local command dies with the process that started it, a later
attempt stops a leftover group without ever hitting a reused pid, and activity failures are
trimmed to fit Temporal's limits. Real processes throughout (`kill -9` of a real parent)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import traceback
import uuid
from pathlib import Path

import asyncpg
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from opsconductor.activities.attempts import prior_attempts, record_attempt_started, record_process
from opsconductor.activities.executors.local_command import live_members, stop_leftover_group
from opsconductor.activities.executors.supervise import proc_start_ticks
from opsconductor.activities.failures import MESSAGE_CHARS, TRACE_FRAMES, trim_failure
from opsconductor.activities.locks import LockActivities
from opsconductor.schema.locks import ReleaseLocksInput
from tests.helpers import wait_for
from tests.integration.helpers import kill_group, wait_group_gone
from tests.processes import alive

PARENT = textwrap.dedent("""
    import asyncio, sys
    from opsconductor.activities.executors.base import StepContext
    from opsconductor.activities.executors.local_command import LocalCommandRunner

    class Step:
        id = "s"
        tool = "shell"
        idempotent = False

    async def main():
        async def started(ref):
            print(ref.pgid, ref.start_ticks, flush=True)
        ctx = StepContext(execution_id="e", workflow_id="w", tenant="t", environment="dev",
                          step=Step(), inputs={}, timeout=60, on_process=started)
        await LocalCommandRunner().run(ctx, sys.argv[1], env={}, cwd=None, timeout=60)

    asyncio.run(main())
""")


def _start_parent(command: str) -> subprocess.Popen[bytes]:
    """A stand-in worker process running one command through the local runner."""
    return subprocess.Popen([sys.executable, "-c", PARENT, command], stdout=subprocess.PIPE,
                            start_new_session=True)


async def test_a_command_and_its_daemon_die_with_a_killed_parent(tmp_path: Path) -> None:
    daemon, effect = tmp_path / "daemon", tmp_path / "effect"
    command = (f"(setsid sh -c 'echo $$ > {daemon}; sleep 60' &); sleep 2; "
               f"echo acted > {effect}; sleep 60")
    parent = _start_parent(command)
    assert parent.stdout is not None
    line = await asyncio.to_thread(parent.stdout.readline)
    pgid, ticks = (int(x) for x in line.split())
    assert ticks == proc_start_ticks(pgid)
    await wait_for(daemon.exists, timeout=10, what="the daemon the command forked")
    daemon_pid = int(daemon.read_text())
    try:
        assert alive(pgid) and alive(daemon_pid)
        parent.send_signal(signal.SIGKILL)
        await asyncio.to_thread(parent.wait, 10)
        assert await wait_group_gone(pgid, timeout=5) == []
        await wait_for(lambda: not alive(daemon_pid), timeout=5,
                       what="the daemon, which left the group, to die with the command")
        assert not effect.exists(), "the command went on acting after its parent died"
    finally:
        kill_group(pgid)
        if alive(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)


async def test_a_leftover_group_is_stopped_but_a_reused_pid_is_not() -> None:
    proc = _start_sleeper()
    try:
        ticks = proc_start_ticks(proc.pid)
        assert ticks is not None
        # recorded with another start time: this pid now belongs to someone else
        assert await stop_leftover_group(proc.pid, ticks + 1) is False
        assert proc.poll() is None
        assert await stop_leftover_group(proc.pid, ticks) is True
        assert live_members(proc.pid) == []  # it returns once the group has exited
        assert await asyncio.to_thread(proc.wait, 5) == -signal.SIGKILL
        assert await stop_leftover_group(proc.pid, ticks) is False  # gone: nothing to stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _deep(n: int) -> None:
    if n == 0:
        raise RuntimeError("connection refused " * 400)
    _deep(n - 1)


def test_failures_are_trimmed_with_the_error_first() -> None:
    try:
        _deep(40)
    except RuntimeError as err:
        trimmed = trim_failure(err)
    assert isinstance(trimmed, ApplicationError) and trimmed.type == "RuntimeError"
    assert trimmed.message.startswith("RuntimeError: connection refused")
    assert len(trimmed.message) < MESSAGE_CHARS + 50
    frames = traceback.extract_tb(trimmed.__traceback__)
    assert len(frames) == TRACE_FRAMES and frames[-1].name == "_deep"
    short = ApplicationError("step failed", {"step_id": "s"}, type="CommandFailed")
    assert trim_failure(short) is short and short.details == ({"step_id": "s"},)
    try:
        raise ApplicationError("x" * 10_000, {"attempt": 2}, type="StepFailed",
                               non_retryable=True)
    except ApplicationError as err:
        long = trim_failure(err)
    assert isinstance(long, ApplicationError) and long.non_retryable
    assert long.type == "StepFailed" and long.details == ({"attempt": 2},)
    assert len(long.message) < MESSAGE_CHARS + 50


async def test_lock_release_first_stops_a_command_of_the_holder(db_pool: asyncpg.Pool) -> None:
    """An attempt the server gave up on may still run here: releasing the execution's locks
    stops its process group first, so the asset is never handed on while it may act."""
    eid = str(uuid.uuid4())
    await db_pool.execute(
        """INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor,
             environment, mode, sla_class, idempotency_key, plan_hash, spec)
           VALUES ($1, $2, 't', 'a', 'dev', 'background', 'fast', $2, 'h', '{}'::jsonb)""",
        uuid.UUID(eid), f"wf-{eid}")
    proc = _start_sleeper()
    try:
        async with db_pool.acquire() as conn:
            await record_attempt_started(conn, eid, "s", 1, "gone-worker")
        await record_process(db_pool, eid, "s", 1, process_host=f"local:{socket.gethostname()}",
                             pgid=proc.pid, proc_start=proc_start_ticks(proc.pid))
        released = await ActivityEnvironment().run(
            LockActivities(pool=db_pool).release_locks,
            ReleaseLocksInput(tenant="t", execution_id=eid, assets=["web-1"]))
        assert released.released == []
        assert await asyncio.to_thread(proc.wait, 5) == -signal.SIGKILL
        (row,) = await prior_attempts(db_pool, eid, "s")
        assert row.stopped_at is not None and "before lock release" in (row.detail or "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start_sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)
