"""A process that has exited but not been reaped is gone: the dev stack must say which child
died, not wait for the parent to reap it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from opsconductor.starter.pids import pid_alive, process_state
from tests.helpers import wait_for_sync


def test_a_killed_unreaped_process_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        # not waited for: it stays a zombie until we reap it, and kill(pid, 0) still finds it
        wait_for_sync(lambda: process_state(proc.pid) == "Z", timeout=10, what="a zombie")
        assert not pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not pid_alive(proc.pid)
    assert process_state(proc.pid) is None
