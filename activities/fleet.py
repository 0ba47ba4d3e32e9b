"""Fleet steps in the step activity: the targets, and one mirror row per target.

The targets run through the same variant runner as the asset-query fan-out
(`opsconductor.activities.fanout.run_variants`): each target authorized on its own asset,
holding its lease while it acts, at most `max_concurrency` at once, no new one started once
more than `max_errors` failed (`opsconductor.schema.fleet`). What this module adds: which
assets a selector names, and `execution.step_targets` rows plus each target's full masked
output in `execution.step_outputs` (under `<step>@<target>`), written as targets start and
end, so progress is visible while the step runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from opsconductor.activities.assets import load_inventory, resolve_targets
from opsconductor.activities.executors.asset_query import tag_list
from opsconductor.activities.fanout import VariantOutcome
from opsconductor.activities.outputs import StoredStream, store_streams
from opsconductor.activities.service_clients import AssetServiceClient
from opsconductor.schema.config import Settings
from opsconductor.schema.fleet import MAX_TARGETS, Fleet, TargetSelector
from opsconductor.schema.messages import OutputRef
from opsconductor.schema.outputs import escape_text, truncated_bytes
from opsconductor.schema.request import ExecutionRequest
from opsconductor.schema.spec import StepSpec
from opsconductor.schema.validation import Problem


class FleetTargetsError(ValueError):
    """A selector that cannot be resolved or names nothing."""


async def fleet_targets(fleet: Fleet, settings: Settings) -> list[str]:
    """The fleet's targets in a stable order: as listed, or the selected assets by id (from
    the Asset Service when one is configured, else the inventory file). An Asset Service
    that cannot be reached raises `AssetServiceError` (retryable: not the plan's fault)."""
    if fleet.targets is not None:
        return list(fleet.targets)
    selector = fleet.selector
    assert selector is not None
    client = AssetServiceClient.from_settings(settings)
    if client is not None:
        records, where = await _service_records(client, selector), "the Asset Service"
    else:
        path = settings.inventory_path()
        if path is None:
            raise FleetTargetsError("a target selector needs an inventory or the Asset "
                                    "Service: set OPSC_INVENTORY or OPSC_ASSET_SERVICE_URL")
        records = [{"id": a.id, "tags": list(a.tags)} for a in load_inventory(path).assets]
        where = str(path)
    chosen = sorted({str(r["id"]) for r in records if "id" in r
                     and selector.matches(tag_list(r.get("tags")))})
    if not chosen:
        raise FleetTargetsError(f"the selector {selector.model_dump()} matches no asset "
                                f"in {where}")
    if len(chosen) > MAX_TARGETS:
        raise FleetTargetsError(f"the selector {selector.model_dump()} matches {len(chosen)} "
                                f"assets; a fleet step may have at most {MAX_TARGETS}")
    return chosen


async def check_fleets(request: ExecutionRequest, settings: Settings,
                       ) -> tuple[list[Problem], dict[str, list[str]]]:
    """A fleet step's targets must exist now (listed ones resolve, a selector matches); and
    each fleet step's resources as the worker will authorize them (the targets' asset ids),
    so that submission judges every target, not the fleet as one."""
    problems: list[Problem] = []
    resources: dict[str, list[str]] = {}
    for i, step in enumerate(request.steps):
        fleet = step.fleet
        if fleet is None:
            continue
        path = f"plan.plan.steps[{i}].targets"
        if fleet.targets is None:
            try:  # a selector answers with asset ids
                resources[step.id] = await fleet_targets(fleet, settings)
            except (FleetTargetsError, OSError, ValueError) as err:
                problems.append(Problem(path=path, message=str(err)))
            continue
        ids, unknown = await resolve_targets(fleet.targets, settings)
        problems += [Problem(path=f"{path}[{j}]", message=f"unknown asset {t!r}")
                     for j, t in enumerate(fleet.targets) if t in unknown]
        resources[step.id] = [ids.get(t) or t for t in fleet.targets]
    return problems, resources


async def _service_records(client: AssetServiceClient,
                           selector: TargetSelector) -> list[dict[str, Any]]:
    """Candidates from the service, narrowed by one tag per query (a tag filter is what its
    read API offers); the selector's full rule is applied to what comes back."""
    probes: list[str | None] = ([selector.tags[0]] if selector.tags
                                else [f"group:{g}" for g in selector.groups] or [None])
    found: dict[str, dict[str, Any]] = {}
    async with client:
        for tag in probes:
            params: dict[str, Any] = {"limit": MAX_TARGETS + 1}
            if tag is not None:
                params["tags"] = tag
            for record in await client.query(**params):
                found[str(record.get("id"))] = record
    return list(found.values())


def fleet_variants(step: StepSpec, targets: list[str]) -> list[StepSpec]:
    return [step.model_copy(update={"id": f"{step.id}@{t}", "target": t, "fleet": None,
                                    "variant_of": step.id}) for t in targets]


class TargetRows:
    """Writes a fleet step's per-target rows and outputs as its targets start and end."""

    def __init__(self, pool: Any, execution_id: str, step_id: str, attempt: int,
                 mask: Callable[[str], str]) -> None:
        self.pool = pool
        self.execution_id = execution_id
        self.step_id = step_id
        self.attempt = attempt
        self.mask = mask

    async def completed(self) -> dict[str, int | None]:
        """Targets an earlier attempt of this step completed, with their exit codes: a new
        attempt (a retry after a crash, an operator's retry) must not act on them again."""
        rows = await self.pool.fetch(
            "SELECT target, exit_code FROM execution.step_targets WHERE execution_id = $1"
            " AND step_id = $2 AND status = 'completed'", self.execution_id, self.step_id)
        return {r["target"]: r["exit_code"] for r in rows}

    async def start(self, variant: StepSpec) -> None:
        await self.pool.execute(
            """
            INSERT INTO execution.step_targets
              (execution_id, step_id, target, variant_id, attempt, status, started_at)
            VALUES ($1, $2, $3, $4, $5, 'running', now())
            ON CONFLICT (execution_id, step_id, target) DO UPDATE SET
              attempt = excluded.attempt, status = 'running', started_at = now(),
              completed_at = NULL, exit_code = NULL, error = NULL
            """, self.execution_id, self.step_id, variant.target, variant.id, self.attempt)

    async def end(self, variant: StepSpec, outcome: VariantOutcome | None) -> None:
        if outcome is None:
            return
        streams = []
        for name in ("stdout", "stderr"):
            text = self.mask(getattr(outcome, name))
            if text:
                data = text.encode("utf-8", "surrogatepass")
                streams.append(StoredStream(OutputRef.model_validate({
                    "stream": name, "execution_id": self.execution_id, "step_id": variant.id,
                    "attempt": self.attempt, "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "truncated": truncated_bytes(text) > 0, "complete": True}), data))
        error = escape_text(self.mask(outcome.error)) if outcome.error else None
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                UPDATE execution.step_targets SET status = $4, exit_code = $5, error = $6,
                  completed_at = now()
                WHERE execution_id = $1 AND step_id = $2 AND target = $3
                """, self.execution_id, self.step_id, variant.target,
                "completed" if outcome.ok else "failed", outcome.exit_code, error)
            await store_streams(conn, streams)

    async def cancelled(self) -> None:
        """The step was cancelled: its running targets were stopped with it."""
        await self.pool.execute(
            "UPDATE execution.step_targets SET status = 'cancelled', completed_at = now(),"
            " error = 'cancelled; its processes were stopped' WHERE execution_id = $1"
            " AND step_id = $2 AND status = 'running'", self.execution_id, self.step_id)

    async def skipped(self, variants: list[StepSpec], why: str) -> None:
        """Targets never started (max_errors exceeded): a row each, so none is unaccounted."""
        if not variants:
            return
        now = datetime.now(UTC)
        await self.pool.executemany(
            """
            INSERT INTO execution.step_targets
              (execution_id, step_id, target, variant_id, attempt, status, error, completed_at)
            VALUES ($1, $2, $3, $4, $5, 'skipped', $6, $7)
            ON CONFLICT (execution_id, step_id, target) DO UPDATE SET
              status = 'skipped', error = excluded.error, completed_at = excluded.completed_at
            """, [(self.execution_id, self.step_id, v.target, v.id, self.attempt, why, now)
                  for v in variants])
