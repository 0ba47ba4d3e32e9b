"""Run a command on the worker's own machine, in its own process group.

The whole group is killed on timeout and on cancellation, so a shell pipeline or a daemon a
command forks cannot outlive its step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from opsconductor.activities.executors.base import (
    OUTPUT_CAP_BYTES,
    StepContext,
    StepOutcome,
    cap_text,
)

KILL_GRACE_SECONDS = 2.0


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> bytes:
    """Keep reading (so the child never blocks on a full pipe) but keep only `cap` bytes."""
    kept = bytearray()
    dropped = 0
    while chunk := await stream.read(65536):
        room = cap - len(kept)
        if room > 0:
            kept += chunk[:room]
        dropped += max(0, len(chunk) - max(room, 0))
    if dropped:
        kept += f"\n...[truncated {dropped} bytes]".encode()
    return bytes(kept)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def terminate_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the group, give it a moment, then SIGKILL whatever is left."""
    kill_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), KILL_GRACE_SECONDS)
    except TimeoutError:
        pass
    kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE_SECONDS)


class LocalCommandRunner:
    async def run(self, ctx: StepContext, command: str, *, env: dict[str, str],
                  cwd: str | None, timeout: float) -> StepOutcome:
        full_env = {**os.environ, **env}
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", command, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                cwd=cwd, env=full_env, start_new_session=True)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as err:
            return StepOutcome(ok=False, error=f"cannot start command: {err}",
                               error_type="CommandStartError", retryable=False)
        ctx.heartbeat({"pid": proc.pid, "pgid": proc.pid})
        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(_read_capped(proc.stdout, OUTPUT_CAP_BYTES),
                                 _read_capped(proc.stderr, OUTPUT_CAP_BYTES))
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await terminate_group(proc)
            out, err_bytes = await readers
            return StepOutcome(ok=False, exit_code=proc.returncode, stdout=cap_text(out),
                               stderr=cap_text(err_bytes), output={"pid": proc.pid},
                               error=f"command timed out after {timeout:g}s; process group "
                                     f"{proc.pid} killed", error_type="StepTimeout")
        except asyncio.CancelledError:
            await terminate_group(proc)
            readers.cancel()
            raise
        # The leader exited; members it left behind in its group die with the step.
        kill_group(proc.pid)
        out, err_bytes = await readers
        code = proc.returncode
        stderr = cap_text(err_bytes)
        if code != 0:
            tail = stderr.strip()[-2000:] or "(no stderr)"
            return StepOutcome(ok=False, exit_code=code, stdout=cap_text(out), stderr=stderr,
                               output={"pid": proc.pid},
                               error=f"command exited with {code}: {tail}",
                               error_type="CommandFailed")
        return StepOutcome(ok=True, exit_code=0, stdout=cap_text(out), stderr=stderr,
                           output={"pid": proc.pid})
