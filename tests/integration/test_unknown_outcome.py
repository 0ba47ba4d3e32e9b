"""The unknown-outcome guard with a real crash: a worker SUBPROCESS is killed with SIGKILL
while a step runs, a new worker takes over, and a step that is not idempotent is not run
again until an operator resolves it (skip, retry through the CLI, fail). An idempotent step
in the same situation is simply retried.

Real servers throughout: the session's Temporal dev server and PostgreSQL, `opsconductor
worker` as a child process, the `opsconductor resolve` CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from opsconductor.schema.config import Settings
from opsconductor.starter.client import ExecutionClient, ExecutionResponse
from opsconductor.starter.worker import build_worker
from tests.helpers import events, request, shell, step_rows, wait_for
from tests.integration.helpers import (
    kill_group,
    opsc_env,
    run_cli,
    start_worker,
    stop_process,
    wait_group_gone,
)
from tests.processes import alive

pytestmark = pytest.mark.asyncio(loop_scope="session")

TIMEOUTS = {"heartbeat_timeout_seconds": 2, "step_timeout_seconds": 30, "max_attempts": 2}


@dataclass
class Crash:
    """One isolated task queue, its client, and everything started for it (cleaned up)."""

    queue: str
    env: dict[str, str]
    client: ExecutionClient
    temporal: Client
    dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def counter(self) -> Path:
        return self.dir / "counter"

    @property
    def pidfile(self) -> Path:
        return self.dir / "pid"

    @property
    def after(self) -> Path:
        return self.dir / "after"

    def runs(self) -> int:
        return len(self.counter.read_text().split()) if self.counter.exists() else 0

    def command(self) -> str:
        """First run: write the shell's pid (= its process group) and hang; later runs finish."""
        c, p = self.counter, self.pidfile
        return (f'echo run >> {c}; n=$(wc -l < {c}); '
                f'if [ "$n" -eq 1 ]; then echo $$ > {p}; sleep 60; fi; echo done-$n')


@pytest.fixture
async def crash(engine: Any, temporal_client: Client, db_pool: Any, temporal_server: Any,
                migrated_pg: str, tmp_path: Path) -> AsyncIterator[Crash]:
    queue = f"opsc-uo-{uuid.uuid4().hex[:10]}"
    home = tmp_path / "home"
    home.mkdir()
    env = opsc_env(temporal_address=temporal_server.address, database_url=migrated_pg,
                   task_queue=queue, home=home)
    settings = Settings(home=home, task_queue=queue, temporal_address=temporal_server.address,
                        database_url=migrated_pg)
    c = Crash(queue=queue, env=env, temporal=temporal_client, dir=tmp_path,
              client=ExecutionClient(temporal=temporal_client, pool=db_pool, settings=settings))
    try:
        yield c
    finally:
        for proc in c.procs:
            stop_process(proc)
        if c.pidfile.exists():
            with contextlib.suppress(ValueError):
                c.groups.append(int(c.pidfile.read_text().split()[0]))
        for pgid in c.groups:
            kill_group(pgid)
        await c.stack.aclose()


async def crash_mid_step(c: Crash, *, idempotent: bool) -> tuple[ExecutionResponse, int]:
    """Run `act` (then `after`) on a worker subprocess, SIGKILL the worker while `act` runs,
    kill the step's orphaned process group, start a new (in-process) worker."""
    worker = start_worker(c.env, c.dir / "worker-1.log")
    c.procs.append(worker)
    req = request([shell("act", c.command(), idempotent=idempotent),
                   shell("after", f"echo after >> {c.after}", deps=["act"], idempotent=True)],
                  timeouts=TIMEOUTS)
    resp = await c.client.execute(req, wait=False)

    async def step_pid() -> int | None:
        text = c.pidfile.read_text().strip() if c.pidfile.exists() else ""
        return int(text) if text else None

    pid = await wait_for(step_pid, timeout=60, what="the step to start on the worker subprocess "
                     f"(log: {(c.dir / 'worker-1.log')})")
    c.groups.append(pid)
    assert alive(pid) and worker.poll() is None

    os.kill(worker.pid, signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 10)
    assert worker.returncode == -signal.SIGKILL
    # The step's supervisor stops its whole process group when the worker dies: nothing it
    # started runs on unsupervised, and the outcome is still unknown (it may have acted).
    assert await wait_group_gone(pid, timeout=15) == [], "the command outlived its worker"
    assert c.runs() == 1

    await c.stack.enter_async_context(build_worker(c.temporal, c.queue, pool=c.client.pool,
                                                   settings=c.client.settings))
    return resp, pid


