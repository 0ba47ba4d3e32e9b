"""Metrics and traces against the real stack: known executions, then `/metrics` over HTTP and
the span tree from the SDK's in-memory exporter."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from opsconductor.activities.telemetry import SCOPE, MirrorGauges
from tests.helpers import assert_eventually, request, shell, step, step_rows
from tests.observability.conftest import Observed, sample

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_metrics_after_known_executions(observed: Observed) -> None:
    engine = observed.engine
    tenant = f"obs-{uuid.uuid4().hex[:8]}"
    ok = await engine.execute(request([shell("a", "echo one"), shell("b", "echo two",
                                                                     deps=["a"])],
                                      tenant=tenant), wait=True)
    bad = await engine.execute(request([shell("a", "exit 3"), step("b", deps=["a"])],
                                       tenant=tenant, timeouts={"max_attempts": 2}), wait=True)
    assert (ok.result.status.value, bad.result.status.value) == ("completed", "failed")
    attempts = (await step_rows(engine.pool, bad.execution_id))["a"]["attempts"]
    assert attempts == 2

    async def recorded() -> dict[Any, float]:
        # the workflow's metrics reach /metrics when the runtime's buffer is next drained
        got = await observed.scrape()
        assert sample(got, "opsc_executions_total", tenant=tenant) == 2, got
        assert sample(got, "opsc_executions_total", tenant=tenant, status="completed",
                      environment="dev") == 1
        assert sample(got, "opsc_executions_total", tenant=tenant, status="failed") == 1
        assert sample(got, "opsc_execution_duration_seconds_count", status="completed") == 1
        assert sample(got, "opsc_execution_duration_seconds_count", status="failed") == 1
        assert sample(got, "opsc_queue_wait_seconds_count") == 2
        assert sample(got, "opsc_sla_outcomes_total", met="true") == 2
        return got

    got = await assert_eventually(recorded, what="both executions recorded at /metrics",
                                  timeout=90)
    # steps: two completed, the failing one attempted twice (one retry), none left running
    assert sample(got, "opsc_step_duration_seconds_count", tool="shell",
                  outcome="completed") == 2
    assert sample(got, "opsc_step_duration_seconds_count", tool="shell") == 2 + attempts
    assert sample(got, "opsc_step_retries_total", tool="shell") == attempts - 1
    assert sample(got, "opsc_steps_in_flight", tool="shell") == 0
    # second-scaled buckets, and Temporal's own SDK metrics beside ours
    assert ("opsc_step_duration_seconds_bucket",
            frozenset({("tool", "shell"), ("outcome", "completed"), ("le", "0.5")})) in got
    assert sample(got, "temporal_workflow_completed_total") >= 1
    assert sample(got, "temporal_workflow_failed_total") >= 1
    assert sample(got, "temporal_workflow_task_execution_latency_seconds_count") >= 1
    # gauges read from the mirror agree with it
    gauges = MirrorGauges(engine.pool,
                          observed.telemetry.meter_provider.get_meter(SCOPE))
    await gauges.refresh()
    open_dlq = await engine.pool.fetchval(
        "SELECT count(*) FROM execution.execution_dlq WHERE status = 'open'")
    assert open_dlq >= 1
    assert sample(await observed.scrape(), "opsc_dlq_depth") == open_dlq


async def test_span_tree_continues_the_request_trace(observed: Observed) -> None:
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    resp = await observed.engine.execute(request(
        [shell("a", "echo one"), step("b", deps=["a"])],
        trace_id=f"00-{trace_id}-{parent_id}-01"), wait=True)
    assert resp.result.status.value == "completed"

    def tree() -> dict[str, Any]:
        spans = [s for s in observed.spans.get_finished_spans()
                 if f"{s.context.trace_id:032x}" == trace_id]
        names = {s.name: s for s in spans}
        assert {"opsc.execution", "StartWorkflow:ExecutionWorkflow", "opsc.step a",
                "opsc.target localhost", "opsc.attempt 1", "opsc.execution.end"} <= set(names), \
            sorted(names)
        return names

    spans = await assert_eventually(tree, what="the execution's spans")
    by_id = {s.context.span_id: s for s in observed.spans.get_finished_spans()}

    def parent(name: str) -> Any:
        span = spans[name]
        assert span.parent is not None, name
        return by_id.get(span.parent.span_id)

    root = spans["opsc.execution"]
    assert f"{root.parent.span_id:016x}" == parent_id  # the caller's span is the parent
    assert root.attributes["opsc.execution_id"] == resp.execution_id
    assert root.attributes["opsc.tenant"] == "acme" and root.attributes["opsc.status"] == \
        "completed"
    assert parent("StartWorkflow:ExecutionWorkflow") is root
    assert parent("opsc.step a").name == "RunActivity:run_step"

    def child(of: Any, name: str) -> Any:
        found = [s for s in by_id.values()
                 if s.parent is not None and s.parent.span_id == of.context.span_id
                 and s.name == name]
        assert len(found) == 1, (of.name, name)
        return found[0]

    target = child(spans["opsc.step a"], "opsc.target localhost")
    attempt = child(target, "opsc.attempt 1").attributes
    assert (attempt["opsc.step_id"], attempt["opsc.tool"], attempt["opsc.asset"],
            attempt["opsc.attempt"], attempt["opsc.outcome"]) == ("a", "shell", "localhost", 1,
                                                                  "completed")
    assert attempt["opsc.workflow_id"] == resp.workflow_id
    assert attempt["opsc.tenant"] == "acme" and attempt["opsc.environment"] == "dev"
    end = spans["opsc.execution.end"].attributes
    assert end["opsc.outcome"] == "completed" and end["opsc.queue_wait_seconds"] >= 0
