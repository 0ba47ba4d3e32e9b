"""No unsupervised remote command: against a real sshd on loopback, a command's process group
stops itself when the worker that started it is killed with `kill -9` (its SSH channel goes),
and a later attempt stops a leftover group over SSH, never one whose pid was reused."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from opsconductor.activities.executors.ssh import POOL, stop_remote_leftover
from opsconductor.activities.executors.supervise import proc_start_ticks
from opsconductor.schema.assets import Asset
from tests.executors.conftest import SshServer
from tests.helpers import wait_for
from tests.integration.helpers import kill_group, wait_group_gone
from tests.processes import alive

PARENT = textwrap.dedent("""
    import asyncio, json, sys
    from opsconductor.activities.executors.base import StepContext
    from opsconductor.activities.executors.ssh import SshCommandRunner
    from opsconductor.schema.assets import Asset
    from opsconductor.schema.enums import ActionClass, FailureHandling, StepKind
    from opsconductor.schema.spec import StepSpec

    async def main():
        asset = Asset.model_validate(json.loads(sys.argv[1]))
        command = sys.argv[2]
        step = StepSpec(id="s", tool="shell", kind=StepKind.COMMAND,
                        action_class=ActionClass.MODIFY, inputs={"command": command},
                        command=command, order=1, failure_handling=FailureHandling.ABORT)
        async def started(ref):
            print(ref.pgid, ref.start_ticks, flush=True)
        ctx = StepContext(execution_id="e", workflow_id="w", tenant="t", environment="dev",
                          step=step, inputs={}, timeout=60, asset=asset, on_process=started)
        await SshCommandRunner().run(ctx, command, env={}, cwd=None, timeout=60)

    asyncio.run(main())
""")


def _start_parent(asset: dict[str, object], command: str) -> subprocess.Popen[bytes]:
    """A stand-in worker process running one command over SSH."""
    return subprocess.Popen([sys.executable, "-c", PARENT, json.dumps(asset), command],
                            stdout=subprocess.PIPE, start_new_session=True)


async def test_a_remote_command_stops_when_its_worker_is_killed(sshd: SshServer,
                                                                tmp_path: Path) -> None:
    effect = tmp_path / "effect"
    parent = _start_parent(sshd.asset(), f"sleep 3; echo acted > {effect}; sleep 60")
    assert parent.stdout is not None
    line = await asyncio.to_thread(parent.stdout.readline)
    pgid, ticks = (int(x) for x in line.split())
    try:
        assert alive(pgid) and ticks == proc_start_ticks(pgid)
        parent.send_signal(signal.SIGKILL)
        await asyncio.to_thread(parent.wait, 10)
        assert await wait_group_gone(pgid, timeout=6) == [], "the remote command outlived it"
        assert not effect.exists()
    finally:
        kill_group(pgid)


async def test_a_leftover_remote_group_is_stopped_unless_its_pid_was_reused(
        sshd: SshServer) -> None:
    asset = Asset.model_validate(sshd.asset())
    conn = await POOL.get(asset)
    proc = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    await wait_for(lambda: proc_start_ticks(proc.pid) is not None, timeout=5,
                   what="the stand-in leftover to start")
    try:
        ticks = proc_start_ticks(proc.pid)
        assert ticks is not None
        assert await stop_remote_leftover(conn, proc.pid, ticks + 1) == "reused"
        assert proc.returncode is None and alive(proc.pid)
        assert await stop_remote_leftover(conn, proc.pid, ticks) == "killed"
        assert await asyncio.wait_for(proc.wait(), 5) == -signal.SIGKILL
        assert await stop_remote_leftover(conn, proc.pid, ticks) == "gone"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
