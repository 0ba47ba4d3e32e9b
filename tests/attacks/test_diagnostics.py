"""What a principal without `shell` can still do: everyday read-only diagnostics, written the
way planners write them, run end to end for `bot-ci` in prod — every one through a probe (its
argv, no shell), on this machine and over SSH. Counted and printed."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from opsconductor.activities.authorization import operation_of
from opsconductor.schema.spec import build_spec
from opsconductor.schema.validation import validate_request
from tests.attacks.conftest import CANARY, Arena
from tests.helpers import request

pytestmark = pytest.mark.asyncio(loop_scope="session")


def diagnostics(http_port: int) -> list[tuple[str, dict[str, Any]]]:
    """(tool, inputs): what an operator asks a read-only bot for, in planners' words."""
    return [
        ("uptime", {}), ("df", {}), ("df", {"args": "-h"}), ("df", {"args": ["-h", "/"]}),
        ("free", {"args": "-m"}), ("free", {"args": "-h"}), ("uname", {"args": "-a"}),
        ("hostname", {}), ("whoami", {}), ("id", {}), ("date", {}), ("date", {"args": "-u"}),
        ("ps", {"format": "detailed", "sort_by": "cpu_usage"}), ("ps", {"args": "aux"}),
        ("ps", {"args": "-ef"}), ("cat", {"args": ["/etc/os-release"]}),
        ("cat", {"args": ["/proc/loadavg"]}), ("head", {"args": ["-n", "3", "/etc/hosts"]}),
        ("tail", {"args": ["-n", "3", "/proc/meminfo"]}), ("stat", {"args": ["/etc/hostname"]}),
        ("ls", {"args": ["-la", "/tmp"]}), ("ss", {"args": "-tln"}), ("ss", {"args": "-tunl"}),
        ("netstat", {"args": "-tlnp"}), ("ip", {"args": ["addr"]}), ("ip", {"args": ["route"]}),
        ("lsblk", {}), ("nproc", {}), ("lscpu", {}), ("who", {}), ("vmstat", {"args": "1 2"}),
        ("mount", {}), ("dig", {"args": ["localhost"]}), ("nslookup", {"args": ["localhost"]}),
        ("curl", {"args": ["-sf", f"http://127.0.0.1:{http_port}/health"]}),
        ("network_tools", {"tool": "netstat", "show_listening": True}),
        ("config_manager", {"operation": "read", "config_file": "/etc/hostname"}),
        ("file_manager", {"operation": "read", "path": "/etc/hosts"}),
        ("ssh_command_read", {"command": "uptime", "env": {"TZ": "UTC"}}),
        ("ssh_command_read", {"command": "df -h"}),
        ("ssh_command_read", {"command": "cat /etc/os-release"}),
        ("ssh_command_read", {"command": "getent hosts localhost"}),
        ("ssh_command_read", {"command": "sha256sum /etc/hosts"}),
        ("ssh_command_read", {"command": "dpkg-query -W bash"}),
        ("wc", {"args": ["-l", "/etc/hosts"]}),
        ("info_display", {"info_type": "system_status", "format": "detailed"}),
        ("info_display", {"info_type": "system_metrics", "include_metrics": True}),
    ]


OVER_SSH = {"uptime", "df", "free", "uname", "ps", "cat", "ss", "ip", "who", "id", "stat",
            "ls", "config_manager", "ssh_command_read", "info_display"}


async def _health_server() -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _steps(items: list[tuple[str, dict[str, Any]]], target: str | None) -> list[dict]:
    out = []
    for i, (tool, inputs) in enumerate(items):
        where = {} if target is None else (
            {"target_host": target} if tool == "network_tools" else {"target": target})
        out.append({"id": f"d{i:02d}", "tool": tool, "inputs": {**inputs, **where},
                    "description": f"{tool} {inputs}", "failure_handling": "continue"})
    return out


async def test_everyday_diagnostics_run_as_probes_without_shell(engine: Any,
                                                                arena: Arena) -> None:
    server, port = await _health_server()
    local = diagnostics(port)
    remote = [d for d in local if d[0] in OVER_SSH]
    runs = {"local": _steps(local, None), "ssh": _steps(remote, arena.ssh_asset)}
    try:
        reqs = {where: request(steps, tenant=f"diag-{uuid.uuid4().hex[:8]}", actor="bot-ci",
                               environment="prod", max_parallel=8)
                for where, steps in runs.items()}
        for where, req in reqs.items():  # every one is a probe, none free text
            spec = build_spec(validate_request(req), execution_id="e", workflow_id="w",
                              idempotency_key="k")
            for s in spec.steps:
                op = operation_of(s.tool, s.command, inputs=s.inputs)
                assert op.probe is not None and "shell" not in op.tools, (where, s.tool,
                                                                          s.inputs, op.why)
        responses = await asyncio.gather(*(engine.execute(r, wait=True) for r in
                                           reqs.values()))
    finally:
        server.close()
    counts = {}
    for where, resp in zip(reqs, responses, strict=True):
        assert resp.result is not None
        failed = [(s.step_id, s.error) for s in resp.result.steps
                  if s.status.value != "completed"]
        assert not failed, (where, failed)
        assert all(CANARY not in s.stdout + s.stderr for s in resp.result.steps)
        counts[where] = len(resp.result.steps)
    distinct = len({(t, str(i)) for t, i in local})
    print(f"\n[diagnostics] bot-ci in prod without shell: {counts['local']} diagnostics "
          f"({distinct} distinct) ran as probes on this machine, {counts['ssh']} over SSH; "
          f"0 needed shell")
    assert counts["local"] >= 36 and counts["ssh"] >= 14
