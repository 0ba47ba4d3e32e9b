"""Fleet steps against the real stack: 200 local targets, 20 at a time, stopped by max_errors.

Each target is an inventory asset reached through the worker's own machine (connector
`local`), so it is authorized and leased on its own like any asset. Concurrency is measured
from what the commands themselves record (start and end times, one file per run).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsconductor.schema.validation import RequestValidationError
from opsconductor.starter.client import SubmissionRefused
from tests.helpers import inventory_in_use, request, shell, wait_for
from tests.processes import alive

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.scale]
FLEET = [f"node-{i:03d}" for i in range(200)]


@pytest.fixture(scope="module", autouse=True)
def fleet_inventory(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[Path]:
    with inventory_in_use(engine, tmp_path_factory.mktemp("fleet") / "inventory.yaml", [
            {"id": name, "hostname": f"{name}.fleet.test", "connector": "local",
             "tags": ["fleet", "group:odd" if i % 2 else "group:even"]}
            for i, name in enumerate(FLEET)]) as path:
        yield path


def intervals(folder: Path) -> list[tuple[int, int]]:
    out = []
    for f in folder.iterdir():
        start, end = f.read_text().split()
        out.append((int(start), int(end)))
    return out


def peak(spans: list[tuple[int, int]]) -> int:
    """Most spans open at one instant."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    open_, best = 0, 0
    for _, delta in edges:
        open_ += delta
        best = max(best, open_)
    return best


async def test_fleet_of_200_targets_never_exceeds_max_concurrency(engine: Any,
                                                                   tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    cmd = (f"f=$(mktemp -p {spans}); date +%s%N > $f.t; sleep 0.3; "
           "echo \"$(cat $f.t) $(date +%s%N)\" > $f; rm $f.t; echo done-on-$(hostname)")
    step = {**shell("restart", cmd), "targets": FLEET, "max_concurrency": 20,
            "max_errors": "10%"}
    resp = await engine.execute(request([step]), wait=True)
    result = resp.result
    assert result.status.value == "completed", result.error
    ran = intervals(spans)
    assert len(ran) == 200
    most = peak(ran)
    print(f"\n200 targets, max_concurrency 20: at most {most} at once")
    assert most <= 20
    assert most >= 10  # it did run in parallel
    rows = await engine.pool.fetch(
        "SELECT target, status, exit_code FROM execution.step_targets WHERE execution_id = $1",
        uuid.UUID(resp.execution_id))
    assert sorted(r["target"] for r in rows) == FLEET
    assert {r["status"] for r in rows} == {"completed"} and {r["exit_code"] for r in rows} == {0}
    out = result.steps[0].output
    assert out["fleet"] and out["count"] == 200 and out["succeeded"] == 200
    stored = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.step_outputs WHERE execution_id = $1 AND step_id LIKE"
        " 'restart@node-%'", uuid.UUID(resp.execution_id))
    assert stored == 200


