"""Live progress of one execution on a terminal (or as JSON lines)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from opsconductor.starter.terminal import lines

REFRESH_SECONDS = 2.0  # redraw while a step runs: the clock and the output's tail
TERMINAL = {"completed", "failed", "cancelled", "timeout", "partial", "rejected"}
MARKS = {"completed": "✔", "failed": "✘", "timeout": "⏱", "running": "▶", "waiting": "…",
         "skipped": "-", "cancelled": "⊘", "pending": " "}


def render(view: dict[str, Any]) -> str:
    percent = f" {view['percent']:.0f}%" if view.get("percent") is not None else ""
    rows = [f"[{view['status']}]{percent}"
            + (f"  waiting on {view['waiting_on']}" if view.get("waiting_on") else "")]
    for s in view["steps"]:
        rows.append(f"  {MARKS.get(s['status'], '?')} {s['id']:<28} {s['status']:<10}"
                    + (f" attempt {s['attempts']}" if s["attempts"] else "")
                    + (f"  {s['description']}" if s.get("description") else "")
                    + (f"  {s['error'].split(chr(10), 1)[0][:100]}" if s.get("error") else ""))
    return lines(rows)


def timing(view: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """Elapsed time since submission, the estimated completion and the execution deadline,
    as the watch line shows them."""
    now = now or datetime.now(UTC)
    out: dict[str, Any] = {}
    created = _when(view.get("created_at"))
    end = _when(view.get("completed_at")) or now
    if created is not None:
        out["elapsed_seconds"] = round((end - created).total_seconds(), 1)
    eta = _when(view.get("estimated_completion"))
    if eta is not None and view.get("completed_at") is None:
        out["eta_seconds"] = round(max(0.0, (eta - now).total_seconds()), 1)
    deadline = _when(view.get("deadline_at"))
    if deadline is not None:
        out["deadline_in_seconds"] = round((deadline - now).total_seconds(), 1)
    return out


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def render_timing(t: dict[str, Any]) -> str:
    parts = []
    if "elapsed_seconds" in t:
        parts.append(f"elapsed {t['elapsed_seconds']:g}s")
    if "eta_seconds" in t:
        parts.append(f"ETA {t['eta_seconds']:g}s")
    if "deadline_in_seconds" in t:
        left = t["deadline_in_seconds"]
        parts.append(f"deadline in {left:g}s" if left >= 0 else f"deadline passed {-left:g}s ago")
    return "  ".join(parts)


async def output_tail(pool: Any, execution_id: str, step_id: str, chars: int = 400) -> str:
    """The last `chars` of a running step's output (the chunks stored while it runs)."""
    rows = await pool.fetch(
        "SELECT data FROM (SELECT data, seq FROM execution.step_output_chunks "
        "WHERE execution_id = $1 AND step_id = $2 ORDER BY attempt DESC, seq DESC LIMIT 20) t "
        "ORDER BY seq", uuid.UUID(execution_id), step_id)
    text = b"".join(bytes(r["data"]) for r in rows).decode("utf-8", "replace")
    return text[-chars:]


async def watch(client: Any, ident: str, *, json_lines: bool = False,
                refresh: float = REFRESH_SECONDS, print_fn: Any = print) -> dict[str, Any]:
    """Print each change until the execution ends; return the final status view.

    Woken by the mirror's event notifications (no polling for changes); while a step runs the
    view is also redrawn every `refresh` seconds for the clock and the output's tail."""
    from opsconductor.starter.events import EventHub

    execution_id, _ = await client.resolve_ids(ident)
    hub = EventHub(client.pool)
    last = None
    try:
        with hub.subscription(execution_id) as wake:
            await hub.ensure_listening()
            while True:
                wake.clear()
                view = await client.status(ident)
                view["timing"] = timing(view)
                running = [s["id"] for s in view["steps"] if s["status"] == "running"]
                if running:
                    view["output_tail"] = await output_tail(client.pool, execution_id,
                                                            running[0])
                key = json.dumps([view["status"], view.get("waiting_on"),
                                  [(s["status"], s["attempts"]) for s in view["steps"]],
                                  view.get("output_tail")])
                ended = view["status"] in TERMINAL and view.get("temporal_status") != "RUNNING"
                if key != last or ended:
                    print_fn(json.dumps(view, default=str) if json_lines else render_live(view))
                    last = key
                if ended:
                    return view
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), refresh if running else 30.0)
    finally:
        await hub.close()


def render_live(view: dict[str, Any]) -> str:
    """The step table, the clock line and the running step's last output lines."""
    out = [render(view)]
    clock = render_timing(view.get("timing", {}))
    if clock:
        out.append(f"  {clock}")
    tail = view.get("output_tail")
    if tail:
        out.append(lines(f"  | {line}" for line in tail.rstrip().splitlines()[-5:]))
    return "\n".join(out)
