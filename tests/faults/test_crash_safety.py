"""Crash safety under real faults: whatever dies, no command runs twice unasked and none runs
unsupervised.

Real processes and servers of the suite's own (the session's shared ones are never touched):
an embedded PostgreSQL stopped and started, a Temporal dev server on a SQLite file stopped and
started on the same port, `opsconductor worker` subprocesses killed with `kill -9` or drained
with SIGTERM. Every step command appends its shell's pid (= its process group) to a file and,
before that, records any group of an earlier attempt that is still alive (a "leftover"); its
side effect is one line appended at its very end. An operator (this test) answers a paused
step with `retry` only when no effect happened, else `skip`, and that is counted.

Each scenario prints its counts. Defaults fit about four minutes on a 2-core machine; the
full counts run with `OPSC_FAULT_COUNTS=kill9=10,sigterm=5,temporal=5,postgres=5`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from opsconductor.schema.config import Settings
from opsconductor.schema.migrate import migrate
from opsconductor.schema.payloads import DATA_CONVERTER
from opsconductor.starter.client import ExecutionClient, ExecutionResponse
from opsconductor.starter.embedded_postgres import EmbeddedPostgres
from opsconductor.starter.temporal_server import TemporalDevServer
from tests.executors.conftest import SshServer, openssh_server, secret_env_name
from tests.faults.helpers import fault_counts
from tests.helpers import request, shell, wait_for
from tests.integration.helpers import opsc_env, start_worker, stop_process, wait_group_gone
from tests.processes import group_members, shell_leftover_check

pytestmark = [pytest.mark.faults, pytest.mark.asyncio(loop_scope="session")]

T = TypeVar("T")
DEFAULT_COUNTS = {"kill9": 6, "sigterm": 3, "temporal": 4, "postgres": 3}
DRAIN_SECONDS = 3.0
TIMEOUTS = {"heartbeat_timeout_seconds": 2, "step_timeout_seconds": 30, "max_attempts": 3}
ASSETS = ("fault-host-a", "fault-host-b")  # locked per execution: two run side by side
FLEET = tuple(f"fault-fleet-{i}" for i in range(6))  # a fleet step's targets
SSH_ASSET = "fault-ssh"  # the suite's own sshd on loopback: a remote target
SSH_KEY_SECRET = "faults/ssh/key"
OPERATOR = "bob"


# Rounds per scenario; test_restarts.py's `restart*` entries are its own.
COUNTS = fault_counts(DEFAULT_COUNTS, theirs=lambda name: name.startswith("restart"))


@dataclass
class Tally:
    """What one scenario saw; printed, and asserted to hold the safety promises."""

    name: str
    faults: int = 0
    executions: int = 0
    completed: int = 0
    pauses: int = 0
    operator_retries: int = 0
    operator_skips: int = 0
    recovered_results: int = 0
    repeated_without_retry: int = 0
    leftovers_at_next_attempt: int = 0
    alive_after_run: int = 0
    locks_after_run: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"[faults] {self.name}: {self.faults} faults, {self.executions} executions, "
                f"{self.completed} completed, {self.pauses} paused for an operator "
                f"({self.operator_retries} retry, {self.operator_skips} skip), "
                f"{self.recovered_results} recorded results returned instead of a re-run, "
                f"{self.repeated_without_retry} effects repeated without an operator's retry, "
                f"{self.leftovers_at_next_attempt} dead-attempt processes alive at the next "
                f"attempt, {self.alive_after_run} alive after the run, "
                f"{self.locks_after_run} locks held after the run")

    def check(self) -> None:
        assert self.completed == self.executions, self.line()
        assert self.repeated_without_retry == 0, self.line()
        assert self.leftovers_at_next_attempt == 0, self.line()
        assert self.alive_after_run == 0, self.line()
        assert self.locks_after_run == 0, self.line()


@dataclass
class Rig:
    """The suite's own servers, its client, and the workers it started."""

    dir: Path
    pg: EmbeddedPostgres
    temporal_server: TemporalDevServer
    env: dict[str, str]
    client: ExecutionClient
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker(self) -> subprocess.Popen[bytes]:
        proc = start_worker(self.env, self.dir / f"worker-{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]

    async def ready(self, proc: subprocess.Popen[bytes]) -> None:
        log = self.dir / f"worker-{self.workers.index(proc)}.log"
        await wait_for(lambda: proc.poll() is None and log.exists()
                       and "worker polling" in log.read_text(errors="replace"),
                       timeout=60, what=f"worker {proc.pid} to poll (log {log})")

    async def db(self, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """A read of the suite's own, retried while PostgreSQL is being restarted."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return await fn(self.client.pool)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                    asyncpg.OperatorInterventionError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    d = tmp_path_factory.mktemp("faults")
    pg = EmbeddedPostgres(d / "pg")
    url = await asyncio.to_thread(pg.start)
    temporal = TemporalDevServer(headless=True, db_file=d / "temporal.sqlite",
                                 log_file=d / "temporal.log")
    await asyncio.to_thread(temporal.start)
    pool: asyncpg.Pool | None = None
    rig: Rig | None = None
    stack = contextlib.ExitStack()
    try:
        await migrate(url)
        from opsconductor.activities.db import create_pool

        pool = await create_pool(url, min_size=1, max_size=5)
        sshd = stack.enter_context(openssh_server(d / "sshd", password_auth=False))
        ssh_key = {secret_env_name(SSH_KEY_SECRET): (d / "sshd" / "client_key").read_text()}
        ssh_asset = SshServer(host="127.0.0.1", port=sshd[0], dir=d / "sshd",
                              user=pwd.getpwuid(os.geteuid()).pw_name, client_key="",
                              known_hosts=d / "sshd" / "known_hosts",
                              empty_known_hosts=d / "sshd" / "empty_known_hosts",
                              password_user=None, password=None, log=sshd[1]).asset(
            id=SSH_ASSET, hostname=SSH_ASSET,
            credentials={"private_key": {"type": "secret", "path": SSH_KEY_SECRET}})
        inventory = d / "inventory.json"
        inventory.write_text(json.dumps({"assets": [
            *({"id": a, "hostname": a, "connector": "local"} for a in ASSETS + FLEET),
            ssh_asset]}))
        queue = f"opsc-faults-{uuid.uuid4().hex[:8]}"
        home = d / "home"
        home.mkdir()
        env = opsc_env(temporal_address=temporal.address, database_url=url, task_queue=queue,
                       home=home, OPSC_INVENTORY=str(inventory),
                       OPSC_GRACEFUL_SHUTDOWN_SECONDS=str(DRAIN_SECONDS), **ssh_key)
        settings = Settings(home=home, task_queue=queue, temporal_address=temporal.address,
                            database_url=url, inventory=inventory)
        temporal_client = await Client.connect(temporal.address,
                                               data_converter=DATA_CONVERTER)
        rig = Rig(dir=d, pg=pg, temporal_server=temporal, env=env,
                  client=ExecutionClient(temporal=temporal_client, pool=pool,
                                         settings=settings, update_wait_seconds=10))
        with pytest.MonkeyPatch.context() as mp:  # the submitter resolves targets too
            mp.setenv("OPSC_INVENTORY", str(inventory))
            yield rig
    finally:
        if rig is not None:
            for proc in rig.workers:
                stop_process(proc)
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
        await asyncio.to_thread(temporal.stop)
        await asyncio.to_thread(pg.discard)
        stack.close()


# ------------------------------------------------------------------------- one execution

@dataclass
class Run:
    """One execution: its own files for pids, leftovers and effects per step."""

    dir: Path
    resp: ExecutionResponse | None = None

    def command(self, sid: str, seconds: float) -> str:
        pids, effects, leftovers = (self.dir / f"{sid}.pids", self.dir / f"{sid}.effects",
                                    self.dir / f"{sid}.leftovers")
        return (f"{shell_leftover_check(pids, leftovers)}; echo $$ >> {pids}; "
                f"sleep {seconds}; echo done >> {effects}")

    def lines(self, sid: str, kind: str) -> list[str]:
        path = self.dir / f"{sid}.{kind}"
        return path.read_text().split() if path.exists() else []

    def started(self, sid: str, n: int = 1) -> bool:
        return len(self.lines(sid, "pids")) >= n

    def has(self, sid: str, kind: str) -> Callable[[], bool]:
        """A condition for `wait_for`: the step's file of `kind` has a line."""
        return lambda: bool(self.lines(sid, kind))


def new_run(rig: Rig, name: str) -> Run:
    d = rig.dir / "runs" / f"{name}-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    return Run(d)


async def submit(rig: Rig, run: Run, steps: list[tuple[str, float, bool]],
                 asset: str = ASSETS[0]) -> Run:
    """Steps (id, seconds, idempotent) in a chain, all on `asset` (locked by the run)."""
    plan = []
    for i, (sid, seconds, idempotent) in enumerate(steps):
        plan.append(shell(sid, run.command(sid, seconds), deps=[steps[i - 1][0]] if i else None,
                          target=asset, idempotent=idempotent))
    run.resp = await rig.client.execute(request(plan, timeouts=TIMEOUTS), wait=False)
    return run


async def _progress(rig: Rig, workflow_id: str) -> Any:
    with contextlib.suppress(Exception):
        return await asyncio.wait_for(rig.client.progress(workflow_id), 5)
    return None


async def finish(rig: Rig, run: Run, tally: Tally, *, timeout: float = 120) -> None:
    """Drive the execution to its end as an operator would, then check what it left."""
    assert run.resp is not None
    handle = rig.client.temporal.get_workflow_handle(run.resp.workflow_id)
    answered: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"execution {run.resp.execution_id} did not end"
        try:
            desc = await asyncio.wait_for(handle.describe(), 5)
        except Exception:
            await asyncio.sleep(0.3)
            continue
        if desc.status != WorkflowExecutionStatus.RUNNING:
            break
        progress = await _progress(rig, run.resp.workflow_id)
        if progress is not None and progress.waiting_on and "unknown outcome" in \
                progress.waiting_on:
            sid = next((s.id for s in progress.steps if s.status.value == "waiting"), "")
            key = f"{sid}:{len(run.lines(sid, 'pids'))}"
            if sid and key not in answered:
                answered.add(key)
                tally.pauses += 1
                action = "skip" if run.lines(sid, "effects") else "retry"
                tally.operator_retries += action == "retry"
                tally.operator_skips += action == "skip"
                outcome = await rig.client.resolve(run.resp.workflow_id, OPERATOR, action)
                assert outcome.accepted, outcome.reason
        await asyncio.sleep(0.3)
    tally.executions += 1
    status = await rig.db(lambda pool: pool.fetchval(
        "SELECT status::text FROM execution.executions WHERE execution_id = $1",
        uuid.UUID(run.resp.execution_id)))
    if desc.status == WorkflowExecutionStatus.COMPLETED and status == "completed":
        tally.completed += 1
    else:
        tally.notes.append(f"{run.resp.execution_id}: temporal {desc.status}, mirror {status}")
    await audit(rig, run, tally)


async def audit(rig: Rig, run: Run, tally: Tally) -> None:
    """Effects, processes and locks the execution left behind."""
    assert run.resp is not None
    for path in sorted(run.dir.glob("*.pids")):
        sid = path.stem
        # The operator retries only a step with no effect, so a second effect is a repeat.
        tally.repeated_without_retry += max(0, len(run.lines(sid, "effects")) - 1)
        tally.leftovers_at_next_attempt += len(run.lines(sid, "leftovers"))
        for pgid in (int(p) for p in run.lines(sid, "pids")):
            if await wait_group_gone(pgid, timeout=5):
                tally.alive_after_run += 1
    locks = await rig.db(lambda pool: pool.fetchval(
        "SELECT count(*) FROM execution.execution_locks WHERE execution_id = $1",
        run.resp.execution_id if run.resp else ""))
    tally.locks_after_run += int(locks or 0)
    recovered = await rig.db(lambda pool: pool.fetchval(
        "SELECT count(*) FROM execution.event_log WHERE execution_id = $1 "
        "AND event_type = 'step.recovered'", uuid.UUID(run.resp.execution_id) if run.resp
        else None))
    tally.recovered_results += int(recovered or 0)


def report(tally: Tally, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\n" + tally.line() + "".join(f"\n  note: {n}" for n in tally.notes))
    tally.check()


async def one_worker(rig: Rig) -> subprocess.Popen[bytes]:
    """Exactly one polling worker (the others are stopped), so we know who runs a step."""
    live = rig.live_workers()
    for proc in live[1:]:
        stop_process(proc, signal.SIGKILL)
    worker = live[0] if live else rig.worker()
    await rig.ready(worker)
    return worker


# ------------------------------------------------------------------------------ scenarios

async def test_worker_kill_9_mid_step(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """Per round one `kill -9` while three steps run on the worker — non-idempotent, idempotent,
    and non-idempotent over SSH: the commands die with the worker (locally by their
    supervisor, remotely when the SSH channel goes); the non-idempotent ones pause and run
    again only on an operator's retry; the idempotent one is simply retried."""
    tally = Tally("worker kill -9 mid-step")
    for _ in range(COUNTS["kill9"]):
        worker = await one_worker(rig)
        runs = [await submit(rig, new_run(rig, "k9-n"), [("act", 2, False), ("after", 0, True)]),
                await submit(rig, new_run(rig, "k9-i"), [("act", 2, True), ("after", 0, True)],
                             ASSETS[1]),
                await submit(rig, new_run(rig, "k9-ssh"), [("act", 2, False)], SSH_ASSET)]
        await wait_for(lambda rs=runs: all(r.started("act") for r in rs), timeout=60,
                       what="both steps to start on the worker")
        replacement = rig.worker()
        os.kill(worker.pid, signal.SIGKILL)
        tally.faults += 1
        await asyncio.to_thread(worker.wait, 10)
        for r in runs:  # the supervisor, not this test, stops the dead worker's commands
            pgid = int(r.lines("act", "pids")[0])
            survivors = await wait_group_gone(pgid, timeout=10)
            tally.leftovers_at_next_attempt += len(survivors)
        await rig.ready(replacement)
        await asyncio.gather(*(finish(rig, r, tally) for r in runs))
        effects = [len(r.lines("act", "effects")) for r in runs]
        # the non-idempotent steps acted exactly once; the idempotent one at least once (a
        # kill that lands after its effect makes Temporal's retry act again, as it may)
        assert effects[0] == effects[2] == 1 and effects[1] >= 1, effects
    report(tally, capsys)
    # only the non-idempotent ones paused; the operator retries one that had not acted yet
    # and skips one whose effect happened before the kill
    assert 0 < tally.pauses <= 2 * COUNTS["kill9"]
    assert tally.operator_retries + tally.operator_skips == tally.pauses


async def test_worker_sigterm_drains(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM mid-step: a step shorter than the drain bound finishes on the draining worker
    and nothing pauses; a longer one is stopped at the bound and pauses for an operator."""
    tally = Tally(f"worker SIGTERM mid-step (drain bound {DRAIN_SECONDS:g}s)")
    for _ in range(COUNTS["sigterm"]):
        worker = await one_worker(rig)
        short = await submit(rig, new_run(rig, "term-short"), [("act", 1, False)])
        long = await submit(rig, new_run(rig, "term-long"),
                            [("act", DRAIN_SECONDS + 4, False)], ASSETS[1])
        await wait_for(lambda rs=(short, long): all(r.started("act") for r in rs), timeout=60,
                       what="both steps to start on the worker")
        replacement = rig.worker()
        began = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        tally.faults += 1
        await asyncio.to_thread(worker.wait, DRAIN_SECONDS + 20)
        drained = time.monotonic() - began
        tally.notes.append(f"worker exited {worker.returncode} after {drained:.1f}s")
        assert short.lines("act", "effects") == ["done"], "the short step did not finish"
        survivors = await wait_group_gone(int(long.lines("act", "pids")[0]), timeout=10)
        tally.leftovers_at_next_attempt += len(survivors)
        await rig.ready(replacement)
        before = tally.pauses
        await finish(rig, short, tally)
        assert tally.pauses == before, "a step that finished within the drain bound paused"
        await finish(rig, long, tally)
        assert len(long.lines("act", "effects")) == 1
    report(tally, capsys)


async def test_temporal_restart_mid_step(rig: Rig,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The Temporal server stops mid-step and comes back on its SQLite file: a step whose
    command finished during the outage returns its recorded result; a longer one, which the
    server times out, runs on while its worker lives and its retry waits for that result
    (tests/faults/test_restarts.py measures this at 5 s and 25 s): nothing pauses."""
    tally = Tally("Temporal server restart mid-step")
    for i in range(COUNTS["temporal"]):
        await one_worker(rig)
        seconds = 2 if i % 2 == 0 else 8  # ends inside the outage / runs on past it
        run = await submit(rig, new_run(rig, "tmp"),
                           [("act", seconds, False), ("after", 0, True)])
        await wait_for(run.has("act", "pids"), timeout=60, what="the step to start")
        await asyncio.to_thread(rig.temporal_server.stop)
        tally.faults += 1
        await asyncio.sleep(3)  # the outage itself: the fault being injected, not a wait
        await asyncio.to_thread(rig.temporal_server.start)
        await finish(rig, run, tally)
        assert len(run.lines("act", "effects")) == 1
    report(tally, capsys)
    assert tally.pauses == 0


async def test_postgres_restart(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL stops inside a step (its end is recorded once it is back) and at a step
    boundary (the next step's start waits for it): no failure, no pause, no lock left."""
    tally = Tally("PostgreSQL stop/start inside a step and at a step boundary")
    for _ in range(COUNTS["postgres"]):
        await one_worker(rig)
        inside = await submit(rig, new_run(rig, "pg-in"), [("act", 2, False)])
        await wait_for(inside.has("act", "pids"), timeout=60, what="the step to start")
        await asyncio.to_thread(rig.pg.stop)
        tally.faults += 1
        await wait_for(inside.has("act", "effects"), timeout=30,
                       what="the command to finish during the outage")
        await asyncio.sleep(2)  # the outage goes on past the step's end: the injected fault
        await asyncio.to_thread(rig.pg.start)
        await finish(rig, inside, tally)

        boundary = await submit(rig, new_run(rig, "pg-edge"),
                                [("first", 1, False), ("second", 1, False)])
        await wait_for(boundary.has("first", "effects"), timeout=60,
                       what="the first step's command to finish")
        await asyncio.to_thread(rig.pg.stop)
        tally.faults += 1
        await asyncio.sleep(4)  # the outage spans the boundary between the two steps
        await asyncio.to_thread(rig.pg.start)
        await finish(rig, boundary, tally)
        assert [len(boundary.lines(s, "effects")) for s in ("first", "second")] == [1, 1]
    report(tally, capsys)
    assert tally.pauses == 0


async def test_worker_kill_9_mid_fleet(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """`kill -9` while a fleet step runs, two targets at a time: the next attempt (after the
    operator's retry of the non-idempotent step) runs only the targets that had not
    completed; every target acts exactly once."""
    worker = await one_worker(rig)
    run = new_run(rig, "k9-fleet")
    fleet = {**shell("roll", run.command("roll", 1.5)), "targets": list(FLEET),
             "max_concurrency": 2}
    run.resp = await rig.client.execute(request([fleet], timeouts=TIMEOUTS), wait=False)
    ident = uuid.UUID(run.resp.execution_id)

    async def completed_rows() -> int:
        return int(await rig.db(lambda pool: pool.fetchval(
            "SELECT count(*) FROM execution.step_targets WHERE execution_id = $1"
            " AND status = 'completed'", ident)))

    async def two_done() -> bool:  # targets run in pairs: the next pair has just started
        return await completed_rows() >= 2

    await wait_for(two_done, timeout=60, what="the first two targets to complete")
    replacement = rig.worker()
    os.kill(worker.pid, signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 10)
    done_before = await completed_rows()
    await rig.ready(replacement)

    async def paused() -> bool:
        progress = await _progress(rig, run.resp.workflow_id)  # type: ignore[union-attr]
        return bool(progress and progress.waiting_on and "unknown outcome" in
                    progress.waiting_on)

    await wait_for(paused, timeout=60, what="the fleet step to pause on its unknown outcome")
    outcome = await rig.client.resolve(run.resp.workflow_id, OPERATOR, "retry")
    assert outcome.accepted, outcome.reason
    result = await asyncio.wait_for(rig.client.result(run.resp.execution_id), 120)
    effects = len(run.lines("roll", "effects"))
    starts = len(run.lines("roll", "pids"))
    rows = await rig.db(lambda pool: pool.fetch(
        "SELECT target, status, attempt FROM execution.step_targets WHERE execution_id = $1",
        ident))
    with capsys.disabled():
        print(f"\n[faults] worker kill -9 mid-fleet: 6 targets, {done_before} completed before "
              f"the kill, {starts} command starts, {effects} effects, "
              f"{sum(r['attempt'] > 1 for r in rows)} targets run by the retry")
    assert result.status.value == "completed", result.error
    assert effects == len(FLEET), (effects, starts)  # each target acted exactly once
    assert sorted(r["target"] for r in rows) == sorted(FLEET)
    assert {r["status"] for r in rows} == {"completed"}
    assert sum(r["attempt"] == 1 for r in rows) == done_before


def _supervisors_of(pid: int) -> list[int]:
    """The worker's per-command supervisor processes (`supervise.py`, its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == pid and b"supervise.py" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


async def test_kill_9_worker_and_supervisors_mid_fleet(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """`kill -9` of the worker and of every command supervisor while four fleet targets run:
    their process groups survive (nothing is left to stop them), so only the attempt record
    can. Each target's group is recorded as its own row, and the next attempt that acts stops
    every one of them before its first command starts: no command of the new attempt sees a
    group of the dead one alive (each checks /proc first)."""
    worker = await one_worker(rig)
    run = new_run(rig, "k9-fleet-sup")
    targets = list(FLEET[:4])
    fast = run.dir / "fast"
    pids, effects, leftovers = (run.dir / "roll.pids", run.dir / "roll.effects",
                                run.dir / "roll.leftovers")
    dead = run.dir / "dead.groups"  # the dead attempt's groups, written once it is dead
    command = (f"{shell_leftover_check(dead, leftovers)}; echo $$ >> {pids}; "
               f"if [ ! -e {fast} ]; then sleep 120; fi; echo done >> {effects}")
    fleet = {**shell("roll", command), "targets": targets, "max_concurrency": len(targets)}
    run.resp = await rig.client.execute(request([fleet], timeouts=TIMEOUTS), wait=False)
    ident = uuid.UUID(run.resp.execution_id)

    async def recorded() -> int:
        return int(await rig.db(lambda pool: pool.fetchval(
            "SELECT count(DISTINCT pgid) FROM execution.attempt_processes"
            " WHERE execution_id = $1 AND step_id = 'roll'", ident)))

    async def all_running() -> bool:
        return run.started("roll", len(targets)) and await recorded() == len(targets)

    await wait_for(all_running, timeout=60, what="every target's command and its record")
    first = [int(p) for p in run.lines("roll", "pids")]
    supervisors = _supervisors_of(worker.pid)
    for pid in supervisors:
        os.kill(pid, signal.SIGKILL)
    os.kill(worker.pid, signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 10)
    alive_after_kill = sum(1 for p in first if group_members(p))
    dead.write_text("".join(f"{p}\n" for p in first))
    fast.touch()  # the next attempt's commands end at once
    replacement = rig.worker()
    await rig.ready(replacement)
    tally = Tally("kill -9 of the worker and its supervisors mid-fleet")
    tally.faults = 1
    await finish(rig, run, tally)
    rows = await rig.db(lambda pool: pool.fetch(
        "SELECT attempt, target, pgid, stopped_at FROM execution.attempt_processes"
        " WHERE execution_id = $1 AND step_id = 'roll' ORDER BY attempt, target", ident))
    dead_attempt = [r for r in rows if r["pgid"] in first]
    with capsys.disabled():
        print(f"\n[faults] kill -9 worker + {len(supervisors)} supervisors mid-fleet: "
              f"{len(targets)} targets, {len(set(first))} groups recorded by the dead attempt, "
              f"{alive_after_kill} alive after the kill, {len(run.lines('roll', 'leftovers'))} "
              f"alive when the next attempt's commands started, "
              f"{sum(r['stopped_at'] is not None for r in dead_attempt)} marked stopped, "
              f"{tally.alive_after_run} alive after the run")
    assert tally.completed == tally.executions == 1, tally.line()
    assert tally.alive_after_run == tally.locks_after_run == 0, tally.line()
    assert len(supervisors) == len(targets)
    assert alive_after_kill == len(targets)  # the fault really left them to the record
    assert sorted(r["target"] for r in dead_attempt) == sorted(targets)
    assert all(r["stopped_at"] is not None for r in dead_attempt)
    assert run.lines("roll", "leftovers") == []
    assert len(run.lines("roll", "effects")) == len(targets)
