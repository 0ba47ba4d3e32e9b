"""The `opsconductor` CLI the way operators use it: real subprocesses against the session's
Temporal dev server and PostgreSQL, served by the `engine` fixture's worker (task queue
`opsc-tests`). Exit codes: 0 ok, 1 failed/refused, 2 bad input, 3 not found, 4 unreachable.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.service import RPCError

from opsconductor.safety.idempotency import request_fingerprint, workflow_id_for
from opsconductor.schema.validation import validate_request
from opsconductor.starter.binaries import temporal_cli
from opsconductor.starter.ports import free_port
from tests.helpers import events
from tests.integration.helpers import (
    OPSCONDUCTOR,
    execution_row,
    kill_group,
    poll,
    run_binary,
    run_cli,
)
from tests.plans import request, shell, step

pytestmark = pytest.mark.asyncio(loop_scope="session")

STATUS_KEYS = {"execution_id", "workflow_id", "status", "approval_state", "steps"}
STEP_KEYS = {"id", "status", "attempts", "started_at", "completed_at"}


@pytest.fixture
def tenant() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def write(tmp_path: Path, name: str, doc: Any) -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return str(path)


async def status(env: dict[str, str], ident: str) -> dict[str, Any]:
    cli = await run_cli(env, "status", ident, "--json")
    assert cli.code == 0, cli
    return dict(cli.json)


async def final_status(engine: Any, ident: str, timeout: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        view = await engine.status(ident)
        return view if view["temporal_status"] not in ("RUNNING", None) else None

    return await poll(done, timeout=timeout, what=f"execution {ident} to end")


# ---------------------------------------------------------------------- run / status / list

async def test_run_an_envelope_then_status_by_both_ids_list_and_temporal_cli(
        env: dict[str, str], tenant: str, tmp_path: Path, temporal_server: Any) -> None:
    req = request([shell("hello", "echo hello-cli"),
                   shell("sum", "echo $((40 + 2))", deps=["hello"])], tenant=tenant)
    cli = await run_cli(env, "run", write(tmp_path, "req.json", req), "--json", "--wait")
    assert cli.code == 0, cli
    out = cli.json
    assert out["status"] == "completed" and out["duplicate"] is False
    assert out["result"]["status"] == "completed"
    by_id = {s["step_id"]: s for s in out["result"]["steps"]}
    assert by_id["hello"]["stdout"].strip() == "hello-cli"
    assert by_id["sum"]["stdout"].strip() == "42"
    eid, wid = out["execution_id"], out["workflow_id"]

    by_eid, by_wid = await status(env, eid), await status(env, wid)
    for view in (by_eid, by_wid):
        assert STATUS_KEYS <= view.keys()
        assert (view["execution_id"], view["workflow_id"]) == (eid, wid)
        assert view["status"] == "completed" and view["approval_state"] == "not_required"
        assert view["tenant"] == tenant and view["actor"] == "alice"
        assert [s["id"] for s in view["steps"]] == ["hello", "sum"]
        for s in view["steps"]:
            assert STEP_KEYS <= s.keys()
            assert s["status"] == "completed" and s["attempts"] == 1
            assert s["started_at"] <= s["completed_at"]
    assert by_eid == by_wid

    text = await run_cli(env, "status", wid)
    assert text.code == 0 and eid in text.stdout and "completed" in text.stdout

    listed = await run_cli(env, "list", "--json", "--tenant", tenant)
    assert listed.code == 0, listed
    assert [(r["execution_id"], r["status"], r["step_count"], r["steps_completed"])
            for r in listed.json] == [(eid, "completed", 2, 2)]
    other = await run_cli(env, "list", "--json", "--tenant", f"{tenant}-nobody")
    assert other.code == 0 and other.json == []

    async def visible() -> list[Any] | None:
        found = await run_binary(temporal_cli(), "workflow", "list", "--address",
                                 temporal_server.address, "--query",
                                 f"OpsTenant='{tenant}'", "-o", "json")
        assert found.code == 0, found
        rows = json.loads(found.stdout or "[]") if found.stdout.strip() else []
        return rows or None

    rows = await poll(visible, timeout=20, interval=0.3, what="temporal workflow list")
    assert [r["execution"]["workflowId"] for r in rows] == [wid]


async def test_run_a_bare_plan_with_envelope_flags(env: dict[str, str], tenant: str,
                                                  tmp_path: Path) -> None:
    plan_v1 = {"plan": {"steps": [step("noop-1"), shell("echo", "echo bare", deps=["noop-1"])]},
               "execution_metadata": {"nonce": uuid.uuid4().hex}, "version": "1"}
    cli = await run_cli(env, "run", write(tmp_path, "plan.json", plan_v1), "--tenant", tenant,
                        "--actor", "carol", "--environment", "staging", "--json", "--wait")
    assert cli.code == 0, cli
    assert cli.json["result"]["status"] == "completed"
    view = await status(env, cli.json["execution_id"])
    assert (view["tenant"], view["actor"], view["environment"]) == (tenant, "carol", "staging")
    assert [s["status"] for s in view["steps"]] == ["completed", "completed"]

    # just the plan object works too, and text output names the execution
    plan_obj = {"steps": [shell("only", f"echo {uuid.uuid4().hex}")]}
    text = await run_cli(env, "run", write(tmp_path, "obj.json", plan_obj), "--tenant", tenant,
                         "--actor", "carol", "--environment", "dev", "--wait")
    assert text.code == 0, text
    assert "completed" in text.stdout and "only" in text.stdout
    listed = await run_cli(env, "list", "--json", "--tenant", tenant)
    assert len(listed.json) == 2


async def test_watch_follows_an_execution_to_its_end(env: dict[str, str], tenant: str,
                                                     tmp_path: Path) -> None:
    go = tmp_path / "go"
    req = request([shell("wait", f"while [ ! -e {go} ]; do sleep 0.1; done; echo went"),
                   shell("after", "echo after", deps=["wait"])], tenant=tenant)
    cli = await run_cli(env, "run", write(tmp_path, "w.json", req), "--mode", "background",
                        "--json")
    assert cli.code == 0, cli
    proc = await asyncio.create_subprocess_exec(
        OPSCONDUCTOR, "watch", cli.json["execution_id"], "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["execution_id"] == cli.json["execution_id"]
        assert first["status"] in ("queued", "running")
        go.touch()
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    views = [json.loads(line) for line in rest.decode().splitlines() if line.strip()]
    assert views and views[-1]["status"] == "completed"
    assert [s["status"] for s in views[-1]["steps"]] == ["completed", "completed"]

    failed = request([shell("boom", "exit 9")], tenant=tenant)
    done = await run_cli(env, "run", write(tmp_path, "f.json", failed), "--wait", "--json")
    assert done.code == 1
    watched = await run_cli(env, "watch", done.json["execution_id"])
    assert watched.code == 1 and "failed" in watched.stdout


# ---------------------------------------------------------------------- approvals / cancel

async def submit_gated(env: dict[str, str], tenant: str, tmp_path: Path, name: str,
                       command: str) -> str:
    req = request([shell("gated", command)], tenant=tenant, environment="staging")
    cli = await run_cli(env, "run", write(tmp_path, f"{name}.json", req), "--approval-level",
                        "1", "--mode", "background", "--json")
    assert cli.code == 0, cli
    assert cli.json["status"] == "queued" and cli.json["mode"] == "background"
    return str(cli.json["execution_id"])


async def pending_for(env: dict[str, str], approver: str) -> list[str]:
    cli = await run_cli(env, "pending", "--approver", approver, "--json")
    assert cli.code == 0, cli
    return [r["execution_id"] for r in cli.json]


async def test_approve_and_reject_exit_codes_and_pending(
        engine: Any, env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    first = await submit_gated(env, tenant, tmp_path, "one", f"touch {marker}")
    second = await submit_gated(env, tenant, tmp_path, "two", "echo never")

    async def both_pending() -> bool:
        waiting = await pending_for(env, "bob")
        return first in waiting and second in waiting

    await poll(both_pending, timeout=30, interval=0.2, what="both executions in `pending`")
    assert first not in await pending_for(env, "alice")  # the requester may not approve
    assert first not in await pending_for(env, "mallory")  # no approver role

    refused = await run_cli(env, "approve", first, "--approver", "alice")
    assert refused.code == 1, refused
    assert refused.stdout.startswith("refused: ") and "alice" in refused.stdout
    no_role = await run_cli(env, "approve", first, "--approver", "mallory", "--json")
    assert no_role.code == 1 and no_role.json["accepted"] is False
    assert no_role.json["reason"]
    assert not marker.exists()

    ok = await run_cli(env, "approve", first, "--approver", "bob", "--comment", "go", "--json")
    assert ok.code == 0, ok
    assert ok.json["accepted"] is True and ok.json["approval_state"] == "approved"
    view = await final_status(engine, first)
    assert view["status"] == "completed" and view["approval_state"] == "approved"
    assert marker.exists()
    late = await run_cli(env, "approve", first, "--approver", "dave")
    assert late.code == 1 and "refused" in late.stdout

    rejected = await run_cli(env, "reject", second, "--approver", "bob", "--comment",
                             "not today", "--json")
    assert rejected.code == 0, rejected
    assert rejected.json["accepted"] is True
    view = await final_status(engine, second)
    assert view["status"] == "rejected" and "not today" in (view["error"] or "")
    assert second not in await pending_for(env, "bob")
    again = await run_cli(env, "reject", second, "--approver", "dave", "--comment", "x")
    assert again.code == 1, again

    missing = await run_cli(env, "approve", str(uuid.uuid4()), "--approver", "bob", "--json")
    assert missing.code == 3, missing
    assert "no execution" in missing.json["error"]


async def test_cancel_a_running_execution(engine: Any, env: dict[str, str], tenant: str,
                                          tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    req = request([shell("long", f"echo $$ > {pidfile}; sleep 300")], tenant=tenant,
                  timeouts={"heartbeat_timeout_seconds": 2})
    cli = await run_cli(env, "run", write(tmp_path, "long.json", req), "--mode", "background",
                        "--json")
    assert cli.code == 0, cli
    eid = cli.json["execution_id"]

    async def started() -> int | None:
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        return int(text) if text else None

    pid = await poll(started, timeout=30, what="the long step to start")
    try:
        assert (await status(env, eid))["status"] == "running"
        cancel = await run_cli(env, "cancel", eid, "--reason", "window closed", "--actor",
                               "bob", "--json")
        assert cancel.code == 0, cancel
        assert cancel.json["accepted"] is True
        view = await final_status(engine, eid)
        assert view["status"] == "cancelled"
        assert (view["cancel_actor"], view["cancel_reason"]) == ("bob", "window closed")
        assert view["steps"][0]["status"] == "cancelled"
        again = await run_cli(env, "cancel", eid, "--reason", "twice")
        assert again.code == 1 and "refused" in again.stdout
    finally:
        kill_group(pid)


# ---------------------------------------------------------------------- dlq / health

async def test_dlq_list_and_requeue_links_the_new_run(engine: Any, env: dict[str, str],
                                                      tenant: str, tmp_path: Path) -> None:
    req = request([shell("boom", "echo failing >&2; exit 3")], tenant=tenant)
    failed = await run_cli(env, "run", write(tmp_path, "fail.json", req), "--json", "--wait")
    assert failed.code == 1, failed
    assert failed.json["result"]["status"] == "failed"
    old = failed.json["execution_id"]

    listed = await run_cli(env, "dlq", "list", "--json")
    assert listed.code == 0, listed
    entries = [e for e in listed.json if e["execution_id"] == old]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["step_id"] == "boom" and entry["status"] == "open"
    assert "exited with 3" in entry["reason"] or "3" in entry["reason"]

    requeued = await run_cli(env, "dlq", "requeue", str(entry["id"]), "--actor", "bob",
                             "--json")
    assert requeued.code == 0, requeued
    new = requeued.json["execution_id"]
    assert new != old and requeued.json["previous_execution_id"] == old
    assert requeued.json["duplicate"] is False
    view = await final_status(engine, new)
    assert view["status"] == "failed"  # the same plan fails again, as a new linked run
    row = await execution_row(engine.pool, new)
    assert str(row["previous_execution_id"]) == old

    all_entries = await run_cli(env, "dlq", "list", "--all", "--json")
    done = next(e for e in all_entries.json if e["id"] == entry["id"])
    assert (done["status"], done["requeued_by"], done["requeued_execution_id"]) == (
        "requeued", "bob", new)
    assert entry["id"] not in [e["id"] for e in (await run_cli(
        env, "dlq", "list", "--json")).json]
    twice = await run_cli(env, "dlq", "requeue", str(entry["id"]), "--json")
    assert twice.code == 1, twice  # refused: the entry exists, it is just not open any more
    assert "already requeued" in twice.json["error"]
    unknown = await run_cli(env, "dlq", "requeue", "987654321", "--json")
    assert unknown.code == 3, unknown


async def test_dlq_requeue_checks_the_requeue_permission(
        engine: Any, env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    """The policy (tests/rbac_policy.yaml) grants `requeue` in dev/staging only: a prod
    entry may not be requeued by anyone, and the refusal starts nothing."""
    req = request([shell("boom", "exit 5")], tenant=tenant, environment="prod")
    failed = await run_cli(env, "run", write(tmp_path, "prod.json", req), "--json", "--wait")
    assert failed.code == 1 and failed.json["result"]["status"] == "failed", failed
    old = failed.json["execution_id"]
    entry = next(e for e in (await run_cli(env, "dlq", "list", "--json")).json
                 if e["execution_id"] == old)
    refused = await run_cli(env, "dlq", "requeue", str(entry["id"]), "--actor", "bob",
                            "--json")
    assert refused.code == 1, refused
    assert "requeue" in refused.json["error"] and "bob" in refused.json["error"]
    still = next(e for e in (await run_cli(env, "dlq", "list", "--json")).json
                 if e["id"] == entry["id"])
    assert still["status"] == "open" and still["requeued_execution_id"] is None
    listed = await run_cli(env, "list", "--json", "--tenant", tenant)
    assert [r["execution_id"] for r in listed.json] == [old]
    audit = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.rbac_audit WHERE tenant = $1 AND action = 'requeue' "
        "AND actor = 'bob' AND decision = 'deny'", tenant)
    assert audit == 1


async def test_health(env: dict[str, str]) -> None:
    cli = await run_cli(env, "health", "--json")
    assert cli.code == 0, cli
    report = cli.json
    assert {k: v["ok"] for k, v in report.items()} == {
        "postgres": True, "temporal": True, "workers": True, "signers": True,
        # other tests' runs may be quiet or retrying: reported, not asserted here
        "progress": report["progress"]["ok"], "retrying": report["retrying"]["ok"]}
    assert "running" in report["retrying"]["detail"] or "retried" in \
        report["retrying"]["detail"]
    assert "opsc-tests" in report["workers"]["detail"]
    assert "001" in report["postgres"]["detail"]


# ---------------------------------------------------------------------- bad input

async def test_malformed_json_is_exit_2_naming_the_problem(env: dict[str, str],
                                                           tmp_path: Path) -> None:
    path = write(tmp_path, "broken.json", '{"tenant": "acme", "plan": {"steps": [}')
    cli = await run_cli(env, "run", path, "--json")
    assert cli.code == 2, cli
    assert cli.json["exit_code"] == 2
    assert path in cli.json["error"] and "not valid JSON" in cli.json["error"]
    assert "line 1" in cli.json["error"]
    text = await run_cli(env, "run", path)
    assert text.code == 2 and "not valid JSON" in text.stderr and "Traceback" not in text.stderr
    missing = await run_cli(env, "run", str(tmp_path / "nope.json"))
    assert missing.code == 2 and "no such file" in missing.stderr
    not_object = await run_cli(env, "run", write(tmp_path, "list.json", [1, 2]))
    assert not_object.code == 2 and "JSON object" in not_object.stderr


async def test_invalid_plan_is_exit_2_listing_every_problem_and_starts_nothing(
        env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    req = request([step("a", "teleport"),
                   shell("b", "echo b", deps=["ghost"]),
                   shell("b", "echo dup"),
                   step("c", "shell")], tenant=tenant, environment="qa")
    cli = await run_cli(env, "run", write(tmp_path, "bad.json", req), "--json", "--wait")
    assert cli.code == 2, cli
    problems = cli.json["problems"]
    paths = [p["path"] for p in problems]
    assert "environment" in paths
    assert any(p.startswith("plan.plan.steps[0]") and "teleport" in m
               for p, m in ((p["path"], p["message"]) for p in problems)), problems
    assert any(p.startswith("plan.plan.steps[1]") and "ghost" in m
               for p, m in ((p["path"], p["message"]) for p in problems)), problems
    assert any("duplicate" in p["message"].lower() for p in problems), problems
    assert any(p["path"].startswith("plan.plan.steps[3].inputs") for p in problems), problems
    text = await run_cli(env, "run", str(tmp_path / "bad.json"))
    assert text.code == 2 and "plan.plan.steps[0]" in text.stderr
    assert "Traceback" not in text.stderr
    listed = await run_cli(env, "list", "--json", "--tenant", tenant)
    assert listed.code == 0 and listed.json == []

    # a bare plan without the envelope's flags names the missing fields
    bare = await run_cli(env, "run", write(tmp_path, "bare.json", {"steps": [step("n")]}),
                         "--json")
    assert bare.code == 2, bare
    assert {"tenant", "actor", "environment"} <= {p["path"] for p in bare.json["problems"]}


async def test_unknown_ids_are_exit_3(env: dict[str, str]) -> None:
    for args in (["status", str(uuid.uuid4())], ["status", "opsc-nobody-0123456789abcdef"],
                 ["cancel", str(uuid.uuid4()), "--reason", "x"],
                 ["reject", "opsc-nobody-0123456789abcdef", "--approver", "bob",
                  "--comment", "x"]):
        cli = await run_cli(env, *args, "--json")
        assert cli.code == 3, (args, str(cli))
        assert "no execution" in cli.json["error"]


async def test_postgres_down_is_exit_4_and_starts_nothing(
        engine: Any, env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    down = {**env, "OPSC_DATABASE_URL": f"postgresql://opsc@127.0.0.1:{free_port()}/opsc"}
    req = request([shell("s", f"touch {tmp_path / 'ran'}")], tenant=tenant)
    path = write(tmp_path, "req.json", req)
    cli = await run_cli(down, "run", path, "--json", "--wait", timeout=60)
    assert cli.code == 4, cli
    assert "PostgreSQL" in cli.json["error"] and "127.0.0.1" in cli.json["error"]
    text = await run_cli(down, "run", path, timeout=60)
    assert text.code == 4 and "PostgreSQL" in text.stderr and "Traceback" not in text.stderr
    st = await run_cli(down, "status", str(uuid.uuid4()), "--json", timeout=60)
    assert st.code == 4, st
    health = await run_cli(down, "health", "--json", timeout=60)
    assert health.code == 4, health
    assert health.json["postgres"]["ok"] is False and health.json["temporal"]["ok"] is True

    # nothing started: no workflow under the id this request would get, no mirror rows
    request_model = validate_request(req)
    wid = workflow_id_for(tenant, request_fingerprint(
        request_model.model_dump(mode="json", by_alias=True, exclude_none=True)))
    with pytest.raises(RPCError):
        await engine.temporal.get_workflow_handle(wid).describe()
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.idempotency_records WHERE tenant = $1", tenant) == 0
    assert not (tmp_path / "ran").exists()


async def test_temporal_down_is_exit_4(env: dict[str, str], tmp_path: Path) -> None:
    down = {**env, "OPSC_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    cli = await run_cli(down, "status", str(uuid.uuid4()), "--json", timeout=90)
    assert cli.code == 4, cli
    assert cli.json["exit_code"] == 4



async def test_dlq_requeue_from_failed_resumes_at_the_failed_step(
        engine: Any, env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    """The completed step is not run again (its result is taken over); the failed one and
    the rest run."""
    count, flag = tmp_path / "count", tmp_path / "flag"
    req = request([shell("first", f"echo run >> {count}", idempotent=True),
                   shell("second", f"test -e {flag}", ["first"], idempotent=True),
                   shell("third", "echo third", ["second"], idempotent=True)], tenant=tenant)
    failed = await run_cli(env, "run", write(tmp_path, "req.json", req), "--json", "--wait")
    assert failed.code == 1 and failed.json["result"]["status"] == "failed", failed
    old = failed.json["execution_id"]
    listed = await run_cli(env, "dlq", "list", "--json", "--tenant", tenant)
    (entry,) = [e for e in listed.json if e["execution_id"] == old]
    assert entry["step_id"] == "second"

    flag.touch()
    requeued = await run_cli(env, "dlq", "requeue", str(entry["id"]), "--from-failed",
                             "--actor", "alice", "--json")
    assert requeued.code == 0, requeued
    view = await final_status(engine, requeued.json["execution_id"])
    assert view["status"] == "completed", view
    steps = {s["id"]: s for s in view["steps"]}
    assert steps["first"]["status"] == "completed" and steps["first"]["attempts"] == 0
    assert count.read_text().splitlines() == ["run"]  # not run a second time
    carried = [e for e in await events(engine.pool, requeued.json["execution_id"])
               if e["step_id"] == "first" and "not run again" in (e["message"] or "")]
    assert carried and old in carried[0]["message"]


async def test_run_new_and_follow(env: dict[str, str], tenant: str, tmp_path: Path) -> None:
    """`--new` runs a plan submitted before again (without it: the same execution);
    `--follow` submits, then shows the run until it ends, with its exit code."""
    path = write(tmp_path, "req.json", request([shell("hi", "echo follow-me")], tenant=tenant))
    first = await run_cli(env, "run", path, "--json", "--wait")
    again = await run_cli(env, "--json", "run", path, "--wait")
    fresh = await run_cli(env, "run", path, "--new", "-o", "json", "--wait")
    assert first.code == again.code == fresh.code == 0, (first, again, fresh)
    assert again.json["duplicate"] is True
    assert again.json["execution_id"] == first.json["execution_id"]
    assert fresh.json["duplicate"] is False
    assert fresh.json["execution_id"] != first.json["execution_id"]
    followed = await run_cli(env, "run", path, "--new", "--follow", "--json")
    assert followed.code == 0, followed
    views = [json.loads(line) for line in followed.stdout.splitlines() if line.strip()]
    print(f"--follow printed {len(views)} JSON lines")
    assert views and views[-1]["status"] == "completed"
    assert views[-1]["execution_id"] not in (first.json["execution_id"],
                                             fresh.json["execution_id"])
