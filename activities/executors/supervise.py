"""The per-step supervisor: a command never outlives the worker that started it.

The local runner does not start a command itself; it starts this file as a small process
(`python -I -S supervise.py PARENT_PID GRACE FD -- /bin/sh -c COMMAND`, standard library only, so
it starts in milliseconds), which:

1. asks the kernel for SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`), and becomes a
   child subreaper (`PR_SET_CHILD_SUBREAPER`) so that descendants which daemonise re-parent to
   it rather than to init;
2. forks the command into a new session (its pid is its process group id) and reports
   `started PID STARTTIME` on the pipe FD (STARTTIME: field 22 of /proc/PID/stat, so a later attempt
   that finds the pid reused by another process never signals it);
3. waits; when the command's leader exits it kills what is left of the group and of its
   re-parented descendants and reports `exit CODE` (or `signal N`) on FD;
4. on SIGTERM, SIGINT or SIGHUP — the worker cancelling the step, or the worker dying (the
   death signal) — sends SIGTERM to the group, waits GRACE seconds, then SIGKILLs the group and
   every descendant, and exits.

So a `kill -9` of the worker kills the command within milliseconds, with no help from the
worker. Only the supervisor itself being SIGKILLed leaves the group running; the attempt record
(pgid + start time) then lets the next attempt of the step stop it before it acts.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class _Stop(Exception):
    """Raised by the signal handler to leave the wait loop."""


def proc_stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first: field 3 of proc(5)
    is index 0), None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), None if gone."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def _children() -> list[int]:
    """Our direct children (descendants re-parent to us: we are a subreaper)."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _kill(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in _children():
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass


def _on_signal(signum: int, frame: object) -> None:
    # One stop is enough: a second signal (the death signal and a cancel together) must not
    # interrupt the stopping itself and leave the command running.
    _ignore_signals()
    raise _Stop(signum)


def _ignore_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str]) -> int:
    parent, grace, report, command = int(argv[1]), float(argv[2]), int(argv[3]), argv[5:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    # Held back until the wait below: a death signal that arrives while the command starts
    # must find the supervisor ready to stop it, never kill the supervisor half-way.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if os.getppid() != parent:  # the worker died before the death signal was armed
        return 125
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            os.close(report)
            os.execv(command[0], command)
        finally:
            os._exit(127)
    try:
        _report(report, f"started {pid} {proc_start_ticks(pid) or 0}")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending one lands here
        while True:
            got, status = os.waitpid(pid, 0)
            if got == pid:
                break
        _ignore_signals()  # inside the try: a stop that lands now is still handled below
    except _Stop:
        _ignore_signals()
        _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap()
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                if not _children():
                    break
            time.sleep(0.05)
        _kill(pid, signal.SIGKILL)
        _reap()
        _report(report, "signal 15")
        return 143
    _ignore_signals()
    _kill(pid, signal.SIGKILL)  # what the leader left behind dies with the step
    _reap()
    if os.WIFSIGNALED(status):
        _report(report, f"signal {os.WTERMSIG(status)}")
        return 128 + os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    _report(report, f"exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
