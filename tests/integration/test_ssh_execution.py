"""Executions whose steps run on an SSH asset, through the whole engine: request → workflow →
asset lock → step activity → asyncssh → a real sshd on loopback → mirror.

The "remote" host is this machine, so the tests can look at its processes directly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.executors.conftest import SshServer
from tests.helpers import events, request, shell, step_rows, wait_for
from tests.integration.conftest import SSH_ASSET
from tests.integration.helpers import kill_group, wait_group_gone
from tests.processes import alive, group_members

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def lock_rows(engine: Any, asset: str = SSH_ASSET) -> list[Any]:
    return list(await engine.pool.fetch(
        "SELECT * FROM execution.execution_locks WHERE asset = $1", asset))


async def test_two_step_plan_on_an_ssh_asset_completes_remotely(
        engine: Any, ssh_host: SshServer, ssh_inventory: Path) -> None:
    req = request([
        shell("who", 'echo "remote:${SSH_CONNECTION:-unset}"; echo "user:$(id -un)"',
              target=SSH_ASSET),
        shell("count", "echo $((6 * 7)) from $(basename $SHELL)", deps=["who"],
              target=SSH_ASSET),
    ])
    sessions_before = ssh_host.log.read_text().count("Starting session: command")
    resp = await engine.execute(req, wait=True)
    result = resp.result
    assert result.status.value == "completed", result
    by_id = {s.step_id: s for s in result.steps}
    lines = by_id["who"].stdout.splitlines()
    # The output came from commands run by our sshd (its log records each session; the
    # connection itself may be an earlier one, reused), not from a local shell; and the
    # remote command starts from the clean environment: sshd's SSH_CONNECTION does not
    # reach it.
    assert ssh_host.log.read_text().count("Starting session: command") >= sessions_before + 2
    assert lines[0] == "remote:unset"
    assert lines[1] == f"user:{ssh_host.user}"
    assert by_id["count"].stdout.split()[:2] == ["42", "from"]
    assert by_id["who"].completed_at <= by_id["count"].started_at
    assert by_id["who"].output["asset"] == SSH_ASSET
    assert by_id["who"].output["host"] == "127.0.0.1"

    rows = await step_rows(engine.pool, resp.execution_id)
    assert {sid: (r["status"], r["target"]) for sid, r in rows.items()} == {
        "who": ("completed", SSH_ASSET), "count": ("completed", SSH_ASSET)}
    evs = await events(engine.pool, resp.execution_id)
    kinds = [e["event_type"] for e in evs]
    assert kinds.index("locks.requested") < kinds.index("locks.acquired") \
        < kinds.index("locks.released")
    acquired = next(e for e in evs if e["event_type"] == "locks.acquired")
    assert "ssh-int" in acquired["data"]
    assert not [r for r in await lock_rows(engine) if r["execution_id"] == resp.execution_id]
    desc = await engine.temporal.get_workflow_handle(resp.workflow_id).describe()
    assert desc.search_attributes["OpsAssets"] == [SSH_ASSET]


async def test_cancel_kills_the_remote_process_group_and_releases_the_lock(
        engine: Any, ssh_host: SshServer, ssh_inventory: Path, tmp_path: Path) -> None:
    pids = tmp_path / "remote-pids"
    req = request([
        shell("hold", f"echo $$ > {pids}; sleep 300 & echo $! >> {pids}; wait",
              target=SSH_ASSET),
        shell("never", f"touch {tmp_path / 'never'}", deps=["hold"], target=SSH_ASSET),
    ], timeouts={"heartbeat_timeout_seconds": 2})
    resp = await engine.execute(req, wait=False)

    async def remote_pids() -> list[int] | None:
        got = pids.read_text().split() if pids.exists() else []
        return [int(p) for p in got] if len(got) >= 2 else None

    pgid, sleeper = await wait_for(remote_pids, timeout=30, what="the remote command to start")
    try:
        assert alive(sleeper) and sleeper in group_members(pgid)
        assert [r["execution_id"] for r in await lock_rows(engine)] == [resp.execution_id]

        outcome = await engine.cancel(resp.execution_id, "bob", "wrong host")
        assert outcome.accepted, outcome.reason
        result = await asyncio.wait_for(engine.result(resp.execution_id), 60)
        assert result.status.value == "cancelled"
        assert {s.step_id: s.status.value for s in result.steps} == {
            "hold": "cancelled", "never": "skipped"}
        # the remote process group is gone: the shell and the backgrounded sleep
        assert await wait_group_gone(pgid) == []
        assert not alive(sleeper) and not alive(pgid)
        assert not (tmp_path / "never").exists()
    finally:
        kill_group(pgid)
    assert await lock_rows(engine) == []
    kinds = [e["event_type"] for e in await events(engine.pool, resp.execution_id)]
    for kind in ("locks.requested", "locks.acquired", "cancel.requested", "cancel.completed",
                 "locks.released"):
        assert kind in kinds, kinds
    assert kinds.index("locks.acquired") < kinds.index("cancel.requested") \
        < kinds.index("locks.released")


async def test_two_executions_on_one_ssh_asset_never_overlap(
        engine: Any, ssh_host: SshServer, ssh_inventory: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"

    def plan(name: str) -> dict[str, Any]:
        return request([
            shell("first", f"echo {name}-first-start >> {trace}; sleep 1; "
                           f"echo {name}-first-end >> {trace}", target=SSH_ASSET),
            shell("second", f"echo {name}-second >> {trace}", deps=["first"],
                  target=SSH_ASSET),
        ])

    a, b = await asyncio.gather(engine.execute(plan("a"), wait=False),
                                engine.execute(plan("b"), wait=False))
    results = await asyncio.wait_for(asyncio.gather(
        engine.result(a.execution_id), engine.result(b.execution_id)), 90)
    assert [r.status.value for r in results] == ["completed", "completed"]

    intervals = {}
    for resp in (a, b):
        rows = await step_rows(engine.pool, resp.execution_id)
        spans = [(r["started_at"], r["completed_at"]) for r in rows.values()]
        assert all(s is not None and e is not None and s <= e for s, e in spans)
        intervals[resp.execution_id] = spans
    for sa, ea in intervals[a.execution_id]:
        for sb, eb in intervals[b.execution_id]:
            assert ea <= sb or eb <= sa, f"steps overlap: {sa}..{ea} and {sb}..{eb}"
    # the remote side agrees: one execution's commands all ran before the other's
    seen = trace.read_text().split()
    first = seen[0].split("-")[0]
    other = "b" if first == "a" else "a"
    assert seen == [f"{first}-first-start", f"{first}-first-end", f"{first}-second",
                    f"{other}-first-start", f"{other}-first-end", f"{other}-second"]
    assert await lock_rows(engine) == []


async def test_an_asset_named_by_hostname_takes_the_same_lock_as_by_id(
        engine: Any, ssh_host: SshServer, ssh_inventory: Path, tmp_path: Path) -> None:
    pids, b_ran = tmp_path / "a-pids", tmp_path / "b-ran"
    a = await engine.execute(request(
        [shell("hold", f"echo $$ > {pids}; sleep 300", target=SSH_ASSET)],
        timeouts={"heartbeat_timeout_seconds": 2}), wait=False)

    async def a_pgid() -> int | None:
        text = pids.read_text().strip() if pids.exists() else ""
        return int(text) if text else None

    pgid = await wait_for(a_pgid, timeout=30, what="execution A's remote command")
    b = None
    try:
        b = await engine.execute(request(
            [shell("touch", f"touch {b_ran}", target="ssh-int.example.internal")]), wait=False)

        async def b_queued() -> list[str]:
            return [r["asset"] for r in await engine.pool.fetch(
                "SELECT asset FROM execution.execution_lock_waiters WHERE execution_id = $1",
                b.execution_id)]

        # B is visibly queued behind A for the very asset A holds (named by its hostname)
        assert await wait_for(b_queued, timeout=30, what="B to queue for A's lock") == [
            SSH_ASSET]
        assert not b_ran.exists(), "B ran on the host while A held it (by another name)"
        assert [r["asset"] for r in await engine.pool.fetch(
            "SELECT asset FROM execution.execution_locks WHERE execution_id = ANY($1::text[])",
            [a.execution_id, b.execution_id])] == [SSH_ASSET]
    finally:
        await engine.cancel(a.execution_id, "bob", "test over")
        await asyncio.wait_for(engine.result(a.execution_id), 60)
        if b is not None:
            await asyncio.wait_for(engine.result(b.execution_id), 60)
        kill_group(pgid)
