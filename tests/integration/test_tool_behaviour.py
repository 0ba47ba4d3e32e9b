"""The CLI as a new user tries it: `run` waits in immediate mode, a decision with no worker
falls back to the signal, `health` tells a missing worker from an unreachable server, bad
`--status` values and closed pipes are handled, and nothing a caller wrote can drive the
terminal. Real `opsconductor` subprocesses against the session's servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from tests.helpers import request, shell, step, unique_queue, wait_for
from tests.integration.helpers import OPSCONDUCTOR, Cli, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")

ESC = "\x1b"
HOSTILE_TITLE = f"{ESC}[2J{ESC}[31mrestart{ESC}[0m\r\nforged: all clear"
HOSTILE_DESCRIPTION = f"{ESC}]0;owned{chr(7)}check disk\rforged step"
HOSTILE_COMMENT = f"no{ESC}[8m hidden\r\nforged: approved"


@pytest.fixture
def idle_env(env: dict[str, str]) -> dict[str, str]:
    """The same servers, but a task queue no worker polls."""
    return {**env, "OPSC_TASK_QUEUE": unique_queue("opsc-idle")}


@pytest.fixture
def tenant() -> str:
    return f"tb-{uuid.uuid4().hex[:10]}"


def write(tmp_path: Path, name: str, doc: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def assert_no_raw_controls(cli: Cli) -> None:
    """Every control character a caller wrote is shown escaped, never emitted."""
    for stream in (cli.stdout, cli.stderr):
        assert ESC not in stream and "\r" not in stream and chr(7) not in stream, repr(stream)
        assert not any(line.startswith("forged") for line in stream.splitlines()), stream


# ---------------------------------------------------------------------- run waits

async def test_run_waits_for_the_result_in_immediate_mode(env: dict[str, str], tenant: str,
                                                          tmp_path: Path) -> None:
    fast = request([shell("quick", "echo quick-result")], tenant=tenant)
    cli = await run_cli(env, "run", write(tmp_path, "fast.json", fast), "--json")
    assert cli.code == 0, cli
    assert cli.json["mode"] == "immediate"
    assert cli.json["status"] == "completed", cli
    assert cli.json["result"]["steps"][0]["stdout"].strip() == "quick-result"

    text = await run_cli(env, "run", write(tmp_path, "fast2.json", request(
        [shell("quick", "echo again")], tenant=tenant)))
    assert text.code == 0 and "completed" in text.stdout, text


async def test_run_no_wait_returns_at_once_even_in_immediate_mode(
        engine: Any, env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    held = request([shell("held", f"while [ ! -e {go} ]; do sleep 0.05; done; echo went")],
                   tenant=tenant)
    cli = await run_cli(env, "run", write(tmp_path, "held.json", held), "--no-wait", "--json")
    assert cli.code == 0, cli
    assert cli.json["mode"] == "immediate" and cli.json["result"] is None
    assert cli.json["status"] in ("queued", "running")
    go.touch()

    async def completed() -> bool:
        return bool((await engine.status(cli.json["execution_id"]))["status"] == "completed")

    await wait_for(completed, timeout=60, what="the held execution to complete")


# ---------------------------------------------------------------------- no worker

async def test_a_decision_with_no_worker_is_sent_as_the_signal(
        idle_env: dict[str, str], tenant: str, tmp_path: Path,
        temporal_client: Client) -> None:
    gated = request([shell("gated", "echo gated")], tenant=tenant, environment="staging")
    cli = await run_cli(idle_env, "run", write(tmp_path, "gated.json", gated),
                        "--approval-level", "1", "--mode", "background", "--json")
    assert cli.code == 0, cli
    handle = temporal_client.get_workflow_handle(cli.json["workflow_id"])
    try:
        approve = await run_cli(idle_env, "approve", cli.json["execution_id"], "--approver",
                                "bob", "--update-wait", "1.5", "--json", timeout=60)
        assert approve.code == 0, approve
        assert "Traceback" not in approve.stderr
        assert approve.json["via_signal"] is True and approve.json["accepted"] is True
        assert "'approve' signal" in approve.json["reason"]

        cancel = await run_cli(idle_env, "cancel", cli.json["workflow_id"], "--reason", "later",
                               "--actor", "bob", "--update-wait", "1.5", timeout=60)
        assert cancel.code == 0, cancel
        assert cancel.stdout.startswith("sent: "), cancel
        assert "will be judged when a worker runs" in cancel.stdout
        assert "Traceback" not in cancel.stderr

        history = await handle.fetch_history()
        signals = [e.workflow_execution_signaled_event_attributes.signal_name
                   for e in history.events
                   if e.HasField("workflow_execution_signaled_event_attributes")]
        assert signals == ["approve", "cancel"]
    finally:
        await handle.terminate("test over")


# ---------------------------------------------------------------------- health / list / pipes

async def test_health_tells_a_missing_worker_from_an_unreachable_server(
        env: dict[str, str], idle_env: dict[str, str]) -> None:
    queue = idle_env["OPSC_TASK_QUEUE"]
    idle = await run_cli(idle_env, "health")
    assert idle.code == 1, idle
    assert f"no worker polling {queue}" in idle.stdout
    as_json = await run_cli(idle_env, "health", "--json")
    assert as_json.code == 1
    checks = {k: v["ok"] for k, v in as_json.json.items()}
    assert {k: checks[k] for k in ("postgres", "temporal", "workers")} == {
        "postgres": True, "temporal": True, "workers": False}

    # `--worker`: a worker of this host polls (the session's, in this process) — or not.
    mine = await run_cli(env, "health", "--worker", "--json")
    assert mine.code == 0, mine
    assert "this host" in mine.json["workers"]["detail"]
    assert (await run_cli(idle_env, "health", "--worker")).code == 1


async def test_list_refuses_an_unknown_status_naming_the_valid_ones(
        env: dict[str, str]) -> None:
    cli = await run_cli(env, "list", "--status", "bogus")
    assert cli.code == 2, cli
    assert "bogus" in cli.stderr
    for valid in ("pending_approval", "running", "completed", "cancelled"):
        assert valid in cli.stderr
    assert "Traceback" not in cli.stderr
    ok = await run_cli(env, "list", "--status", "completed", "--limit", "1", "--json")
    assert ok.code == 0, ok


async def test_a_closed_pipe_is_not_a_traceback(env: dict[str, str]) -> None:
    """`opsconductor list | head -1`: the reader is gone before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            OPSCONDUCTOR, "list", "--limit", "200", env=env, stdout=write_end,
            stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert "Traceback" not in err.decode() and "BrokenPipe" not in err.decode(), err.decode()
    assert proc.returncode == 0


