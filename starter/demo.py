"""`opsconductor demo` (what `make demo` runs): one real execution, end to end.

Uses a running `opsconductor dev` stack when there is one; otherwise brings up the embedded
stack, runs the bundled read-only diagnostic plan with live progress, prints the result, the
mirror rows it wrote and the Web UI link, and stops everything it started.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from importlib import resources
from typing import Any

from opsconductor.schema.config import load_settings
from opsconductor.starter.dev_stack import (
    DevStack,
    StackAlreadyRunning,
    describe,
    stack_alive,
)
from opsconductor.starter.progress_view import watch


def example_request() -> dict[str, Any]:
    text = (resources.files("opsconductor.starter") / "examples"
            / "diagnostic_plan.json").read_text()
    request: dict[str, Any] = json.loads(text)
    # A fresh run every time: the demo shows an execution, not the idempotency window.
    request["plan"]["execution_metadata"]["demo_run"] = uuid.uuid4().hex[:8]
    return request


async def mirror_rows(client: Any, execution_id: str) -> dict[str, int]:
    counts = {}
    for table in ("executions", "execution_steps", "execution_events", "approvals",
                  "execution_dlq"):
        counts[table] = await client.pool.fetchval(
            f"SELECT count(*) FROM execution.{table} WHERE execution_id = $1",
            uuid.UUID(execution_id))
    return counts


async def run_demo(json_output: bool = False) -> int:
    from opsconductor.starter.client import ExecutionClient

    say = (lambda *_: None) if json_output else print
    stack = None
    settings = load_settings()
    if stack_alive(settings):
        say("Using the running dev stack.\n" + describe(settings))
    else:
        say("Starting the embedded stack (Temporal dev server, PostgreSQL, worker)…")
        t0 = time.monotonic()
        stack = DevStack.from_env()
        try:
            settings = await stack.start()
        except StackAlreadyRunning as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        say(describe(settings, stack.codec_url) + f"\n(up in {time.monotonic() - t0:.1f}s)")
    try:
        client = await ExecutionClient.connect(settings)
        try:
            request = example_request()
            say(f"\nSubmitting '{request['metadata']['title']}' "
                f"({len(request['plan']['plan']['steps'])} steps)…")
            response = await client.execute(request, wait=False)
            say(f"execution {response.execution_id}\nworkflow  {response.workflow_id}\n")
            view = await watch(client, response.execution_id, print_fn=say)
            result = await client.result(response.execution_id)
            rows = await mirror_rows(client, response.execution_id)
        finally:
            await client.close()
        link = (f"{settings.ui_url}/namespaces/{settings.namespace}/workflows/"
                f"{response.workflow_id}" if settings.ui_url else None)
        if json_output:
            print(json.dumps({"execution_id": response.execution_id,
                              "workflow_id": response.workflow_id, "status": view["status"],
                              "result": result.model_dump(mode="json"), "mirror_rows": rows,
                              "web_ui": link}, indent=2, default=str))
        else:
            print(f"\nResult: {result.status.value}")
            for step in result.steps:
                first = (step.stdout or "").strip().splitlines()
                print(f"  {step.step_id:<22} {step.status.value:<10} "
                      f"{step.duration_ms or 0:6.0f} ms  {first[0][:70] if first else ''}")
            print(f"\nMirror rows written: {sum(rows.values())} "
                  + ", ".join(f"{k}={v}" for k, v in rows.items()))
            if link:
                print(f"Web UI: {link}")
            if stack is not None:
                print("\nThe demo stack stops now. Its Temporal history is kept in "
                      f"{settings.home}: run `opsconductor dev` to browse it in the Web UI.")
        return 0 if view["status"] == "completed" else 1
    finally:
        if stack is not None:
            await stack.stop()
