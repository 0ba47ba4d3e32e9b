"""HTTP steps, with the basic or digest authentication upstream's `api-request` asks for.

The step's `auth` ({"type": "basic"|"digest", "username", "password"}) arrives with its
password already resolved from its secret reference; it becomes an httpx auth flow run inside
the transport, so the request itself (and what `http_request` reports) never carries it.
Steps without `auth` go to the plain HTTP executor unchanged.
"""

from __future__ import annotations

import dataclasses

import httpx

from opsconductor.activities.executors.base import StepContext, StepOutcome
from opsconductor.activities.executors.http import HttpExecutor
from opsconductor.schema.errors import ErrorType


class AuthTransport(httpx.AsyncBaseTransport):
    """Runs an httpx auth flow (challenge and answer) around every request."""

    def __init__(self, auth: httpx.Auth, inner: httpx.AsyncBaseTransport | None = None):
        self.auth = auth
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        flow = self.auth.async_auth_flow(request)
        req = await flow.__anext__()
        while True:
            resp = await self.inner.handle_async_request(req)
            resp.request = req  # the auth flow reads the challenge against its request
            await resp.aread()
            try:
                req = await flow.asend(resp)
            except StopAsyncIteration:
                return resp

    async def aclose(self) -> None:
        await self.inner.aclose()


class AuthHttpExecutor:
    def __init__(self, transport: httpx.AsyncBaseTransport | None = None):
        self.transport = transport

    async def run(self, ctx: StepContext) -> StepOutcome:
        auth = ctx.inputs.get("auth")
        if auth is None:
            return await HttpExecutor(self.transport).run(ctx)
        if not isinstance(auth, dict) or auth.get("type") not in ("basic", "digest") or \
                not isinstance(auth.get("password"), str):
            return StepOutcome(ok=False, error="auth needs type basic|digest, username and a "
                               "resolved password", error_type=ErrorType.INVALID_STEP,
                               retryable=False)
        user, password = str(auth.get("username") or ""), auth["password"]
        flow: httpx.Auth = (httpx.DigestAuth(user, password) if auth["type"] == "digest"
                            else httpx.BasicAuth(user, password))
        inputs = {k: v for k, v in ctx.inputs.items() if k != "auth"}
        transport = AuthTransport(flow, self.transport)
        try:
            return await HttpExecutor(transport).run(dataclasses.replace(ctx, inputs=inputs))
        finally:
            await transport.aclose()