# ---------------------------------------------------------------------- terminal safety

async def test_caller_text_never_reaches_the_terminal_raw(
        engine: Any, env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    hostile = request([step("look", "shell", command="echo hi",
                            description=HOSTILE_DESCRIPTION)],
                      tenant=tenant, environment="staging",
                      metadata={"title": HOSTILE_TITLE})
    cli = await run_cli(env, "run", write(tmp_path, "hostile.json", hostile),
                        "--approval-level", "1", "--mode", "background", "--json")
    assert cli.code == 0, cli
    eid = cli.json["execution_id"]

    async def pending_for_bob() -> Cli | None:
        out = await run_cli(env, "pending", "--approver", "bob")
        return out if eid in out.stdout else None

    pending = await wait_for(pending_for_bob, timeout=30, interval=0.2, what="pending row")
    assert_no_raw_controls(pending)
    assert "\\x1b[31mrestart" in pending.stdout and "\\r\\nforged" in pending.stdout

    listed = await run_cli(env, "list", "--tenant", tenant)
    assert listed.code == 0 and eid in listed.stdout
    assert_no_raw_controls(listed)
    assert "\\x1b[2J" in listed.stdout

    status = await run_cli(env, "status", eid)
    assert status.code == 0, status
    assert_no_raw_controls(status)
    assert "\\x1b]0;owned\\x07check disk\\rforged step" in status.stdout

    rejected = await run_cli(env, "reject", eid, "--approver", "bob", "--comment",
                             HOSTILE_COMMENT)
    assert rejected.code == 0, rejected
    assert_no_raw_controls(rejected)

    watched = await run_cli(env, "watch", eid)
    assert watched.code == 1 and "rejected" in watched.stdout, watched
    assert_no_raw_controls(watched)
    assert "\\x1b]0;owned" in watched.stdout

    final = await run_cli(env, "status", eid)
    assert "rejected" in final.stdout
    assert_no_raw_controls(final)
    assert "\\x1b[8m hidden\\r\\nforged: approved" in final.stdout
