"""A plan of thousands of steps runs across continue-as-new (marker `scale`).

The workflow hands over to a new run of the same workflow id whenever Temporal suggests it;
the test proves that nothing is lost at the boundaries: every step runs exactly once, the
progress query, the mirror and the result agree, every run's history stays bounded, and a
cancel sent after a hand-over still stops the execution.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from typing import Any

import pytest

from opsconductor.schema.limits import MAX_PLAN_STEPS
from opsconductor.schema.validation import RequestValidationError
from tests.helpers import events, request, shell, step, until, wait_for

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.scale]
STEPS = int(os.environ.get("BIG_PLAN_STEPS", "5000"))


def plan(count: int, prefix: str = "s") -> list[dict]:
    """`count` no-op steps in chains of ten, so the plan has real dependencies."""
    return [step(f"{prefix}{i:05d}", deps=[f"{prefix}{i - 1:05d}"] if i % 10 else [])
            for i in range(count)]


async def runs_of(engine: Any, workflow_id: str) -> list[Any]:
    """Every run of the workflow id, oldest first, with its history."""
    found = [w async for w in engine.temporal.list_workflows(f"WorkflowId = '{workflow_id}'")]
    found.sort(key=lambda w: w.start_time)
    return [(w, await engine.temporal.get_workflow_handle(
        workflow_id, run_id=w.run_id).fetch_history()) for w in found]


async def test_a_plan_of_thousands_of_steps_completes_across_continue_as_new(
        engine: Any) -> None:
    resp = await engine.execute(request(plan(STEPS), max_parallel=20), wait=False)
    ident = uuid.UUID(resp.execution_id)

    async def continued() -> bool:
        return any(e["event_type"] == "execution.continued"
                   for e in await events(engine.pool, resp.execution_id))

    await wait_for(continued, what="the first hand-over to a new run", timeout=600)
    mid = await until(engine, resp.workflow_id, lambda p: p.steps_completed > 0, timeout=60)
    rows_done = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.step_runs WHERE execution_id = $1"
        " AND status = 'completed'", ident)
    assert mid.steps_total == STEPS and mid.status.value == "running"
    assert mid.steps_completed <= rows_done + 20  # the mirror lags the workflow by a batch

    result = await asyncio.wait_for(engine.result(resp.execution_id), 1800)
    assert result.status.value == "completed", result.error
    assert result.steps_total == STEPS
    done = await until(engine, resp.workflow_id, lambda p: p.status.value == "completed")
    assert done.steps_completed == STEPS and done.percent == 100.0
    row = await engine.pool.fetchrow(
        "SELECT status::text, steps_completed, run_id FROM execution.executions"
        " WHERE execution_id = $1", ident)
    attempts = await engine.pool.fetch(
        "SELECT step_id, count(*) AS n FROM execution.step_attempts WHERE execution_id = $1"
        " GROUP BY step_id", ident)
    runs = await runs_of(engine, resp.workflow_id)
    sizes = [len(history.to_json()) for _, history in runs]
    lengths = [len(history.events) for _, history in runs]
    ran = [a["n"] for a in attempts]
    print(f"\n{STEPS}-step plan: {len(runs)} runs, history events per run {lengths}, "
          f"bytes per run {sizes}, {sum(sizes) // STEPS:,} history bytes per step; "
          f"{len(ran)} steps with attempts, {sum(n > 1 for n in ran)} run more than once, "
          f"{row['steps_completed']} completed in the mirror")
    assert row["status"] == "completed" and row["steps_completed"] == STEPS
    assert row["run_id"] == runs[-1][0].run_id  # the mirror links to the newest run
    assert len(runs) >= 2 and all(w.status.name == "CONTINUED_AS_NEW" for w, _ in runs[:-1])
    assert max(lengths) < 20_000 and max(sizes) < 16 * 1024 * 1024
    assert len(attempts) == STEPS and all(a["n"] == 1 for a in attempts)  # each ran once
    keys = await engine.pool.fetchval(
        "SELECT count(*) - count(DISTINCT event_key) FROM execution.event_log"
        " WHERE execution_id = $1", ident)
    assert keys == 0


async def test_a_cancel_after_a_hand_over_stops_the_execution(engine: Any) -> None:
    resp = await engine.execute(request(plan(3000, "c"), max_parallel=20), wait=False)

    async def continued() -> bool:
        return any(e["event_type"] == "execution.continued"
                   for e in await events(engine.pool, resp.execution_id))

    await wait_for(continued, what="the first hand-over to a new run", timeout=600)
    outcome = await engine.cancel(resp.execution_id, actor="alice", reason="enough")
    assert outcome.accepted, outcome.reason
    result = await asyncio.wait_for(engine.result(resp.execution_id), 300)
    assert result.status.value == "cancelled"
    done = sum(s.status.value == "completed" for s in
               (await engine.progress(resp.workflow_id)).steps)
    print(f"\ncancel after a hand-over: {done} of 3000 steps completed, then cancelled")
    assert 0 < done < 3000


async def test_a_plan_over_the_step_limit_is_refused_before_anything_is_written(
        engine: Any) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RequestValidationError, match=r"steps"):
        await engine.execute(request(plan(MAX_PLAN_STEPS + 1), tenant=tenant))
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.idempotency_records WHERE tenant = $1", tenant) == 0


async def test_a_spec_temporal_would_refuse_even_compressed_is_refused_first(
        engine: Any) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    noise = [base64.b64encode(os.urandom(190_000)).decode() for _ in range(15)]
    req = request([shell(f"n{i}", f"echo {blob}") for i, blob in enumerate(noise)],
                  tenant=tenant)
    with pytest.raises(RequestValidationError, match="once encoded and compressed"):
        await engine.execute(req)
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.idempotency_records WHERE tenant = $1", tenant) == 0
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM execution.executions WHERE tenant = $1", tenant) == 0