async def waiting_for_resolution(c: Crash, resp: ExecutionResponse) -> Any:
    async def waiting() -> Any:
        p = await c.client.progress(resp.workflow_id)
        return p if p is not None and p.waiting_on and "unknown outcome" in p.waiting_on \
            else None

    return await wait_for(waiting, timeout=60, what="the execution to wait for a resolution")


async def assert_paused_without_rerun(c: Crash, resp: ExecutionResponse, pid: int) -> None:
    progress = await waiting_for_resolution(c, resp)
    assert progress.status.value == "running"
    steps = {s.id: s for s in progress.steps}
    assert steps["act"].status.value == "waiting"
    assert "outcome is unknown" in (steps["act"].error or "")
    assert steps["after"].status.value == "pending"

    async def unknown_events() -> list[Any]:
        evs = await events(c.client.pool, resp.execution_id)
        return [e for e in evs if e["event_type"] == "step.unknown_outcome"]

    # the query sees the pause at once; the mirror batch follows it
    unknown = await wait_for(unknown_events, timeout=15, what="a step.unknown_outcome event")
    assert len(unknown) == 1 and unknown[0]["step_id"] == "act"
    assert "never finished" in unknown[0]["message"]
    # not re-run: one run of the command, the pid file is the first run's
    assert c.runs() == 1
    assert c.pidfile.read_text().split() == [str(pid)]
    assert not c.after.exists()
    rows = await c.client.pool.fetch(
        "SELECT attempt, finished_at, outcome FROM execution.step_attempts "
        "WHERE execution_id = $1 AND step_id = 'act' ORDER BY attempt",
        uuid.UUID(resp.execution_id))
    assert [(r["attempt"], r["finished_at"], r["outcome"]) for r in rows] == [(1, None, None)]


async def final(c: Crash, resp: ExecutionResponse) -> Any:
    return await asyncio.wait_for(c.client.result(resp.execution_id), 60)


async def test_skip_after_a_crash_lets_dependents_run(crash: Crash) -> None:
    resp, pid = await crash_mid_step(crash, idempotent=False)
    await assert_paused_without_rerun(crash, resp, pid)

    outcome = await crash.client.resolve(resp.execution_id, "bob", "skip")
    assert outcome.accepted, outcome.reason
    result = await final(crash, resp)
    assert result.status.value == "completed", result
    by_id = {s.step_id: s.status.value for s in result.steps}
    assert by_id == {"act": "skipped", "after": "completed"}
    assert crash.runs() == 1 and crash.after.read_text().split() == ["after"]
    rows = await step_rows(crash.client.pool, resp.execution_id)
    assert rows["act"]["status"] == "skipped" and rows["after"]["status"] == "completed"
    kinds = [e["event_type"] for e in await events(crash.client.pool, resp.execution_id)]
    assert kinds.index("step.unknown_outcome") < kinds.index("step.resolved")


async def test_retry_through_the_cli_runs_the_step_again(crash: Crash) -> None:
    resp, pid = await crash_mid_step(crash, idempotent=False)
    await assert_paused_without_rerun(crash, resp, pid)

    cli = await run_cli(crash.env, "resolve", resp.execution_id, "--action", "retry",
                        "--actor", "bob", "--json")
    assert cli.code == 0, cli
    assert cli.json["accepted"] is True and "retry" in cli.json["reason"]
    result = await final(crash, resp)
    assert result.status.value == "completed", result
    by_id = {s.step_id: s for s in result.steps}
    assert by_id["act"].status.value == "completed"
    assert by_id["act"].stdout.strip() == "done-2"
    assert by_id["after"].status.value == "completed"
    assert crash.runs() == 2
    kinds = [e["event_type"] for e in await events(crash.client.pool, resp.execution_id)]
    assert "step.resolved" in kinds


async def test_fail_ends_the_run_failed_and_skips_dependents(crash: Crash) -> None:
    resp, pid = await crash_mid_step(crash, idempotent=False)
    await assert_paused_without_rerun(crash, resp, pid)

    outcome = await crash.client.resolve(resp.execution_id, "bob", "fail")
    assert outcome.accepted, outcome.reason
    result = await final(crash, resp)
    assert result.status.value == "failed", result
    by_id = {s.step_id: s.status.value for s in result.steps}
    assert by_id == {"act": "failed", "after": "skipped"}
    assert crash.runs() == 1 and not crash.after.exists()
    dlq = await crash.client.pool.fetch(
        "SELECT step_id FROM execution.execution_dlq WHERE execution_id = $1",
        uuid.UUID(resp.execution_id))
    assert [r["step_id"] for r in dlq] == ["act"]


