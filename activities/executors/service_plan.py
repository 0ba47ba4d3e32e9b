"""Catalog tools routed to an OpsConductor service (network, asset, communication): the step
is sent alone as `POST {service}/execute-plan`, the body and the answer as upstream's Stage E
and services define them:

    {"execution_id", "plan": {"steps": [step], "previous_results": [...]},
     "tenant_id", "actor_id"}  ->  {"status", "step_results": [{"status", "output", ...}]}

The step counts as done only when its result's status is `completed` (upstream's rule).
A service that cannot take the request (no connection, 502/503/504: nothing ran) is tried
again with backoff for as long as the step's time allows, heartbeating, so an outage delays
the step and never fails it falsely; once the time is spent the step fails retryable. A
request that was sent but not answered is never repeated here: for a step that is not
idempotent its outcome is unknown, and the attempt record's guard decides after a crash.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from opsconductor.activities.executors.base import StepContext, StepOutcome, cap_text
from opsconductor.activities.service_clients import (
    ExecutePlanRequest,
    PlanServiceClient,
    ServiceError,
    ServiceUnavailable,
    service_url,
)
from opsconductor.schema.catalog import ROUTES, SERVICE_SPELLING, location_of
from opsconductor.schema.config import load_settings
from opsconductor.schema.errors import ErrorType

FIRST_BACKOFF = 0.5  # seconds, doubled per try up to MAX_BACKOFF
MAX_BACKOFF = 5.0


def actor_id_of(actor: str | None) -> int:
    """Upstream's integer principal read from the name alone: a numeric actor, or
    `principal:<id>` (how the Stage E drop-in names an OpsConductor user nobody mapped), is
    that id; any other name is 0 (no mirror to ask: see `principal_of`)."""
    text = (actor or "").removeprefix("principal:")
    return int(text) if text.isdigit() and len(text) <= 9 else 0


PRINCIPAL_SQL = """
SELECT coalesce((SELECT actor_id FROM execution.actor_principals WHERE actor = $1),
                (SELECT actor_id FROM execution.executions WHERE execution_id = $2::uuid))
"""


async def principal_of(ctx: StepContext) -> int:
    """The integer principal the services' `actor_id: int` takes: the number the mirror's
    execution.actor_principals keeps for this actor (an operator's mapping, an OpsConductor
    id, or the one the mirror handed out when it first saw the name), so a named actor
    reaches the service as the same user the mirror's `actor_id` shows; from the name alone
    (`actor_id_of`) when the step runs without a mirror."""
    actor = getattr(ctx.gate, "actor", None)
    pool = getattr(ctx.gate, "pool", None)
    if pool is not None and actor:
        found = await pool.fetchval(PRINCIPAL_SQL, actor, ctx.execution_id)
        if isinstance(found, int):
            return found
    return actor_id_of(actor)


def previous_results(prior: dict[str, Any]) -> list[dict[str, Any]]:
    """Earlier steps' results in upstream's shape (`step_index`, `status`, outputs)."""
    out = []
    for index, (step_id, result) in enumerate(prior.items()):
        r = result if isinstance(result, dict) else {"output": result}
        out.append({"step_index": index, "step_id": step_id, **r})
    return out


def request_for(ctx: StepContext, actor_id: int) -> ExecutePlanRequest:
    step = ctx.step
    tool = SERVICE_SPELLING.get(step.tool, step.tool)
    return ExecutePlanRequest(
        execution_id=ctx.execution_id,
        plan={"steps": [{"id": step.id, "description": step.description, "tool": tool,
                         "inputs": ctx.inputs}],
              "previous_results": previous_results(ctx.prior_outputs)},
        tenant_id=ctx.tenant, actor_id=actor_id)


class ServicePlanExecutor:
    async def run(self, ctx: StepContext) -> StepOutcome:
        location = location_of(ctx.step.tool)
        route = ROUTES[location]
        settings = ctx.settings or load_settings()
        url = service_url(settings, location)
        if not url:
            return StepOutcome(ok=False, error=f"{ctx.step.tool} runs at the {location}: set "
                               f"{route.env}", error_type=ErrorType.CONFIGURATION_ERROR,
                               retryable=False)
        body = request_for(ctx, await principal_of(ctx))
        deadline = time.monotonic() + ctx.timeout
        backoff, tries, last = FIRST_BACKOFF, 0, ""
        async with PlanServiceClient(url, timeout=ctx.timeout) as client:
            while True:
                tries += 1
                left = deadline - time.monotonic()
                try:
                    answer = await client.execute_plan(body, timeout=max(1.0, left),
                                                       actor=getattr(ctx.gate, "actor", None))
                    break
                except ServiceUnavailable as err:
                    last = str(err)
                    ctx.heartbeat(f"{location} unavailable (try {tries}): {err}")
                    if time.monotonic() + backoff >= deadline:
                        return StepOutcome(ok=False, error=(
                            f"{location} unavailable for the step's whole time ({tries} "
                            f"tries, nothing ran): {last}"),
                            error_type=ErrorType.EXECUTOR_ERROR, retryable=True)
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
                except ServiceError as err:
                    # An answer (4xx, 500) is the service's verdict; no answer after sending
                    # is an unknown outcome: only an idempotent step may be sent again.
                    return StepOutcome(ok=False, error=f"{location}: {err}",
                                       error_type=ErrorType.EXECUTOR_ERROR,
                                       retryable=err.status is None and ctx.step.idempotent)
        return outcome_of(answer.model_dump(), location, tries)


def outcome_of(doc: dict[str, Any], location: str, tries: int = 1) -> StepOutcome:
    """The step's outcome from the service's answer: its one step result."""
    results = doc.get("step_results") or []
    if not results:
        return StepOutcome(ok=False, error=f"{location} returned no step result: "
                           f"{doc.get('error_message') or doc.get('status')}",
                           error_type=ErrorType.EXECUTOR_ERROR, retryable=False,
                           output={"service": location, "response": doc})
    r = results[0]
    ok = r.get("status") == "completed"
    stdout = r.get("stdout") or ""
    if not stdout and isinstance(r.get("output"), dict | list):
        stdout = json.dumps(r["output"], sort_keys=True, default=str)
    return StepOutcome(ok=ok, exit_code=r.get("exit_code"), stdout=cap_text(stdout),
                       stderr=cap_text(r.get("stderr") or ""), output={
                           "service": location, "status": r.get("status"),
                           "output": r.get("output"), "tries": tries},
                       error=None if ok else _error(r),
                       error_type=None if ok else ErrorType.EXECUTOR_ERROR, retryable=False)


def _error(result: dict[str, Any]) -> str:
    """What the service said went wrong, wherever its tool put it."""
    out = result.get("output")
    for text in (result.get("error"), result.get("message"),
                 out.get("message") if isinstance(out, dict) else None):
        if text:
            return str(text)
    return f"status {result.get('status')}"