async def test_fleet_stops_starting_targets_after_max_errors(engine: Any, tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    cmd = f"mktemp -p {started} >/dev/null; sleep 0.1; exit 1"
    step = {**shell("flaky", cmd), "targets": {"tags": ["fleet"], "groups": ["even"]},
            "max_concurrency": 5, "max_errors": 3, "failure_handling": "continue"}
    resp = await engine.execute(request([step]), wait=True)
    flaky = resp.result.steps[0]
    assert flaky.status.value == "failed"
    began = len(list(started.iterdir()))
    print(f"\n100 selected targets, max_errors 3, max_concurrency 5: {began} started")
    # Starting stops once a 4th failure is seen; at most the 4 failures and the 4 other
    # targets already running when it was seen ever started.
    assert 4 <= began <= 3 + 1 + 4
    rows = await engine.pool.fetch(
        "SELECT status, count(*) AS n FROM execution.step_targets WHERE execution_id = $1"
        " GROUP BY status", uuid.UUID(resp.execution_id))
    by_status = {r["status"]: r["n"] for r in rows}
    assert by_status.get("failed") == began and by_status.get("skipped") == 100 - began
    assert "not started" in (flaky.error or "") and "max_errors 3" in (flaky.error or "")


async def test_cancel_stops_every_running_target(engine: Any, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = f"echo $$ > $(mktemp -p {pids}); sleep 600"
    step = {**shell("long", cmd), "targets": FLEET[:30], "max_concurrency": 10}
    resp = await engine.execute(request([step], mode="background"), wait=False)

    def running() -> list[int] | None:
        found = [int(t) for f in pids.iterdir() if (t := f.read_text().strip())]
        return found if len(found) == 10 else None

    started = await wait_for(running, what="10 targets running", timeout=60)
    assert all(alive(p) for p in started)
    outcome = await engine.cancel(resp.execution_id, "bob", "wrong fleet")
    assert outcome.accepted, outcome.reason
    result = await engine.result(resp.execution_id)
    assert result.status.value == "cancelled"
    assert not [p for p in started if alive(p)]
    assert len(list(pids.iterdir())) == 10  # nothing started after the cancel
    rows = await engine.pool.fetch(
        "SELECT status, count(*) AS n FROM execution.step_targets WHERE execution_id = $1"
        " GROUP BY status", uuid.UUID(resp.execution_id))
    assert {r["status"]: r["n"] for r in rows} == {"cancelled": 10}


async def test_fleet_targets_are_checked_at_submission(engine: Any) -> None:
    tenant = f"fleet-{uuid.uuid4().hex[:8]}"
    bad = request([{**shell("a", "true"), "targets": ["node-000", "ghost-1"]},
                   {**shell("b", "true"), "targets": {"tags": ["no-such-tag"]}},
                   {**shell("c", "true"), "targets": ["node-001"], "max_errors": "x"}],
                  tenant=tenant)
    with pytest.raises(RequestValidationError) as raised:
        await engine.execute(bad, wait=False)
    found = {p.path: p.message for p in raised.value.problems}
    assert "must be an integer or a percentage" in found["plan.plan.steps[2].max_errors"]
    bad["plan"]["plan"]["steps"].pop()
    with pytest.raises(RequestValidationError) as raised:
        await engine.execute(bad, wait=False)
    found = {p.path: p.message for p in raised.value.problems}
    assert found["plan.plan.steps[0].targets[1]"] == "unknown asset 'ghost-1'"
    assert "matches no asset" in found["plan.plan.steps[1].targets"]
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.executions WHERE tenant = $1", tenant) == 0


async def test_rollback_undoes_a_fleet_on_each_target_it_acted_on(engine: Any) -> None:
    targets = FLEET[:6]
    fleet = {**shell("deploy", "true"), "targets": targets, "max_concurrency": 3}
    steps = [fleet, shell("verify", "exit 1", deps=["deploy"], failure_handling="rollback")]
    req = request(steps, plan_extra={"rollback_plan": [
        {"step_id": "deploy", "rollback_action": "true"}]})
    resp = await engine.execute(req, wait=True)
    assert resp.result.status.value == "failed"
    rows = await engine.pool.fetch(
        "SELECT data FROM execution.event_log WHERE execution_id = $1 AND"
        " event_type = 'rollback.step_completed' AND step_id = 'deploy'",
        uuid.UUID(resp.execution_id))
    undone = sorted(json.loads(r["data"])["target"] for r in rows)
    assert undone == targets


async def test_submission_judges_every_target_of_a_fleet(engine: Any, tmp_path: Path) -> None:
    tenant = f"fleet-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "ran"
    listed = {**shell("restart", f"touch {marker}"), "targets": FLEET[:20]}
    selected = {**shell("restart", f"touch {marker}"), "targets": {"groups": ["odd"]}}
    for fleet in (listed, selected):
        with pytest.raises(SubmissionRefused, match="no-node-013-for-fred"):
            await engine.execute(request([fleet], tenant=tenant, actor="fred"), wait=True)
    assert not marker.exists()
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.executions WHERE tenant = $1", tenant) == 0
    denied = await engine.pool.fetch(
        "SELECT DISTINCT resource FROM execution.rbac_audit WHERE tenant = $1"
        " AND decision = 'deny'", tenant)
    assert [r["resource"] for r in denied] == ["node-013"]
    fine = {**shell("restart", "true"), "targets": FLEET[:5]}  # node-013 not among them
    resp = await engine.execute(request([fine], tenant=tenant, actor="fred"), wait=True)
    assert resp.result.status.value == "completed", resp.result.error


async def test_a_fleet_steps_success_criteria_hold_on_each_target(engine: Any,
                                                                   tmp_path: Path) -> None:
    """The third target prints 3: that target fails its criterion on its own output and counts
    against max_errors; the combined output (where some line is 3) does not fail the step."""
    ran = tmp_path / "ran"
    step = {**shell("restart", f"echo run >> {ran}; wc -l < {ran}"), "targets": FLEET[:6],
            "max_concurrency": 1, "max_errors": 1,
            "success_criteria": ["stdout not matches '^3$'"]}
    resp = await engine.execute(request([step]), wait=True)
    assert resp.result.status.value == "completed", resp.result.error
    rows = await engine.pool.fetch(
        "SELECT target, status, error FROM execution.step_targets WHERE execution_id = $1"
        " ORDER BY target", uuid.UUID(resp.execution_id))
    failed = [(r["target"], r["error"]) for r in rows if r["status"] == "failed"]
    print(f"[fleet] per-target success criteria: {len(rows)} targets, failed: {failed}")
    assert failed == [("node-002", "success criterion failed on node-002: "
                                   "stdout not matches '^3$': stdout: matched '3'")]
    assert len(ran.read_text().split()) == 6
    strict = {**shell("restart", f"echo run >> {ran}.2; wc -l < {ran}.2"),
              "targets": FLEET[:6], "max_concurrency": 1, "max_errors": 0,
              "success_criteria": ["stdout not matches '^3$'"]}
    resp = await engine.execute(request([strict]), wait=True)
    assert resp.result.status.value == "failed"
    assert "success criterion failed on node-002" in (resp.result.steps[0].error or "")


async def test_dry_run_judges_every_target_of_a_fleet() -> None:
    from opsconductor.starter.dry_run import dry_run, render_text

    listed = {**shell("restart", "true"), "targets": FLEET[:20]}
    selected = {**shell("restart", "true"), "targets": {"groups": ["odd"]}}
    for fleet, count in ((listed, 20), (selected, 100)):
        report = await dry_run(request([fleet], actor="fred"), db_problem="not given")
        assert not report.would_run
        assert [p.message for p in report.problems] == [
            "step on node-013: denied by rule no-node-013-for-fred"], report.problems
        step = report.steps[0]
        assert not step.allowed and step.rbac_reason.startswith(
            f"denied on 1 of {count} targets: node-013"), step.rbac_reason
        print(f"[fleet] dry run of {count} targets: {step.rbac_reason}")
    fine = await dry_run(request([{**shell("restart", "true"), "targets": FLEET[:5]}],
                                 actor="fred"), db_problem="not given")
    assert fine.would_run and fine.steps[0].rbac_reason == "allowed on each of its 5 targets"
    assert "node-000, node-001, node-002, node-003, node-004" in render_text(fine)


async def test_a_fleet_steps_preconditions_hold_on_each_target(engine: Any,
                                                               tmp_path: Path) -> None:
    checked, ran = tmp_path / "checked", tmp_path / "ran"
    step = {**shell("restart", f"echo ran >> {ran}"), "targets": FLEET[:6],
            "max_concurrency": 3, "preconditions": [f"command: echo checked >> {checked}"]}
    resp = await engine.execute(request([step]), wait=True)
    assert resp.result.status.value == "completed", resp.result.error
    assert len(checked.read_text().split()) == 6 and len(ran.read_text().split()) == 6
    blocked = {**shell("restart", f"echo ran >> {ran}.2"), "targets": FLEET[:6],
               "max_concurrency": 1, "max_errors": 1,
               "preconditions": [f"command: test -e {tmp_path / 'absent'}"]}
    resp = await engine.execute(request([blocked]), wait=True)
    restart = resp.result.steps[0]
    assert restart.status.value == "failed" and not Path(f"{ran}.2").exists()
    assert "precondition failed on node-000" in (restart.error or "")
    rows = await engine.pool.fetch(
        "SELECT status, count(*) AS n FROM execution.step_targets WHERE execution_id = $1"
        " GROUP BY status", uuid.UUID(resp.execution_id))
    assert {r["status"]: r["n"] for r in rows} == {"failed": 2, "skipped": 4}
