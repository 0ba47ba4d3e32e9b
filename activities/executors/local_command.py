"""Run a command on the worker's own machine, supervised, in its own process group.

The command is started through the per-step supervisor (`supervise.py`, documented there): it
runs in a new session whose process group is killed on timeout, on cancellation, after the
command's leader exits, and — by the supervisor, without the worker's help — when the worker
dies, so a shell pipeline or a daemon a command forks cannot outlive its step or its worker.
The group's pgid and start time are reported to the step (`StepContext.on_process`), which
records them with the attempt so a later attempt can stop a leftover group first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from opsconductor.activities.executors.base import (
    OUTPUT_CAP_BYTES,
    ProcessRef,
    StepContext,
    StepOutcome,
    cap_text,
)
from opsconductor.activities.executors.supervise import proc_start_ticks, proc_stat
from opsconductor.safety.command_env import command_env
from opsconductor.schema.errors import ErrorType

SUPERVISOR = str(Path(__file__).with_name("supervise.py"))
KILL_GRACE_SECONDS = 2.0


async def _read_capped(stream: asyncio.StreamReader, cap: int,
                       tap: Callable[[bytes], None] | None = None) -> bytes:
    """Keep reading (so the child never blocks on a full pipe) but keep only `cap` bytes;
    `tap` sees each kept chunk as it arrives (live output)."""
    kept = bytearray()
    dropped = 0
    while chunk := await stream.read(65536):
        room = cap - len(kept)
        if tap is not None and room > 0:
            tap(chunk[:room])
        if room > 0:
            kept += chunk[:room]
        dropped += max(0, len(chunk) - max(room, 0))
    if dropped:
        kept += f"\n...[truncated {dropped} bytes]".encode()
    return bytes(kept)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that have not exited (zombies are dead: not counted)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = proc_stat(entry.name)
        if fields is not None and len(fields) > 2 and int(fields[2]) == pgid \
                and fields[0] != b"Z":
            out.append(int(entry.name))
    return out


async def stop_leftover_group(pgid: int, start_ticks: int | None,
                              wait: float = KILL_GRACE_SECONDS) -> bool:
    """SIGKILL a group an earlier attempt left behind and wait (bounded) until every member
    has exited; True when something was killed.

    The leader alive with another start time means the pid was reused: left alone. The leader
    gone but members alive is still the old group (a pgid in use is never handed out again).
    """
    ticks = proc_start_ticks(pgid)
    if ticks is not None and start_ticks and ticks != start_ticks:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        if not live_members(pgid):
            break
        await asyncio.sleep(0.02)  # exiting processes signal nothing we could await
    return True


class _Supervised:
    """The supervisor process and what it reports on its status pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, status: asyncio.StreamReader):
        self.proc = proc
        self.status = status
        self.pgid: int | None = None
        self.start_ticks: int | None = None
        self.exit_code: int | None = None

    async def started(self) -> bool:
        line = (await self.status.readline()).decode().split()
        if len(line) == 3 and line[0] == "started":
            self.pgid, self.start_ticks = int(line[1]), int(line[2]) or None
            return True
        return False

    async def finished(self) -> int | None:
        """The command's exit code (128+N for a signal), once the supervisor has exited."""
        await self.proc.wait()
        line = (await self.status.read()).decode().split()
        if len(line) == 2 and line[0] == "exit":
            self.exit_code = int(line[1])
        elif len(line) == 2 and line[0] == "signal":
            self.exit_code = 128 + int(line[1])
        else:  # the supervisor itself was killed: stop the group it can no longer watch
            if self.pgid is not None:
                kill_group(self.pgid)
            self.exit_code = self.proc.returncode
        return self.exit_code

    async def terminate(self) -> None:
        """Ask the supervisor to stop the group (SIGTERM, grace, SIGKILL); force it if needed."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), KILL_GRACE_SECONDS + 2)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self.pgid is not None:
            kill_group(self.pgid)


async def _start(argv: list[str], env: dict[str, str], cwd: str | None) -> _Supervised:
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", SUPERVISOR, str(os.getpid()), str(KILL_GRACE_SECONDS),
            str(write_fd), "--", *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd, env=env,
            start_new_session=True, pass_fds=(write_fd,))
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    loop = asyncio.get_running_loop()
    status = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(status),
                                 os.fdopen(read_fd, "rb", 0))
    return _Supervised(proc, status)


class LocalCommandRunner:
    """Free text runs as `/bin/sh -c COMMAND`, a probe as its own argv (no shell); both in
    the reset environment of `safety.command_env`, never the worker's own."""

    async def run(self, ctx: StepContext, command: str, *, env: dict[str, str],
                  cwd: str | None, timeout: float) -> StepOutcome:
        return await self.run_argv(ctx, ["/bin/sh", "-c", command],
                                   env=command_env(env, probe=False), cwd=cwd, timeout=timeout)

    async def run_argv(self, ctx: StepContext, argv: list[str], *, env: dict[str, str],
                       cwd: str | None, timeout: float) -> StepOutcome:
        """Exec `argv` with exactly `env` (the caller built it from `command_env`)."""
        try:
            sup = await _start(argv, env, cwd)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as err:
            return StepOutcome(ok=False, error=f"cannot start command: {err}",
                               error_type=ErrorType.COMMAND_START_ERROR, retryable=False)
        proc = sup.proc
        assert proc.stdout is not None and proc.stderr is not None
        feed = ctx.on_output
        readers = asyncio.gather(
            _read_capped(proc.stdout, OUTPUT_CAP_BYTES,
                         (lambda b: feed("stdout", b)) if feed else None),
            _read_capped(proc.stderr, OUTPUT_CAP_BYTES,
                         (lambda b: feed("stderr", b)) if feed else None))
        try:
            if not await sup.started():
                await sup.finished()
                out, err_bytes = await readers
                return StepOutcome(ok=False, stderr=cap_text(err_bytes),
                                   error="cannot start command: its supervisor exited with "
                                         f"{proc.returncode}",
                                   error_type=ErrorType.COMMAND_START_ERROR, retryable=False)
            assert sup.pgid is not None
            if ctx.on_process is not None:  # the durable record: no heartbeat RPC at spawn
                await ctx.on_process(ProcessRef(None, sup.pgid, sup.start_ticks))
            else:  # nothing records the group: Temporal's pending activity shows it
                ctx.heartbeat({"pid": sup.pgid, "pgid": sup.pgid})
            code = await asyncio.wait_for(sup.finished(), timeout)
        except TimeoutError:
            await sup.terminate()
            out, err_bytes = await readers
            return StepOutcome(ok=False, exit_code=sup.exit_code, stdout=cap_text(out),
                               stderr=cap_text(err_bytes), output={"pid": sup.pgid},
                               error=f"command timed out after {timeout:g}s; process group "
                                     f"{sup.pgid} killed", error_type=ErrorType.STEP_TIMEOUT)
        except BaseException:
            await asyncio.shield(sup.terminate())
            readers.cancel()
            raise
        out, err_bytes = await readers
        stderr = cap_text(err_bytes)
        if code != 0:
            tail = stderr.strip()[-2000:] or "(no stderr)"
            return StepOutcome(ok=False, exit_code=code, stdout=cap_text(out), stderr=stderr,
                               output={"pid": sup.pgid},
                               error=f"command exited with {code}: {tail}",
                               error_type=ErrorType.COMMAND_FAILED)
        return StepOutcome(ok=True, exit_code=0, stdout=cap_text(out), stderr=stderr,
                           output={"pid": sup.pgid})
