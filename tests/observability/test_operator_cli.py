"""Operator commands over the mirror: `stats`, `history ASSET`, `list` filters with a cursor,
run as the real `opsconductor` binary against the test session's servers."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_eventually, request, shell, step, until
from tests.integration.helpers import opsc_env, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def env(engine: Any, temporal_server: Any, pg_url: str, tmp_path: Path) -> dict[str, str]:
    return opsc_env(temporal_address=temporal_server.address, database_url=pg_url,
                    task_queue=engine.settings.task_queue, home=tmp_path / "home")


async def test_stats_history_and_list_filters(engine: Any, env: dict[str, str]) -> None:
    tenant = f"stats-{uuid.uuid4().hex[:6]}"
    ok = [await engine.execute(request([shell("a", "echo ok", target="localhost"),
                                        step("b", deps=["a"])], tenant=tenant), wait=True)
          for _ in range(3)]
    bad = await engine.execute(request([shell("a", "exit 4", target="localhost")],
                                       tenant=tenant, actor="carol",
                                       timeouts={"max_attempts": 1}), wait=True)
    assert bad.result.status.value == "failed"

    got = await run_cli(env, "stats", "--since", "1h", "--tenant", tenant, "--json")
    assert got.code == 0, got
    s = got.json
    assert (s["submitted"], s["ended"], s["completed"], s["failed"]) == (4, 4, 3, 1)
    assert s["success_rate"] == 0.75 and s["sla_compliance"] == 1.0
    shell_row = next(r for r in s["by_tool"] if r["tool"] == "shell")
    assert shell_row["steps"] == 4 and shell_row["failed"] == 1
    assert shell_row["p50"] is not None and shell_row["p99"] >= shell_row["p50"]
    assert sum(r["ended"] for r in s["by_sla_class"]) == 4
    assert s["waits_seconds"]["queue_p50"] >= 0
    assert s["top_failing_tools"] == [{"kind": "tool", "name": "shell", "failures": 1}]
    text = await run_cli(env, "stats", "--since", "1h", "--tenant", tenant)
    assert text.code == 0 and "success rate 75.0%" in text.stdout, text
    assert (await run_cli(env, "stats", "--since", "yesterday")).code == 2

    hist = await run_cli(env, "history", "localhost", "--json", "--limit", "500")
    assert hist.code == 0, hist
    mine = [r for r in hist.json if r["tenant"] == tenant]
    assert {r["execution_id"] for r in mine} == {r.execution_id for r in [*ok, bad]}

    first = await run_cli(env, "list", "--json", "--tenant", tenant, "--limit", "3")
    assert first.code == 0 and len(first.json) == 3, first
    cursor = first.stderr.split("--cursor ", 1)[1].split()[0]
    second = await run_cli(env, "list", "--json", "--tenant", tenant, "--cursor", cursor)
    assert [r["execution_id"] for r in second.json] == [ok[0].execution_id]
    by_actor = await run_cli(env, "list", "--json", "--tenant", tenant, "--actor", "carol",
                             "--status", "failed")
    assert [r["execution_id"] for r in by_actor.json] == [bad.execution_id]
    refused = await run_cli(env, "list", "--status", "finished")
    assert refused.code == 2, refused


async def test_health_reports_executions_without_progress(engine: Any,
                                                          env: dict[str, str]) -> None:
    resp = await engine.execute(request([shell("quiet", "sleep 4")]), wait=False)
    quiet_env = {**env, "OPSC_STALL_SECONDS": "1"}

    async def stalled() -> Any:
        cli = await run_cli(quiet_env, "health", "--json")
        assert cli.code == 0, cli  # reported, not an exit status
        progress = cli.json["progress"]
        assert not progress["ok"], progress
        assert resp.execution_id in [s["execution_id"] for s in progress["stalled"]], progress
        return progress

    found = await assert_eventually(stalled, what="the quiet execution to be reported",
                                    timeout=15)
    assert "without progress for over 1s" in found["detail"]
    await engine.result(resp.execution_id)
    done = await run_cli(quiet_env, "health", "--json")
    assert resp.execution_id not in [s["execution_id"]
                                     for s in done.json["progress"].get("stalled", [])]


async def test_health_reports_activities_being_retried(engine: Any,
                                                       env: dict[str, str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on: every attempt is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resp = await engine.execute(request(
        [step("call", "http_request", url=f"http://127.0.0.1:{port}/status", method="GET")],
        timeouts={"max_attempts": 10}), wait=False)

    async def retried() -> Any:
        cli = await run_cli(env, "health", "--json")
        assert cli.code == 0, cli  # reported, not an exit status
        mine = [r for r in cli.json["retrying"].get("retrying", [])
                if r["workflow_id"] == resp.workflow_id]
        assert mine and mine[0]["attempt"] >= 2, cli.json["retrying"]
        return mine[0]

    found = await assert_eventually(retried, what="the failing call to be reported", timeout=30)
    assert found["activity"] == "run_step" and found["last_failure"], found
    await engine.cancel(resp.execution_id, actor="alice", reason="test over")
    await engine.result(resp.execution_id)


@pytest.mark.faults
async def test_a_mirror_that_keeps_failing_shows_in_health_and_then_catches_up(
        engine: Any, env: dict[str, str], tmp_path: Path) -> None:
    go = tmp_path / "go"
    resp = await engine.execute(request([shell("a", f"while [ ! -e {go} ]; do sleep 0.05;"
                                                     " done")]), wait=False)
    await until(engine, resp.workflow_id, lambda p: p.steps_running == 1)
    async with engine.pool.acquire() as conn, conn.transaction():
        # the execution's row stays locked: its final mirror batch fails (lock timeout)
        # (NO KEY UPDATE: the step's own rows, which reference it, are still written)
        await conn.execute("SELECT 1 FROM execution.executions WHERE execution_id = $1"
                           " FOR NO KEY UPDATE", uuid.UUID(resp.execution_id))
        go.touch()

        async def retried() -> Any:
            cli = await run_cli(env, "health", "--json")
            mine = [r for r in cli.json["retrying"].get("retrying", [])
                    if r["workflow_id"] == resp.workflow_id]
            assert mine and mine[0]["activity"] == "mirror_write", cli.json["retrying"]
            return mine[0]

        found = await assert_eventually(retried, what="the failing mirror batch in health",
                                        timeout=90)
        assert "lock timeout" in found["last_failure"], found
        print(f"\nmirror blocked: health shows {found['activity']} on attempt "
              f"{found['attempt']}: {found['last_failure'][:60]}")
    result = await asyncio.wait_for(engine.result(resp.execution_id), 60)
    assert result.status.value == "completed"
    row = await engine.pool.fetchrow("SELECT status::text, completed_at FROM"
                                     " execution.executions WHERE execution_id = $1",
                                     uuid.UUID(resp.execution_id))
    assert row["status"] == "completed" and row["completed_at"] is not None


async def test_tenant_filters_and_dlq_discard(engine: Any, env: dict[str, str]) -> None:
    tenant = f"dlq-{uuid.uuid4().hex[:6]}"
    failed = await engine.execute(request([shell("a", "exit 5")], tenant=tenant,
                                          timeouts={"max_attempts": 1}), wait=True)
    waiting = await engine.execute(request([step("a")], tenant=tenant, approval_level=1,
                                           environment="staging"), wait=False)
    listed = await run_cli(env, "dlq", "list", "--json", "--tenant", tenant)
    assert listed.code == 0, listed
    (entry,) = listed.json
    assert entry["execution_id"] == failed.execution_id and entry["tenant"] == tenant
    assert (await run_cli(env, "dlq", "list", "--json", "--tenant", f"{tenant}-x")).json == []

    async def pending_listed() -> Any:
        got = await run_cli(env, "pending", "--json", "--tenant", tenant)
        assert [r["execution_id"] for r in got.json] == [waiting.execution_id], got
        return got

    await assert_eventually(pending_listed, what="the waiting execution", timeout=20)
    assert (await run_cli(env, "pending", "--json", "--tenant", f"{tenant}-x")).json == []

    gone = await run_cli(env, "dlq", "discard", str(entry["id"]), "--actor", "bob", "--json")
    assert gone.code == 0 and gone.json == {"discarded": 1}, gone
    assert (await run_cli(env, "dlq", "list", "--json", "--tenant", tenant)).json == []
    every = (await run_cli(env, "dlq", "list", "--all", "--json", "--tenant", tenant)).json
    assert [(e["status"], e["requeued_by"]) for e in every] == [("discarded", "bob")]
    again = await run_cli(env, "dlq", "discard", str(entry["id"]), "--actor", "bob")
    assert again.code == 1, again
    assert (await run_cli(env, "dlq", "discard", "999999999")).code == 3
    assert (await engine.cancel(waiting.execution_id, "alice", "test done")).accepted


async def test_dead_letters_close_when_a_later_run_of_the_plan_succeeds(
        engine: Any, env: dict[str, str], tmp_path: Path) -> None:
    tenant = f"heal-{uuid.uuid4().hex[:6]}"
    ready = tmp_path / "ready"
    req = request([shell("a", f"test -e {ready}")], tenant=tenant, unique=False,
                  timeouts={"max_attempts": 1})
    first = await engine.execute(req, wait=True)
    assert first.result.status.value == "failed"
    (entry,) = (await run_cli(env, "dlq", "list", "--json", "--tenant", tenant)).json
    ready.touch()
    second = await engine.execute(req, wait=True)
    assert second.execution_id != first.execution_id
    assert second.result.status.value == "completed"
    assert (await run_cli(env, "dlq", "list", "--json", "--tenant", tenant)).json == []
    (closed,) = (await run_cli(env, "dlq", "list", "--all", "--json", "--tenant",
                               tenant)).json
    assert closed["id"] == entry["id"] and closed["status"] == "resolved"
    assert closed["requeued_execution_id"] == second.execution_id


async def test_partial_run_dead_letters_its_failed_steps(engine: Any,
                                                         env: dict[str, str]) -> None:
    tenant = f"partial-{uuid.uuid4().hex[:6]}"
    resp = await engine.execute(request(
        [shell("a", "echo fine"), shell("b", "exit 6", failure_handling="continue")],
        tenant=tenant, timeouts={"max_attempts": 1}), wait=True)
    assert resp.result.status.value == "partial"
    listed = (await run_cli(env, "dlq", "list", "--json", "--tenant", tenant)).json
    assert [(e["execution_id"], e["step_id"]) for e in listed] == [(resp.execution_id, "b")]
