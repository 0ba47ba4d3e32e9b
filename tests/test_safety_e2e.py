"""The safety layer through the whole engine: secrets, asset locks, RBAC at the moment of
action, idempotency under concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from opsconductor.activities.steps import StepActivities
from opsconductor.safety import mutex
from opsconductor.safety.masking import install_log_masking
from opsconductor.schema.enums import ActionClass, Environment, FailureHandling, SlaClass, StepKind
from opsconductor.schema.messages import StepRunInput, TimeoutPolicy
from opsconductor.schema.spec import StepSpec
from tests.helpers import (
    decoded_payloads,
    file_exists,
    inventory_in_use,
    lease_expired,
    lock_waiting,
    request,
    shell,
    step,
    wait_for,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
CANARY = "canary-" + uuid.uuid4().hex  # a secret value that must never leave the activity


@pytest.fixture(scope="module", autouse=True)
def local_assets(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[Path]:
    """Assets reached through the worker's own machine: locks apply, nothing remote."""
    with inventory_in_use(engine, tmp_path_factory.mktemp("inventory") / "inventory.yaml", [
            {"id": name, "hostname": f"{name}.test", "connector": "local"}
            for name in ("shared-host", "asset-a", "asset-b", "locked-host")]) as path:
        yield path


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """A root handler with the worker's masking filter, as `run_worker` installs it."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install_log_masking()
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_secret_canary_is_used_but_never_stored_logged_or_in_history(
        engine: Any, captured_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("OPSC_SECRET_CANARY_TOKEN", CANARY)
    ref = {"type": "secret", "path": "canary/token"}
    started = tmp_path / "started"
    go = tmp_path / "go"
    req = request([
        shell("use", 'printf %s "$TOKEN" | sha256sum | cut -c1-64; echo "token=$TOKEN"; '
                     f'echo "Authorization: Bearer $TOKEN" >&2; touch {started}; '
                     f'while [ ! -e {go} ]; do sleep 0.05; done',
              env={"TOKEN": ref}),
        shell("leak", 'echo "password=$TOKEN"; exit 1', deps=["use"],
              env={"TOKEN": ref}, failure_handling="continue"),
    ])
    resp = await engine.execute(req, wait=False)
    await wait_for(file_exists(started), timeout=30, what="the first step to start")
    # While the step runs, its secret is live: anything logged in the worker is masked.
    logging.getLogger("opsconductor.step").warning("debug dump token=%s", CANARY)
    go.touch()
    result = await engine.result(resp.execution_id)
    assert result.status.value == "partial"  # `use` completed, `leak` failed
    use, leak = result.steps
    digest = hashlib.sha256(CANARY.encode()).hexdigest()
    assert use.status.value == "completed"
    assert use.stdout.split() == [digest, "token=***"]  # the step really had the value
    assert "***" in use.stderr and CANARY not in use.stderr
    assert leak.status.value == "failed"

    history = await engine.temporal.get_workflow_handle(resp.workflow_id).fetch_history()
    history_json = json.dumps(history.to_json_dict())
    history_json += decoded_payloads(history.to_json_dict())
    assert CANARY not in history_json
    assert "canary/token" in history_json  # only the reference travels

    tables = await engine.pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'execution'")
    assert len(tables) >= 10
    for row in tables:
        dump = await engine.pool.fetchval(
            f"SELECT coalesce(string_agg(t::text, ' '), '') FROM execution.{row['table_name']} t")
        assert CANARY not in dump, row["table_name"]
    logs = captured_logs.getvalue()
    assert "debug dump token=***" in logs
    assert CANARY not in logs


async def test_missing_secret_fails_the_step_naming_the_path(engine: Any) -> None:
    req = request([shell("s", "echo $X", env={"X": {"type": "secret", "path": "no/such"}})])
    resp = await engine.execute(req, wait=True)
    s = resp.result.steps[0]
    assert resp.result.status.value == "failed" and s.status.value == "failed"
    assert "no/such" in (s.error or "")
    assert s.attempts <= 1


async def test_two_hundred_executions_on_one_asset_never_overlap_and_keep_order(
        engine: Any) -> None:
    tenant = f"lock{uuid.uuid4().hex[:6]}"
    responses = []
    for i in range(200):
        resp = await engine.execute(request(
            [shell("touch", f"echo {i}", target="shared-host", idempotent=True)],
            tenant=tenant), wait=False)
        responses.append(resp)
        await _queued(engine, tenant, resp.execution_id)
    results = await asyncio.gather(*[engine.result(r.execution_id) for r in responses])
    assert {r.status.value for r in results} == {"completed"}
    rows = await engine.pool.fetch(
        "SELECT e.execution_id::text AS id, s.started_at, s.completed_at "
        "FROM execution.step_runs s JOIN execution.executions e USING (execution_id) "
        "WHERE e.tenant = $1 ORDER BY s.started_at", tenant)
    assert len(rows) == 200
    for before, after in itertools.pairwise(rows):
        assert before["completed_at"] <= after["started_at"], "two steps overlapped"
    assert [r["id"] for r in rows] == [r.execution_id for r in responses]
    left = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.execution_locks WHERE tenant = $1", tenant)
    assert left == 0


async def _queued(engine: Any, tenant: str, execution_id: str, timeout: float = 20) -> None:
    """Until the execution holds the asset, waits in its queue, or has finished."""
    eid = uuid.UUID(execution_id)

    async def queued() -> bool:
        return bool(await engine.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM execution.execution_locks WHERE tenant = $1 AND "
            "execution_id = $2) OR EXISTS (SELECT 1 FROM execution.execution_lock_waiters "
            "WHERE tenant = $1 AND execution_id = $2) OR EXISTS (SELECT 1 FROM "
            "execution.executions WHERE execution_id = $3 AND completed_at IS NOT NULL)",
            tenant, execution_id, eid))

    await wait_for(queued, timeout=timeout, interval=0.01,
                   what=f"{execution_id} to hold, queue for or finish with its lock")


async def test_opposite_asset_orders_never_deadlock(engine: Any) -> None:
    tenant = f"dl{uuid.uuid4().hex[:6]}"
    reqs = []
    for i in range(6):
        first, second = ("asset-a", "asset-b") if i % 2 else ("asset-b", "asset-a")
        reqs.append(request([shell("one", "sleep 0.05", target=first, idempotent=True),
                             shell("two", "sleep 0.05", target=second, deps=["one"],
                                   idempotent=True)], tenant=tenant))
    responses = await asyncio.gather(*[engine.execute(r, wait=False) for r in reqs])
    results = await asyncio.wait_for(
        asyncio.gather(*[engine.result(r.execution_id) for r in responses]), 60)
    assert {r.status.value for r in results} == {"completed"}


async def test_a_permission_revoked_between_two_steps_stops_the_next_step(
        engine: Any, tmp_path: Path) -> None:
    actor = f"temp-{uuid.uuid4().hex[:6]}"
    go = tmp_path / "go"
    started = tmp_path / "started"
    req = request([shell("first", f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done"),
                   shell("second", "echo should-not-run", deps=["first"])], actor=actor)
    resp = await engine.execute(req, wait=False)
    await wait_for(file_exists(started), timeout=30, what="the first step to start")
    rule_id = f"revoke-{actor}"
    await engine.pool.execute(
        "INSERT INTO execution.rbac_rules (id, effect, subjects, actions, description) "
        "VALUES ($1, 'deny', $2, ARRAY['execute'], 'access revoked mid-run')",
        rule_id, [f"actor:{actor}"])
    try:
        go.touch()
        result = await engine.result(resp.execution_id)
    finally:
        await engine.pool.execute("DELETE FROM execution.rbac_rules WHERE id = $1", rule_id)
    first, second = result.steps
    assert first.status.value == "completed"
    assert second.status.value == "failed" and "denied" in (second.error or "")
    assert rule_id in (second.error or "")
    assert result.status.value == "failed"
    audit = await engine.pool.fetch(
        "SELECT step_id, decision, rule_id FROM execution.rbac_audit WHERE actor = $1 "
        "AND execution_id = $2 ORDER BY at", actor, resp.execution_id)
    assert [(a["step_id"], a["decision"]) for a in audit] == [("first", "allow"),
                                                             ("second", "deny")]
    assert audit[1]["rule_id"] == rule_id


async def test_prod_is_strict_and_rbac_refusal_starts_nothing(engine: Any) -> None:
    before = await engine.pool.fetchval("SELECT count(*) FROM execution.idempotency_records")
    from opsconductor.starter.client import SubmissionRefused

    with pytest.raises(SubmissionRefused, match="denied"):
        await engine.execute(request([step("s")], actor="mallory", environment="prod"))
    with pytest.raises(SubmissionRefused, match="no-rm-anywhere"):
        await engine.execute(request([step("s", "rm", args="-rf /tmp/x")]))
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.idempotency_records") == before
    ok = await engine.execute(request([step("s")], actor="alice", environment="prod"),
                              wait=True)
    assert ok.result.status.value == "completed"


async def test_fifty_identical_requests_at_once_make_one_execution(engine: Any) -> None:
    req = request([step("s")])
    responses = await asyncio.gather(*[engine.execute(req, wait=False) for _ in range(50)])
    assert len({r.execution_id for r in responses}) == 1
    assert sum(not r.duplicate for r in responses) == 1
    key_count = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.idempotency_records WHERE execution_id = $1",
        uuid.UUID(responses[0].execution_id))
    assert key_count == 1
    assert (await engine.result(responses[0].execution_id)).status.value == "completed"


async def test_a_failed_run_may_run_again_linked_to_the_previous(engine: Any) -> None:
    req = request([shell("s", "exit 1")])
    first = await engine.execute(req, wait=True)
    assert first.result.status.value == "failed"
    second = await engine.execute(req, wait=True)
    assert not second.duplicate and second.execution_id != first.execution_id
    assert second.previous_execution_id == first.execution_id
    assert second.workflow_id == first.workflow_id + "-r2"


async def test_a_step_whose_lease_expired_refuses_to_act(db_pool: Any, tmp_path: Path,
                                                         engine: Any) -> None:
    tenant, eid = f"fence{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    tokens = await mutex.acquire(db_pool, tenant, ["locked-host"], eid, "test", 0.2, timeout=5)
    await db_pool.execute(
        "INSERT INTO execution.executions (execution_id, workflow_id, tenant, actor, "
        "environment, mode, sla_class, idempotency_key, plan_hash, spec) VALUES "
        "($1, $2, $3, 'alice', 'dev', 'immediate', 'fast', 'k', 'h', '{}'::jsonb)",
        uuid.UUID(eid), f"wf-{eid}", tenant)
    await wait_for(lambda: lease_expired(db_pool, tenant, "locked-host", eid), timeout=5,
                   interval=0.02, what="the 0.2 s lease on locked-host to expire")
    marker = tmp_path / "acted"
    spec = StepSpec(id="s", tool="shell", kind=StepKind.COMMAND,
                    action_class=ActionClass.MODIFY, inputs={"command": f"touch {marker}"},
                    command=f"touch {marker}", target="locked-host", order=1,
                    failure_handling=FailureHandling.ABORT, idempotent=True)
    policy = TimeoutPolicy(sla_class=SlaClass.FAST, action_class=ActionClass.MODIFY,
                           step_timeout_seconds=5, execution_timeout_seconds=30,
                           approval_timeout_seconds=30, max_attempts=1)
    with pytest.raises(ApplicationError) as info:
        steps = StepActivities.from_settings(engine.settings, db_pool)
        await ActivityEnvironment().run(steps.run_step, StepRunInput(
            execution_id=eid, workflow_id=f"wf-{eid}", tenant=tenant, actor="alice",
            environment=Environment.DEV, step=spec, policy=policy, fencing_tokens=tokens))
    assert info.value.type == "LockLost" and info.value.non_retryable
    assert "lock lost" in str(info.value)
    assert not marker.exists()


async def test_cancel_while_waiting_for_a_lock_ends_promptly_and_leaves_the_queue(
        engine: Any, tmp_path: Path) -> None:
    tenant = f"wait{uuid.uuid4().hex[:6]}"
    started = tmp_path / "started"
    holder = await engine.execute(request(
        [shell("hold", f"touch {started}; sleep 60", target="shared-host", idempotent=True)],
        tenant=tenant), wait=False)
    await wait_for(file_exists(started), timeout=30, what="the first step to start")
    waiter = await engine.execute(request([shell("s", "true", target="shared-host")],
                                          tenant=tenant), wait=False)
    await wait_for(lambda: lock_waiting(engine.pool, tenant, waiter.execution_id), timeout=20,
                   what="the second execution to queue behind the holder's lock")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await engine.cancel(waiter.execution_id, "alice", "not needed")).accepted
    result = await engine.result(waiter.execution_id)
    assert result.status.value == "cancelled"
    assert loop.time() - t0 < 8
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.execution_lock_waiters WHERE execution_id = $1",
        waiter.execution_id) == 0
    assert (await engine.cancel(holder.execution_id, "alice", "done")).accepted
    assert (await engine.result(holder.execution_id)).status.value == "cancelled"
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.execution_locks WHERE tenant = $1", tenant) == 0
