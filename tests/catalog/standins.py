"""Local stand-ins of OpsConductor's network, asset and communication services, serving
`POST /execute-plan` as upstream's services define it (re-stated from their code):

    request:  {"execution_id": str, "plan": {"steps": [step], "previous_results": [...]},
               "tenant_id": str, "actor_id": int}
    answer:   {"execution_id", "status": "completed" | "failed", "result": {...},
               "step_results": [{"step_index", "tool", "status", "output", "completed_at"}],
               "completed_at", "error_message"}

The asset service knows asset-query|create|update|delete|list (dash or underscore), the
communication service sendmail, slack_cli, teams_cli and webhook_sender only (underscores),
the network service any tool (a stub upstream). A body that breaks the contract is answered
422, so a passing test proves the request's shape. Each stand-in records what it received,
can answer 503 for its first N calls (an outage: nothing acts) and can hold a call until the
test releases it (a worker killed mid-call)."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.executors.servers import _Base

ASSET_TOOLS = frozenset({"asset-query", "asset-create", "asset-update", "asset-delete",
                         "asset-list"})
COMMUNICATION_TOOLS = frozenset({"sendmail", "slack_cli", "teams_cli", "webhook_sender"})


class Service:
    """The state of one stand-in, shared with the test (thread-safe)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []  # bodies that were taken (acted on)
        self.refused = 0  # answered 503: not taken
        self.outage = 0  # answer 503 to this many more calls
        self.hold = threading.Event()  # set: calls proceed; clear: taken calls wait on it
        self.hold.set()
        self.received = threading.Event()  # a call was taken
        self.assets: list[dict[str, Any]] = []  # the asset service's REST API serves these

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.refused = self.outage = 0
            self.hold.set()
            self.received.clear()

    def knows(self, tool: str) -> bool:
        if self.location == "asset-service":
            return tool.replace("_", "-") in ASSET_TOOLS
        if self.location == "communication-service":
            return tool in COMMUNICATION_TOOLS
        return True


def contract_problems(body: Any) -> list[str]:
    """What upstream's services would reject in the body (pydantic's PlanExecutionRequest of
    the automation service: all four fields, `actor_id` an integer)."""
    if not isinstance(body, dict):
        return ["body is not an object"]
    out = [f"missing {k}" for k in ("execution_id", "plan", "tenant_id", "actor_id")
           if k not in body]
    if not isinstance(body.get("execution_id"), str):
        out.append("execution_id is not a string")
    if not isinstance(body.get("tenant_id"), str):
        out.append("tenant_id is not a string")
    if not isinstance(body.get("actor_id"), int) or isinstance(body.get("actor_id"), bool):
        out.append("actor_id is not an integer")
    plan = body.get("plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("steps"), list) \
            or len(plan["steps"]) != 1:
        out.append("plan.steps must hold exactly one step (upstream sends steps alone)")
    elif not isinstance(plan["steps"][0].get("inputs"), dict) or not plan["steps"][0].get("tool"):
        out.append("the step needs `tool` and `inputs`")
    if isinstance(plan, dict) and not isinstance(plan.get("previous_results", []), list):
        out.append("plan.previous_results is not a list")
    return out


def handler_for(service: Service) -> type[_Base]:
    class ExecutePlan(_Base):
        def do_GET(self) -> None:
            """The asset service's own REST API (`/api/v1/assets[/{id}][?hostname=]`), which
            our worker reads targets from when the asset service is configured."""
            url = urlsplit(self.path)
            host = parse_qs(url.query).get("hostname", [None])[0]
            if url.path == "/api/v1/assets":
                self._send(200, {"assets": [a for a in service.assets
                                            if host in (None, a.get("hostname"))]})
                return
            for a in service.assets:
                if url.path == f"/api/v1/assets/{a['id']}":
                    self._send(200, a)
                    return
            self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            if self.path != "/execute-plan":
                self._send(404, {"detail": "Not Found"})
                return
            with service.lock:
                if service.outage > 0:
                    service.outage -= 1
                    service.refused += 1
                    self._send(503, {"detail": "service unavailable"})
                    return
            body = json.loads(self._body() or b"null")
            problems = contract_problems(body)
            if problems:
                self._send(422, {"detail": problems})
                return
            with service.lock:
                service.calls.append(body)
            service.received.set()
            service.hold.wait(120)
            step = body["plan"]["steps"][0]
            tool, inputs = step["tool"], step["inputs"]
            known = service.knows(tool)
            output = ({"success": True, "message": f"{tool} done at {service.location}",
                       "details": inputs, "previous": len(body["plan"].get(
                           "previous_results", []))}
                      if known else {"success": False,
                                     "message": f"Unknown {service.location} tool: {tool}"})
            status = "completed" if output["success"] else "failed"
            now = datetime.now(UTC).isoformat()
            self._answer({
                "execution_id": body["execution_id"], "status": status,
                "result": {"total_steps": 1, "successful_steps": int(known),
                           "failed_steps": int(not known)},
                "step_results": [{"step_index": 0, "tool": tool, "status": status,
                                  "output": output, "completed_at": now}],
                "completed_at": now,
                "error_message": None if known else "One or more steps failed"})

        def _answer(self, body: dict[str, Any]) -> None:
            """Answer; a caller that died meanwhile (a killed worker) just misses it."""
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._send(200, body)

    return ExecutePlan
