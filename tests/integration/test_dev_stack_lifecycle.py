"""`opsconductor dev` as a new user meets it: one stack per OPSC_HOME, and a stack whose child
dies stops the rest and says why. Real `opsconductor dev` subprocesses, each in a private
(0700) directory, as a home directory or `mktemp -d` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsconductor.schema.payloads import DATA_CONVERTER
from opsconductor.starter.binaries import temporal_cli
from tests.helpers import payload_as_json, payload_from_json, wait_for
from tests.integration.helpers import OPSCONDUCTOR, run_binary, run_cli
from tests.processes import alive

pytestmark = pytest.mark.asyncio(loop_scope="session")

START_TIMEOUT = 120


@dataclass
class DevProcess:
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path

    @property
    def stack_file(self) -> Path:
        return self.home / "stack.json"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stack(self) -> dict[str, Any]:
        return dict(json.loads(self.stack_file.read_text()))

    async def up(self) -> dict[str, Any]:
        def ready() -> bool:
            assert self.proc.poll() is None, f"dev exited early:\n{self.output()}"
            # stack.json is written just before the stack prints what it serves
            return self.stack_file.exists() and "Press Ctrl-C to stop." in self.output()

        await wait_for(ready, timeout=START_TIMEOUT, interval=0.2, what="stack.json")
        return self.stack()

    async def exit_code(self, timeout: float = 60) -> int:
        await wait_for(lambda: self.proc.poll() is not None, timeout=timeout, interval=0.1,
                       what="`opsconductor dev` to exit")
        return int(self.proc.returncode)


def _dev_env(home: Path) -> dict[str, str]:
    """No server addresses: the stack starts its own Temporal and PostgreSQL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSC_")}
    env["OPSC_HOME"] = str(home)
    return env


@pytest.fixture
def private_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="opsc-dev-") as d:
        assert os.stat(d).st_mode & 0o777 == 0o700
        yield Path(d)


