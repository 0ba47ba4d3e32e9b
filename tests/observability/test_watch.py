"""`watch`: woken by the mirror's notifications, it shows the clock (elapsed, ETA, deadline)
and the tail of the running step's output, and returns the final view."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opsconductor.starter.progress_view import render_live, watch
from tests.helpers import request, shell

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_watch_shows_clock_and_output_tail(engine: Any) -> None:
    resp = await engine.execute(request(
        [shell("a", "echo hello-from-step; sleep 3"), shell("b", "echo two", deps=["a"])]),
        wait=False)
    printed: list[str] = []
    final = await watch(engine, resp.execution_id, json_lines=True, refresh=0.5,
                        print_fn=printed.append)
    assert final["status"] == "completed"
    views = [json.loads(p) for p in printed]
    running = [v for v in views if "hello-from-step" in (v.get("output_tail") or "")]
    assert running, [v.get("output_tail") for v in views]
    clock = running[-1]["timing"]
    assert clock["elapsed_seconds"] >= 0 and "eta_seconds" in clock
    assert "deadline_in_seconds" in clock and clock["deadline_in_seconds"] > 0
    text = render_live(running[-1])
    assert "elapsed " in text and "ETA " in text and "| hello-from-step" in text
    assert views[-1]["timing"]["elapsed_seconds"] >= 3
    assert views[-1]["status"] == "completed"
