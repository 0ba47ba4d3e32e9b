"""SSH command runner against a real sshd on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from opsconductor.activities.executors.base import OUTPUT_CAP_BYTES, StepContext
from opsconductor.activities.executors.ssh import POOL, SshCommandRunner
from opsconductor.schema.assets import Asset
from opsconductor.schema.enums import ActionClass, FailureHandling, StepKind
from opsconductor.schema.spec import StepSpec
from tests.executors.conftest import SshServer
from tests.helpers import wait_for
from tests.processes import group_members


def step_ctx(asset: Asset | None, *, command: str = "true", timeout: float = 30,
             idempotent: bool = False, heartbeat=lambda *d: None) -> StepContext:
    step = StepSpec(id="s1", tool="shell", kind=StepKind.COMMAND, action_class=ActionClass.MODIFY,
                    inputs={"command": command}, command=command, order=1,
                    failure_handling=FailureHandling.ABORT, idempotent=idempotent)
    return StepContext(execution_id="00000000-0000-0000-0000-000000000001", workflow_id="wf",
                       tenant="t", environment="dev", step=step, inputs={"command": command},
                       timeout=timeout, asset=asset, heartbeat=heartbeat)


async def wait_gone(pgid: int, limit: float = 5.0) -> list[int]:
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: not group_members(pgid), timeout=limit,
                       what=f"process group {pgid} to end")
    return group_members(pgid)


async def test_ssh_runs_command(sshd: SshServer) -> None:
    asset = Asset.model_validate(sshd.asset())
    runner = SshCommandRunner()
    out = await runner.run(step_ctx(asset), 'echo hello; echo "to err" >&2; echo "$FOO"; pwd',
                           env={"FOO": "bar baz"}, cwd="/tmp", timeout=20)
    assert out.ok, out
    assert out.exit_code == 0
    assert out.stdout.splitlines() == ["hello", "bar baz", "/tmp"]
    assert out.stderr.strip() == "to err"
    assert out.output["pgid"] > 0
    failed = await runner.run(step_ctx(asset), "echo partial; exit 3", env={}, cwd=None, timeout=20)
    assert not failed.ok and failed.exit_code == 3 and failed.stdout.strip() == "partial"
    assert failed.error_type == "CommandFailed"


async def test_env_values_not_on_remote_command_line(sshd: SshServer) -> None:
    asset = Asset.model_validate(sshd.asset())
    out = await SshCommandRunner().run(
        step_ctx(asset),
        'cat /proc/$PPID/cmdline /proc/$$/cmdline | tr "\\0" " "; echo; echo "$TOKEN"',
        env={"TOKEN": "s3cr3t-value"}, cwd=None, timeout=20)
    assert out.ok, out
    cmdlines, value = out.stdout.strip().rsplit("\n", 1)
    assert value == "s3cr3t-value"
    assert "s3cr3t-value" not in cmdlines


async def test_output_is_capped(sshd: SshServer) -> None:
    asset = Asset.model_validate(sshd.asset())
    out = await SshCommandRunner().run(
        step_ctx(asset), f"head -c {OUTPUT_CAP_BYTES + 1000} /dev/zero | tr '\\0' x", env={},
        cwd=None, timeout=20)
    assert out.ok
    assert out.stdout.startswith("x" * 1000)
    assert out.stdout.endswith("\n...[truncated 1000 bytes]")
    assert len(out.stdout) < OUTPUT_CAP_BYTES + 100


async def test_timeout_kills_remote_group(sshd: SshServer) -> None:
    asset = Asset.model_validate(sshd.asset())
    out = await SshCommandRunner().run(
        step_ctx(asset), "sleep 300 & echo bg=$!; (sleep 301; echo never) ; echo never",
        env={}, cwd=None, timeout=1.5)
    assert not out.ok and out.error_type == "StepTimeout", out
    pgid = out.output["pgid"]
    bg = int(out.stdout.split("bg=")[1].split()[0])
    assert pgid and bg
    assert await wait_gone(pgid) == []
    assert bg not in group_members(pgid)
    assert "never" not in out.stdout


async def test_cancel_kills_remote_group(sshd: SshServer) -> None:
    asset = Asset.model_validate(sshd.asset())
    beats: list[dict] = []
    started = asyncio.Event()

    def beat(*details: object) -> None:
        if details and isinstance(details[0], dict) and details[0].get("pgid"):
            beats.append(dict(details[0]))
            started.set()

    task = asyncio.create_task(SshCommandRunner().run(
        step_ctx(asset, heartbeat=beat), "sleep 400 & sleep 401; wait", env={}, cwd=None,
        timeout=60))
    await asyncio.wait_for(started.wait(), 10)
    pgid = beats[0]["pgid"]
    # sh + two sleeps; /proc has no event to await, so it is polled
    await wait_for(lambda: len(group_members(pgid)) >= 3, timeout=5,
                   what=f"the shell and both sleeps in process group {pgid}")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(pgid) == []


async def test_connection_is_reused_and_reopened(sshd: SshServer) -> None:
    asset = Asset.model_validate(sshd.asset(id="ssh-reuse"))
    runner = SshCommandRunner()
    a = await runner.run(step_ctx(asset), "echo $PPID", env={}, cwd=None, timeout=20)
    conn1 = POOL.peek(asset)
    b = await runner.run(step_ctx(asset), "echo $PPID", env={}, cwd=None, timeout=20)
    assert a.ok and b.ok
    assert POOL.peek(asset) is conn1 and conn1 is not None
    conn1.close()
    await conn1.wait_closed()
    c = await runner.run(step_ctx(asset), "echo again", env={}, cwd=None, timeout=20)
    assert c.ok and c.stdout.strip() == "again"
    assert POOL.peek(asset) is not conn1


async def test_strict_host_key_refuses_unknown_host(sshd: SshServer) -> None:
    asset = Asset.model_validate(sshd.asset(id="ssh-strict",
                                            known_hosts=str(sshd.empty_known_hosts)))
    out = await SshCommandRunner().run(step_ctx(asset), "echo hi", env={}, cwd=None, timeout=20)
    assert not out.ok
    assert out.error_type == "HostKeyVerificationFailed" and out.retryable is False
    missing = Asset.model_validate(sshd.asset(id="ssh-nokh", known_hosts=str(sshd.dir / "nope")))
    out = await SshCommandRunner().run(step_ctx(missing), "echo", env={}, cwd=None, timeout=20)
    assert out.error_type == "HostKeyVerificationFailed"


async def test_accept_new_records_then_refuses_changed_key(sshd: SshServer,
                                                          tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    asset = Asset.model_validate(sshd.asset(id="ssh-tofu", known_hosts=str(kh),
                                            host_key_checking="accept-new"))
    out = await SshCommandRunner().run(step_ctx(asset), "echo hi", env={}, cwd=None, timeout=20)
    assert out.ok, out
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in kh.read_text()
    # A different key recorded for the host: accept-new must refuse, not overwrite.
    other = tmp_path / "other"
    keygen = await asyncio.create_subprocess_exec(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    assert await keygen.wait() == 0
    pub = (tmp_path / "other.pub").read_text().split()
    kh.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    changed = Asset.model_validate(sshd.asset(id="ssh-tofu2", known_hosts=str(kh),
                                              host_key_checking="accept-new"))
    out = await SshCommandRunner().run(step_ctx(changed), "echo", env={}, cwd=None, timeout=20)
    assert out.error_type == "HostKeyVerificationFailed"


async def test_password_auth_from_secret(sshd: SshServer) -> None:
    if not sshd.password_user:
        pytest.skip("password login needs a real account; the tests create one only as root")
    asset = Asset.model_validate(sshd.asset(
        id="ssh-pw", user=sshd.password_user,
        credentials={"password": {"type": "secret", "path": "test/ssh/password"}}))
    out = await SshCommandRunner().run(step_ctx(asset), "id -un", env={}, cwd=None, timeout=20)
    assert out.ok, out
    assert out.stdout.strip() == sshd.password_user
    bad = Asset.model_validate(sshd.asset(
        id="ssh-pw-bad", user=sshd.password_user,
        credentials={"password": {"type": "secret", "path": "test/ssh/key"}}))
    out = await SshCommandRunner().run(step_ctx(bad), "id -un", env={}, cwd=None, timeout=20)
    assert out.error_type == "AuthenticationFailed" and not out.retryable
    unknown = Asset.model_validate(sshd.asset(
        id="ssh-pw-missing", credentials={"password": {"type": "secret", "path": "no/such"}}))
    out = await SshCommandRunner().run(step_ctx(unknown), "true", env={}, cwd=None, timeout=20)
    assert out.error_type == "SecretNotFound" and not out.retryable
