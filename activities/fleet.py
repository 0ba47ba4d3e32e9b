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

from opsconductor.activities.assets import load_inventory
from opsconductor.activities.fanout import VariantOutcome
from opsconductor.activities.outputs import StoredStream, store_streams
from opsconductor.schema.config import Settings
from opsconductor.schema.fleet import Fleet
from opsconductor.schema.messages import OutputRef
from opsconductor.schema.outputs import escape_text, truncated_bytes
from opsconductor.schema.spec import StepSpec


class FleetTargetsError(ValueError):
    """A selector that cannot be resolved or names nothing."""


def fleet_targets(fleet: Fleet, settings: Settings) -> list[str]:
    """The fleet's targets in a stable order: as listed, or the selected assets by id."""
    if fleet.targets is not None:
        return list(fleet.targets)
    assert fleet.selector is not None
    if settings.asset_service_url:
        raise FleetTargetsError("a target selector needs the inventory file; with the Asset "
                                "Service list the targets")
    path = settings.inventory_path()
    if path is None:
        raise FleetTargetsError("a target selector needs an inventory: set OPSC_INVENTORY")
    chosen = sorted(a.id for a in load_inventory(path).assets
                    if fleet.selector.matches(a.tags))
    if not chosen:
        raise FleetTargetsError(f"the selector {fleet.selector.model_dump()} matches no asset "
                                f"in {path}")
    return chosen


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
