"""`opsconductor serve`: a small read-only HTTP service over the mirror (ASGI, Starlette).

Executions (filters and a cursor), one execution with its steps, a step's output, the
execution's events as Server-Sent Events (each with its event id, so a client that reconnects
with `Last-Event-ID` continues exactly where it stopped; a stream ends with `token-expired`
when the token it was opened with expires), `/metrics`, `/healthz` (the
process answers), `/readyz` (Postgres and Temporal answer), `/openapi.json`, and the Web
UI's payload codec at `/codec` (`opsconductor.starter.codec_server`).

Every route but `/healthz` and `/readyz` (and `/metrics` with `OPSC_API_METRICS_PUBLIC`) needs
a bearer token (`opsconductor.starter.auth`). A token sees only its tenant: lists are filtered
to it and another tenant's execution, outputs and events answer 404, exactly as an unknown id
does, so nothing tells a caller that the id exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from opsconductor.activities.outputs import read_streams
from opsconductor.schema.outputs import escape_bytes
from opsconductor.starter.auth import Authenticator, AuthMiddleware, Principal, principal_of
from opsconductor.starter.codec_server import CODEC_PATH, codec_app, ui_origins
from opsconductor.starter.events import EventHub

SSE_KEEPALIVE_SECONDS = 15.0
PUBLIC_PATHS = ("/healthz", "/readyz")
BEARER = "bearer"


def openapi() -> dict[str, Any]:
    """The service's OpenAPI 3.1 document."""
    ident = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "execution id or workflow id"}

    def query(name: str, kind: str = "string", text: str = "") -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": {"type": kind},
                "description": text}

    def ok(text: str, media: str = "application/json") -> dict[str, Any]:
        return {"200": {"description": text, "content": {media: {}}},
                "401": {"description": "no valid bearer token"}}

    public: dict[str, Any] = {"security": []}
    return {
        "openapi": "3.1.0",
        "components": {"securitySchemes": {BEARER: {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An OIDC access token of OPSC_OIDC_ISSUER for OPSC_OIDC_AUDIENCE, "
                           "or without an issuer the local token in $OPSC_HOME/api-token. A "
                           "token sees only its tenant."}}},
        "security": [{BEARER: []}],
        "info": {"title": "OpsConductor Execution", "version": "1",
                 "description": "Read-only view of executions, steps and events."},
        "paths": {
            "/executions": {"get": {"summary": "Executions, newest first", "parameters": [
                query("status", text="an execution status"), query("tenant"), query("actor"),
                query("asset", text="an asset id"),
                query("since", text="ISO 8601: submitted at or after"),
                query("until", text="ISO 8601: submitted before"),
                query("limit", "integer"), query("cursor", text="next_cursor of a page")],
                "responses": ok("items and next_cursor")}},
            "/executions/{id}": {"get": {"summary": "One execution with its steps",
                                         "parameters": [ident],
                                         "responses": ok("the execution")}},
            "/executions/{id}/steps/{step}/output": {"get": {
                "summary": "A step's output (latest attempt; live chunks while it runs)",
                "parameters": [ident, {"name": "step", "in": "path", "required": True,
                                       "schema": {"type": "string"}}],
                "responses": ok("streams")}},
            "/executions/{id}/events": {"get": {
                "summary": "Events as Server-Sent Events until the execution has ended",
                "parameters": [ident, query("after", "integer", "only events after this id"),
                               {"name": "Last-Event-ID", "in": "header", "required": False,
                                "schema": {"type": "string"}}],
                "responses": ok("event stream", "text/event-stream")}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": ok("exposition", "text/plain")}},
            "/healthz": {"get": {"summary": "Liveness", "responses": ok("ok"), **public}},
            "/readyz": {"get": {"summary": "Readiness: Postgres and Temporal answer",
                                "responses": ok("ready"), **public}},
            "/codec/decode": {"post": {
                "summary": "Temporal codec protocol: Payloads JSON in, decoded Payloads out "
                           "(the Web UI's --ui-codec-endpoint is <base>/codec)",
                "responses": ok("payloads")}},
            "/codec/encode": {"post": {"summary": "Temporal codec protocol: encode Payloads",
                                       "responses": ok("payloads")}},
        }}


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def sse(event: dict[str, Any]) -> str:
    """One event in the text/event-stream format (data on one line: JSON has no newlines)."""
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n"


async def tenant_of(pool: Any, execution_id: str) -> str | None:
    """The execution's tenant, from the mirror or (before its first row) its claim."""
    return await pool.fetchval(
        "SELECT tenant FROM execution.executions WHERE execution_id = $1 UNION ALL "
        "SELECT tenant FROM execution.idempotency_records WHERE execution_id = $1 LIMIT 1",
        uuid.UUID(execution_id))


def create_app(client: Any, *, auth: Authenticator, registry: CollectorRegistry | None = None,
               metrics_public: bool | None = None) -> Starlette:
    """The app over `client` (an ExecutionClient), every request authenticated by `auth`;
    `/metrics` renders `registry` (without a token when `metrics_public`, default the
    setting `api_metrics_public`)."""
    from opsconductor.starter.client import ExecutionNotFound

    hub = EventHub(client.pool)
    if metrics_public is None:
        metrics_public = bool(client.settings.api_metrics_public)

    async def visible(request: Request) -> tuple[str, str]:
        """The execution's ids when the caller's tenant may see it; ExecutionNotFound (the
        same as for an unknown id) otherwise."""
        ident = request.path_params["id"]
        execution_id, workflow_id = await client.resolve_ids(ident)
        principal: Principal = principal_of(request)
        if principal.tenant is not None and not principal.sees(
                await tenant_of(client.pool, execution_id)):
            raise ExecutionNotFound(f"no execution with id {ident!r}")
        return execution_id, workflow_id

    async def executions(request: Request) -> Response:
        q = request.query_params
        tenant = q.get("tenant")
        own = principal_of(request).tenant
        if own is not None:
            if tenant is not None and tenant != own:
                return JSONResponse({"items": [], "next_cursor": None})
            tenant = own
        try:
            items, cursor = await client.page(
                status=q.get("status"), tenant=tenant, actor=q.get("actor"),
                asset=q.get("asset"), since=_time(q.get("since")), until=_time(q.get("until")),
                limit=int(q.get("limit", "50")), cursor=q.get("cursor"))
        except ValueError as err:
            return _problem(400, str(err))
        return JSONResponse({"items": items, "next_cursor": cursor})

    async def execution(request: Request) -> Response:
        try:
            execution_id, _ = await visible(request)
            view = await client.status(execution_id)
        except ExecutionNotFound as err:
            return _problem(404, str(err))
        return JSONResponse(json.loads(json.dumps(view, default=str)))

    async def step_output(request: Request) -> Response:
        try:
            execution_id, _ = await visible(request)
        except ExecutionNotFound as err:
            return _problem(404, str(err))
        step_id = request.path_params["step"]
        rows = await read_streams(client.pool, execution_id, step_id)
        if not rows and await client.pool.fetchval(
                "SELECT 1 FROM execution.step_runs WHERE execution_id = $1 "
                "AND step_id = $2", uuid.UUID(execution_id), step_id) is None:
            return _problem(404, f"execution {execution_id} has no step {step_id!r}")
        return JSONResponse({"execution_id": execution_id, "step_id": step_id, "streams": [
            {"attempt": r.attempt, "stream": r.stream, "text": escape_bytes(r.data),
             "final": r.final, "truncated": r.truncated} for r in rows]})

    async def events(request: Request) -> Response:
        try:
            execution_id, _ = await visible(request)
            after = int(request.headers.get("last-event-id")
                        or request.query_params.get("after", "0"))
        except ExecutionNotFound as err:
            return _problem(404, str(err))
        except ValueError:
            return _problem(400, "Last-Event-ID and after must be event ids (integers)")

        expires_at = principal_of(request).expires_at

        async def stream() -> AsyncIterator[str]:
            source = hub.follow(execution_id, after)
            pending: asyncio.Future[dict[str, Any]] | None = None
            try:
                while True:
                    wait = SSE_KEEPALIVE_SECONDS
                    if expires_at is not None:
                        wait = min(wait, expires_at - time.time())
                        if wait <= 0:  # reconnect with a fresh token and Last-Event-ID
                            yield "event: token-expired\ndata: {}\n\n"
                            return
                    pending = pending or asyncio.ensure_future(source.__anext__())
                    done, _ = await asyncio.wait({pending}, timeout=wait)
                    if not done:
                        yield ": keep-alive\n\n"
                        continue
                    try:
                        event = pending.result()
                    except StopAsyncIteration:
                        yield "event: end\ndata: {}\n\n"
                        return
                    pending = None
                    yield sse(event)
            finally:
                if pending is not None:
                    pending.cancel()  # and let it end before the generator is closed
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pending
                await source.aclose()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry) if registry is not None else b"",
                        media_type=CONTENT_TYPE_LATEST)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(_request: Request) -> Response:
        checks: dict[str, Any] = {}
        try:
            await asyncio.wait_for(client.pool.fetchval("SELECT 1"), 5)
            checks["postgres"] = {"ok": True}
        except Exception as err:  # whatever the failure, the service is not ready
            checks["postgres"] = {"ok": False, "detail": str(err)}
        try:
            await asyncio.wait_for(client.temporal.service_client.check_health(), 5)
            checks["temporal"] = {"ok": True}
        except Exception as err:
            checks["temporal"] = {"ok": False, "detail": str(err)}
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def spec(_request: Request) -> Response:
        return JSONResponse(openapi())

    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await hub.close()

    public = PUBLIC_PATHS + (("/metrics",) if metrics_public else ())
    return Starlette(routes=[
        Route("/executions", executions), Route("/executions/{id}", execution),
        Route("/executions/{id}/steps/{step}/output", step_output),
        Route("/executions/{id}/events", events), Route("/metrics", metrics),
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/openapi.json", spec),
        Mount(CODEC_PATH, codec_app(ui_origins(client.settings.ui_url,
                                               client.settings.codec_origins), auth=auth)),
    ], middleware=[Middleware(AuthMiddleware, auth=auth, public=public,
                              delegated=(CODEC_PATH,))],
       lifespan=contextlib.asynccontextmanager(lifespan))
