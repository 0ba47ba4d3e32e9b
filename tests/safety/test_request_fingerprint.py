"""Idempotency means "the same request": environment, approvals, targets, timeouts, mode and
the caller's own retry key all count, and a reused key never merges two requests."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from opsconductor.safety.idempotency import request_fingerprint
from opsconductor.starter.client import DuplicateKeyConflict
from tests.helpers import pending, request, shell, until

BASE = {"tenant": "acme", "actor": "alice", "environment": "dev",
        "plan": {"plan": {"steps": [{"id": "a", "tool": "noop"}]}}}


@pytest.mark.parametrize("change", [
    {"environment": "prod"},
    {"approval_level": 2},
    {"approval_points": [{"step_id": "a", "reason": "r", "approver_role": "approver"}]},
    {"timeouts": {"execution_timeout_seconds": 30}},
    {"max_parallel": 4},
    {"mode": "background"},
    {"sla_class": "long"},
    {"metadata": {"ticket": "CHG-2"}},
    {"plan": {"plan": {"steps": [{"id": "a", "tool": "noop", "inputs": {"target": "web-02"}}]}}},
])
def test_every_field_that_changes_the_run_changes_the_fingerprint(change: dict[str, Any]) -> None:
    assert request_fingerprint({**BASE, **change}) != request_fingerprint(BASE)


def test_tracing_ids_and_key_order_do_not_change_it() -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert request_fingerprint({**reordered, "trace_id": "t-1"}) == request_fingerprint(BASE)


async def test_dev_run_then_prod_resubmission_starts_a_new_gated_run(
        engine: Any, tmp_path: Path) -> None:
    tenant = f"fp-{uuid.uuid4().hex[:8]}"
    steps = [shell("touch", f"touch {tmp_path / 'ran'}", idempotent=True)]
    dev = await engine.execute(request(steps, tenant=tenant, unique=False), wait=True)
    assert dev.status.value == "completed" and not dev.duplicate

    prod = await engine.execute(request(steps, tenant=tenant, unique=False, environment="prod",
                                        approval_level=2), wait=False)
    assert not prod.duplicate and prod.execution_id != dev.execution_id
    await until(engine, prod.execution_id, pending)  # gated: waits for two approvers
    # the identical prod request is the duplicate, not the dev one
    again = await engine.execute(request(steps, tenant=tenant, unique=False, environment="prod",
                                         approval_level=2), wait=False)
    assert again.duplicate and again.execution_id == prod.execution_id
    await engine.cancel(prod.execution_id, actor="alice", reason="test over")


async def test_a_reused_caller_key_with_another_request_is_refused(engine: Any) -> None:
    tenant = f"fp-{uuid.uuid4().hex[:8]}"
    key = f"stage-d-{uuid.uuid4().hex}"
    req = request([shell("one", "true", idempotent=True)], tenant=tenant, idempotency_key=key)
    first = await engine.execute(req, wait=True)
    assert first.status.value == "completed" and not first.duplicate
    retry = await engine.execute({**req, "trace_id": "retry-2"}, wait=False)  # Stage D retries
    assert retry.duplicate and retry.execution_id == first.execution_id
    with pytest.raises(DuplicateKeyConflict, match=key):
        await engine.execute(request([shell("two", "false", idempotent=True)], tenant=tenant,
                                     idempotency_key=key), wait=False)
    runs = await engine.pool.fetch(
        "SELECT execution_id FROM execution.idempotency_records WHERE tenant = $1", tenant)
    assert [str(r["execution_id"]) for r in runs] == [first.execution_id]