@pytest.fixture
def start_dev(private_dir: Path) -> Iterator[Any]:
    started: list[DevProcess] = []

    def start(name: str = "a") -> DevProcess:
        home = private_dir / "home"
        log = private_dir / f"dev-{name}-{len(started)}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen([OPSCONDUCTOR, "dev"], env=_dev_env(home), stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        dev = DevProcess(proc, home, log)
        started.append(dev)
        return dev

    yield start
    for dev in started:
        pids = []
        with contextlib.suppress(OSError, ValueError):
            pids = list(dev.stack().get("pids", {}).values())
        if dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGTERM)
            try:
                dev.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(dev.proc.pid, signal.SIGKILL)
                dev.proc.wait(10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _temporal_healthy(address: str) -> bool:
    probe = await run_binary(temporal_cli(), "operator", "cluster", "health", "--address",
                             address)
    return probe.code == 0 and "SERVING" in probe.stdout


async def test_a_second_dev_refuses_with_the_pid_and_touches_nothing(
        start_dev: Any, private_dir: Path) -> None:
    # A lock left by a stack that died uncleanly (its pid no longer runs) must not block.
    (private_dir / "home").mkdir()
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    (private_dir / "home" / "dev.lock").write_text(f"{dead.pid}\n")
    first = start_dev("first")

    stack = await first.up()
    before = first.stack_file.read_bytes()
    assert (first.home / "dev.lock").read_text().split() == [str(first.proc.pid)]
    assert f"pid {dead.pid}" in first.output() and "stale" in first.output()
    temporal_pid, postgres_pid = stack["pids"]["temporal"], stack["pids"]["postgres"]
    # the files the worker decides with, so every client shell decides the same way
    assert stack["rbac_policy"] == str(first.home / "rbac_policy.yaml")

    env = _dev_env(first.home)
    second = await run_cli(env, "dev", timeout=60)
    assert second.code == 1, second
    assert f"pid {first.proc.pid}" in second.stderr, second
    assert "Traceback" not in second.stderr + second.stdout, second

    # Nothing of the first stack was touched: same stack.json, same children, all serving.
    assert first.stack_file.read_bytes() == before
    assert first.proc.poll() is None
    assert alive(temporal_pid) and alive(postgres_pid)
    assert await _temporal_healthy(stack["temporal_address"])
    health = await run_cli(env, "health", "--json")
    assert health.code == 0, health
    assert all(v["ok"] for v in health.json.values())

    first.proc.send_signal(signal.SIGTERM)
    assert await first.exit_code() == 0, first.output()
    assert not first.stack_file.exists()
    await wait_for(lambda: not alive(temporal_pid) and not alive(postgres_pid), timeout=30,
                   what="the stack's servers to stop")
    # Its PostgreSQL ran as its own user without opening the private directory to others.
    assert private_dir.stat().st_mode & 0o777 == 0o700


async def test_a_dead_child_stops_the_stack_and_says_why(start_dev: Any) -> None:
    dev = start_dev("temporal-dies")
    stack = await dev.up()
    os.kill(stack["pids"]["temporal"], signal.SIGKILL)
    assert await dev.exit_code() == 1, dev.output()
    assert "Temporal dev server exited" in dev.output()
    assert "Traceback" not in dev.output()
    assert not dev.stack_file.exists()
    postgres_pid = stack["pids"]["postgres"]
    await wait_for(lambda: not alive(postgres_pid), timeout=30, what="PostgreSQL to stop")

    # The lock went with it: the same home starts again; now PostgreSQL dies.
    again = start_dev("postgres-dies")
    stack = await again.up()
    os.kill(stack["pids"]["postgres"], signal.SIGKILL)
    assert await again.exit_code() == 1, again.output()
    assert f"PostgreSQL (pid {stack['pids']['postgres']}) is gone" in again.output()
    assert "Traceback" not in again.output()
    assert not again.stack_file.exists()
    temporal_pid = stack["pids"]["temporal"]
    await wait_for(lambda: not alive(temporal_pid), timeout=30, what="Temporal to stop")


async def test_the_stacks_api_needs_its_token_and_the_web_ui_decodes_through_its_codec(
        start_dev: Any) -> None:
    dev = start_dev("codec")
    stack = await dev.up()
    codec_url = stack["codec_url"]
    assert codec_url and f"UI codec:   {codec_url}" in dev.output()
    token_file = Path(stack["api_token_file"])
    assert token_file == dev.home / "api-token" and token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert f"API token:  {token} (shown once)" in dev.output()
    api = stack["api_url"]
    assert api.startswith("http://127.0.0.1:") and codec_url.startswith(f"{api}/codec/key/")
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        refused = [(await http.get(path)).status_code
                   for path in ("/executions", "/metrics", "/openapi.json")]
        refused.append((await http.post("/codec/decode", json={"payloads": []})).status_code)
        assert refused == [401] * 4, refused
        listed = await http.get("/executions", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200 and listed.json()["items"] == []
        assert (await http.get("/healthz")).status_code == 200
    async with httpx.AsyncClient(timeout=30) as http:
        async def ui_settings() -> dict[str, Any] | None:
            with contextlib.suppress(httpx.HTTPError):
                resp = await http.get(f"{stack['ui_url']}/api/v1/settings")
                if resp.status_code == 200:
                    return dict(resp.json())
            return None

        settings = await wait_for(ui_settings, timeout=30, what="the Web UI's settings")
        assert settings["Codec"]["Endpoint"] == codec_url  # the UI was started with it
        [big] = await DATA_CONVERTER.encode([{"steps": ["restart"] * 50_000}])
        resp = await http.post(f"{codec_url}/decode", headers={"Origin": stack["ui_url"]},
                               json={"payloads": [payload_as_json(big)]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == stack["ui_url"]
    shown = payload_from_json(resp.json()["payloads"][0])
    assert json.loads(shown.data) == {"steps": ["restart"] * 50_000}
    dev.proc.send_signal(signal.SIGTERM)
    assert await dev.exit_code() == 0, dev.output()
