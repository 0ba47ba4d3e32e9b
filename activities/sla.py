"""SLA alerts: executions whose ETA passes their SLA deadline (at risk), or whose deadline
passed (violated), become an event, a metric and a signed webhook.

The SLA deadline is the submission time plus the SLA class's execution budget (the timeout
policy's `execution_timeout_seconds`, the largest over the plan's action classes, or the
request's own override). The ETA is now plus the remaining steps' estimates, scaled by how the
completed steps compared with theirs. Every worker may run the check: the alert's event has a
fixed key per execution and kind, so only the worker whose INSERT wins records the metric and
sends the webhook (HMAC-SHA256 over the body, retried with backoff).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from opentelemetry import metrics

from opsconductor.schema.config import Settings

log = logging.getLogger("opsconductor.sla")

DEFAULT_ESTIMATE_SECONDS = 5.0
IN_FLIGHT = ("queued", "approved", "running")
RECENT = timedelta(minutes=30)  # ended runs looked at for a deadline they overran
DELIVERY_ATTEMPTS = 4


@dataclass
class Verdict:
    kind: str  # "at_risk" | "violated"
    execution_id: str
    workflow_id: str
    tenant: str
    environment: str
    sla_class: str
    status: str
    deadline: datetime
    eta: datetime | None

    def body(self) -> dict[str, Any]:
        return {"kind": f"sla.{self.kind}", "execution_id": self.execution_id,
                "workflow_id": self.workflow_id, "tenant": self.tenant,
                "environment": self.environment, "sla_class": self.sla_class,
                "status": self.status, "deadline": self.deadline.isoformat(),
                "eta": self.eta.isoformat() if self.eta else None}


def estimate_remaining(steps: list[dict[str, Any]], now: datetime) -> float:
    """Seconds the unfinished steps still need: their estimates (a running step's less what
    it already ran), scaled by actual/estimated of the finished ones (between 0.5x and 10x)."""
    spent = planned = remaining = 0.0
    for s in steps:
        estimate = float(s.get("estimate") or DEFAULT_ESTIMATE_SECONDS)
        if s["completed_at"] is not None and s["started_at"] is not None:
            spent += (s["completed_at"] - s["started_at"]).total_seconds()
            planned += estimate
        elif s["status"] in ("pending", "waiting", "running"):
            ran = (now - s["started_at"]).total_seconds() if s["started_at"] else 0.0
            remaining += max(estimate - ran, 0.0) if s["status"] == "running" else estimate
    factor = min(max(spent / planned, 0.5), 10.0) if planned > 0 else 1.0
    return remaining * factor


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class SlaMonitor:
    """`check()` judges every in-flight (and recently ended) execution once."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings,
                 meter: metrics.Meter | None = None) -> None:
        self.pool = pool
        self.settings = settings
        meter = meter or metrics.get_meter("opsconductor")
        self.alerts = meter.create_counter(
            "opsc_sla_alerts_total", description="SLA alerts raised, by kind and SLA class")
        self.deliveries = meter.create_counter(
            "opsc_alert_deliveries_total", description="Alert webhook deliveries, by outcome")

    async def check(self, now: datetime | None = None) -> list[Verdict]:
        """Raise each new alert; return the ones this call raised."""
        now = now or datetime.now(UTC)
        raised = []
        for verdict in await self.judge(now):
            if await self._record(verdict, now):
                self.alerts.add(1, {"kind": verdict.kind, "sla_class": verdict.sla_class})
                raised.append(verdict)
                await self.deliver(verdict)
        return raised

    async def judge(self, now: datetime) -> list[Verdict]:
        rows = await self.pool.fetch(
            """
            SELECT e.execution_id::text AS execution_id, e.workflow_id, e.tenant,
                   e.environment::text AS environment, e.sla_class::text AS sla_class,
                   e.status::text AS status, e.completed_at,
                   e.created_at + make_interval(secs => coalesce(
                     (e.spec -> 'timeouts' ->> 'execution_timeout_seconds')::float8,
                     (SELECT max(p.execution_timeout_seconds) FROM execution.timeout_policies p
                      WHERE p.sla_class = e.sla_class AND p.action_class IN
                        (SELECT s.action_class FROM execution.step_runs s
                         WHERE s.execution_id = e.execution_id)),
                     (SELECT max(p.execution_timeout_seconds) FROM execution.timeout_policies p
                      WHERE p.sla_class = e.sla_class))) AS deadline,
                   (SELECT json_agg(json_build_object(
                      'status', s.status, 'started_at', s.started_at,
                      'completed_at', s.completed_at,
                      'estimate', (SELECT (x ->> 'estimated_duration')::float8
                                   FROM jsonb_array_elements(e.spec -> 'steps') x
                                   WHERE x ->> 'id' = s.step_id)))
                    FROM execution.step_runs s WHERE s.execution_id = e.execution_id)
                     AS steps
            FROM execution.executions e
            WHERE e.status::text = ANY($1) OR e.completed_at > $2
            """, list(IN_FLIGHT), now - RECENT)
        out = []
        for r in rows:
            deadline = r["deadline"]
            facts = dict(execution_id=r["execution_id"], workflow_id=r["workflow_id"],
                         tenant=r["tenant"], environment=r["environment"],
                         sla_class=r["sla_class"], status=r["status"], deadline=deadline)
            if r["status"] not in IN_FLIGHT:  # ended: violated if it ended late or timed out
                if r["status"] == "timeout" or (r["completed_at"] and r["completed_at"] > deadline):
                    out.append(Verdict("violated", eta=r["completed_at"], **facts))
                continue
            if now > deadline:
                out.append(Verdict("violated", eta=None, **facts))
                continue
            steps = [{**s, "started_at": _ts(s["started_at"]),
                      "completed_at": _ts(s["completed_at"])}
                     for s in json.loads(r["steps"] or "[]")]
            eta = now + timedelta(seconds=estimate_remaining(steps, now))
            if eta > deadline:
                out.append(Verdict("at_risk", eta=eta, **facts))
        return out

    async def _record(self, v: Verdict, now: datetime) -> bool:
        """The alert's event, once per execution and kind; True if this call wrote it."""
        message = (f"SLA deadline {v.deadline.isoformat()} passed" if v.kind == "violated"
                   else f"ETA {v.eta.isoformat() if v.eta else '?'} is after the SLA "
                        f"deadline {v.deadline.isoformat()}")
        written = await self.pool.fetchval(
            """
            INSERT INTO execution.event_log (execution_id, event_key, event_type,
                                                    message, data, created_at)
            VALUES ($1::uuid, $2, $3, $4, $5::jsonb, $6)
            ON CONFLICT (execution_id, event_key) DO NOTHING RETURNING id
            """, v.execution_id, f"sla:{v.kind}", f"sla.{v.kind}", message,
            json.dumps(v.body()), now)
        return written is not None

    async def deliver(self, v: Verdict) -> bool:
        """POST the alert to the configured webhook, retried with backoff; False if it was
        not delivered (or no webhook is configured)."""
        url = self.settings.alert_webhook_url
        if not url:
            return False
        body = json.dumps(v.body(), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Opsc-Event": f"sla.{v.kind}"}
        secret = self.settings.alert_webhook_secret
        if secret is not None:
            headers["X-Opsc-Signature"] = sign(secret.get_secret_value(), body)
        async with httpx.AsyncClient(timeout=10) as http:
            for attempt in range(1, DELIVERY_ATTEMPTS + 1):
                try:
                    resp = await http.post(url, content=body, headers=headers)
                    if resp.status_code < 300:
                        self.deliveries.add(1, {"outcome": "delivered"})
                        return True
                    problem = f"HTTP {resp.status_code}"
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                log.warning("alert %s for %s not delivered (attempt %d): %s", v.kind,
                            v.execution_id, attempt, problem)
                if attempt < DELIVERY_ATTEMPTS:
                    await asyncio.sleep(0.2 * 2 ** attempt)
        self.deliveries.add(1, {"outcome": "failed"})
        return False


def _ts(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