async def test_resolve_is_refused_when_nothing_waits(crash: Crash) -> None:
    """`resolve` on a run with no unknown outcome is refused (exit 1), not silently taken."""
    await crash.stack.enter_async_context(build_worker(
        crash.temporal, crash.queue, pool=crash.client.pool, settings=crash.client.settings))
    resp = await crash.client.execute(request([shell("s", "echo fine")]), wait=True)
    assert resp.result is not None and resp.result.status.value == "completed"
    cli = await run_cli(crash.env, "resolve", resp.execution_id, "--action", "skip",
                        "--actor", "bob", "--json")
    assert cli.code == 1, cli
    assert cli.json["accepted"] is False


async def test_idempotent_step_is_simply_retried_after_a_crash(crash: Crash) -> None:
    resp, _ = await crash_mid_step(crash, idempotent=True)
    result = await final(crash, resp)
    assert result.status.value == "completed", result
    by_id = {s.step_id: s for s in result.steps}
    assert by_id["act"].status.value == "completed" and by_id["act"].attempts == 2
    assert by_id["act"].stdout.strip() == "done-2"
    assert by_id["after"].status.value == "completed"
    assert crash.runs() == 2
    evs = await events(crash.client.pool, resp.execution_id)
    assert not [e for e in evs if e["event_type"] in ("step.unknown_outcome", "step.resolved")]
    assert not [e for e in evs if e["to_status"] == "waiting"]


# ---------------------------------------------------------------------- honest records

async def test_skip_resolution_closes_the_crashed_attempt(crash: Crash) -> None:
    resp, pid = await crash_mid_step(crash, idempotent=False)
    await assert_paused_without_rerun(crash, resp, pid)
    assert (await crash.client.resolve(resp.execution_id, "bob", "skip")).accepted
    assert (await final(crash, resp)).status.value == "completed"
    rows = await crash.client.pool.fetch(
        "SELECT attempt, finished_at, outcome FROM execution.step_attempts "
        "WHERE execution_id = $1 AND step_id = 'act'", uuid.UUID(resp.execution_id))
    assert [(r["outcome"], r["finished_at"] is not None) for r in rows] == [
        ("resolved_skip", True)]


async def test_retry_leaves_an_honest_record(crash: Crash) -> None:
    resp, pid = await crash_mid_step(crash, idempotent=False)
    await assert_paused_without_rerun(crash, resp, pid)
    dead_worker = (await crash.client.pool.fetchval(
        "SELECT worker FROM execution.step_attempts WHERE execution_id = $1 AND step_id = 'act'",
        uuid.UUID(resp.execution_id)))
    assert (await crash.client.resolve(resp.execution_id, "bob", "retry")).accepted
    result = await final(crash, resp)
    act = next(s for s in result.steps if s.step_id == "act")
    assert act.status.value == "completed"
    row = (await step_rows(crash.client.pool, resp.execution_id))["act"]
    assert (act.error, row["error"]) == (None, None)
    assert act.attempts >= 2 and row["attempts"] >= 2
    rows = await crash.client.pool.fetch(
        "SELECT worker, outcome, resolved_by FROM execution.step_attempts "
        "WHERE execution_id = $1 AND step_id = 'act' ORDER BY attempt",
        uuid.UUID(resp.execution_id))
    assert (rows[0]["worker"], rows[0]["outcome"]) == (dead_worker, "resolved_retry")
    assert rows[0]["resolved_by"] == "bob"  # the operator who answered, not the requester
    assert rows[-1]["outcome"] == "succeeded"
    evs = await events(crash.client.pool, resp.execution_id)
    resolved = next(i for i, e in enumerate(evs) if e["event_type"] == "step.resolved")
    retry_started = max(i for i, e in enumerate(evs) if e["step_id"] == "act"
                        and e["event_type"] == "step.status" and e["to_status"] == "running")
    # the answer is recorded before the retry's own records, in the order it happened
    assert resolved < retry_started
    assert evs[resolved]["actor"] == "bob"
