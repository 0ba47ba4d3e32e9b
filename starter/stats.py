"""`opsconductor stats` and `opsconductor history ASSET`: what the mirror says, in SQL.

Success rate, duration percentiles by SLA class and by tool, SLA compliance, the waits (queue:
submission to first step; locks: requested to acquired; approval: requested to decided) and
the tools and assets that fail most, over a window and optionally one tenant.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

ENDED = ["completed", "failed", "cancelled", "timeout", "partial", "rejected"]

_SCOPE = """
  SELECT * FROM execution.executions
  WHERE created_at >= $1 AND ($2::text IS NULL OR tenant = $2)
"""
_PCTL = ("percentile_cont(0.5) WITHIN GROUP (ORDER BY {x}) AS p50, "
         "percentile_cont(0.95) WITHIN GROUP (ORDER BY {x}) AS p95, "
         "percentile_cont(0.99) WITHIN GROUP (ORDER BY {x}) AS p99")


def parse_window(text: str) -> timedelta:
    """`30m`, `24h`, `7d`, `90s` -> a duration (ValueError otherwise)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise ValueError(f"invalid window {text!r}: use a number and s, m, h, d or w (24h)")
    return timedelta(seconds=float(text[:-1]) * units[text[-1]])


def _round(row: Any) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in dict(row).items()}


async def stats(pool: Any, *, since: datetime, tenant: str | None = None,
                top: int = 5) -> dict[str, Any]:
    """The operator's numbers since `since` (durations in seconds)."""
    args = (since, tenant)
    totals = await pool.fetchrow(f"""
        WITH e AS ({_SCOPE})
        SELECT count(*) AS submitted,
               count(*) FILTER (WHERE status::text = ANY($3)) AS ended,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status IN ('failed', 'timeout', 'rejected')) AS failed,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE status = 'partial') AS partial,
               count(*) FILTER (WHERE NOT status::text = ANY($3)) AS in_flight,
               count(*) FILTER (WHERE status::text = ANY($3) AND status <> 'cancelled')
                 AS sla_judged,
               count(*) FILTER (WHERE status::text = ANY($3) AND status NOT IN
                 ('cancelled', 'timeout') AND (deadline_at IS NULL OR completed_at <= deadline_at))
                 AS sla_met
        FROM e""", *args, ENDED)
    by_sla = await pool.fetch(f"""
        WITH e AS ({_SCOPE})
        SELECT sla_class::text AS sla_class, count(*) AS ended,
               avg((status = 'completed')::int)::float AS success_rate,
               {_PCTL.format(x="extract(epoch FROM completed_at - created_at)")}
        FROM e WHERE status::text = ANY($3) AND completed_at IS NOT NULL
        GROUP BY 1 ORDER BY 1""", *args, ENDED)
    by_tool = await pool.fetch(f"""
        WITH e AS ({_SCOPE})
        SELECT s.tool, count(*) AS steps,
               count(*) FILTER (WHERE s.status IN ('failed', 'timeout')) AS failed,
               {_PCTL.format(x="extract(epoch FROM s.completed_at - s.started_at)")}
        FROM e JOIN execution.step_runs s USING (execution_id)
        WHERE s.started_at IS NOT NULL AND s.completed_at IS NOT NULL
        GROUP BY 1 ORDER BY 2 DESC""", *args)
    waits = await pool.fetchrow(f"""
        WITH e AS ({_SCOPE}),
        q AS (SELECT extract(epoch FROM min(s.started_at) - e.created_at) AS v
              FROM e JOIN execution.step_runs s USING (execution_id)
              WHERE s.started_at IS NOT NULL GROUP BY e.execution_id, e.created_at),
        l AS (SELECT extract(epoch FROM a.created_at - r.created_at) AS v
              FROM e JOIN execution.event_log r USING (execution_id)
              JOIN execution.event_log a USING (execution_id)
              WHERE r.event_type = 'locks.requested' AND a.event_type = 'locks.acquired'),
        ap AS (SELECT extract(epoch FROM p.decided_at - p.requested_at) AS v
               FROM e JOIN execution.approvals p USING (execution_id)
               WHERE p.decided_at IS NOT NULL)
        SELECT (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM q) AS queue_p50,
               (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v) FROM q) AS queue_p95,
               (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM l) AS lock_p50,
               (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v) FROM l) AS lock_p95,
               (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM ap)
                 AS approval_p50,
               (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v) FROM ap)
                 AS approval_p95""", *args)
    failing = await pool.fetch(f"""
        WITH e AS ({_SCOPE})
        SELECT 'tool' AS kind, s.tool AS name, count(*) AS failures
        FROM e JOIN execution.step_runs s USING (execution_id)
        WHERE s.status IN ('failed', 'timeout') GROUP BY 2
        UNION ALL
        SELECT 'asset', coalesce(s.target, 'localhost'), count(*)
        FROM e JOIN execution.step_runs s USING (execution_id)
        WHERE s.status IN ('failed', 'timeout') GROUP BY 2
        ORDER BY failures DESC, name""", *args)
    t = dict(totals)
    decided = t["completed"] + t["failed"] + t["partial"]
    return {
        "since": since.isoformat(), "tenant": tenant, **t,
        "success_rate": round(t["completed"] / decided, 4) if decided else None,
        "sla_compliance": round(t["sla_met"] / t["sla_judged"], 4) if t["sla_judged"] else None,
        "by_sla_class": [_round(r) for r in by_sla],
        "by_tool": [_round(r) for r in by_tool],
        "waits_seconds": _round(waits),
        "top_failing_tools": [dict(r) for r in failing if r["kind"] == "tool"][:top],
        "top_failing_assets": [dict(r) for r in failing if r["kind"] == "asset"][:top],
    }


async def history(pool: Any, asset: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """Every step whose target is `asset` (as the plan named it; `localhost` is the worker's
    own machine, also for steps with no target), newest first."""
    rows = await pool.fetch("""
        SELECT s.execution_id::text, e.workflow_id, e.tenant, e.actor, e.title,
               e.status::text AS execution_status, s.step_id, s.tool, s.target, s.status,
               s.attempts, s.exit_code, s.error, s.started_at, s.completed_at
        FROM execution.step_runs s JOIN execution.executions e USING (execution_id)
        WHERE coalesce(s.target, 'localhost') = $1
        ORDER BY s.started_at DESC NULLS LAST, e.created_at DESC LIMIT $2""", asset, limit)
    return [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in dict(r).items()}
            for r in rows]
