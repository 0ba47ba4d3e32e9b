"""Live progress of one execution on a terminal (or as JSON lines)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from opsconductor.starter.terminal import lines

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


async def watch(client: Any, ident: str, *, json_lines: bool = False, interval: float = 0.3,
                print_fn: Any = print) -> dict[str, Any]:
    """Print each change until the execution ends; return the final status view."""
    last = None
    while True:
        view = await client.status(ident)
        key = json.dumps([view["status"], view.get("waiting_on"),
                          [(s["status"], s["attempts"]) for s in view["steps"]]])
        if key != last:
            print_fn(json.dumps(view, default=str) if json_lines else render(view))
            last = key
        if view["status"] in TERMINAL and view.get("temporal_status") != "RUNNING":
            return view
        await asyncio.sleep(interval)
