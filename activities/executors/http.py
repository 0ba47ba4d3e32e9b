"""The `http_request` tool: one HTTP call with httpx, judged by status and JSON assertions.

Inputs (schema.tools.HttpInputs): method, url, headers, query, `json` (JSON body) or `body`
(text; a dict/list body is sent as JSON), expect_status (int or list; default: any status
below 400), assertions ([{"path": "$.status", "equals": "ok"}, ...] — JSON-path subset and
operators in `opsconductor.activities.checks`), timeout_seconds (capped by the step's timeout).

The URL keeps its own query string: `query` adds parameters to it (a key in both takes
`query`'s value). Template values in the URL, headers and body were encoded for their
position when the step was rendered (`schema/template_contexts.py`).

Secrets may appear in headers and body: the activity resolved them before this runs and
masks the outcome after; this module never logs inputs. Redirects are not followed (a
redirect could carry an Authorization header elsewhere); a 3xx is reported as is.

Retries are Temporal's, steered by `StepOutcome.retryable`: a transport error is retryable
for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE), for steps declared idempotent, and
for any method when the connection could not even be opened (nothing was sent). A POST or
PATCH that may have reached the server is never repeated blindly. 5xx answers follow the same
rule; other unexpected statuses and failed assertions are not retryable.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from opsconductor.activities.checks import assert_json_bounded
from opsconductor.activities.executors.base import (
    OUTPUT_CAP_BYTES,
    StepContext,
    StepOutcome,
    parse_inputs,
)
from opsconductor.schema.errors import ErrorType
from opsconductor.schema.tools import HttpInputs

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
KEPT_HEADERS = ("content-type", "content-length", "location", "etag", "last-modified",
                "retry-after", "x-request-id", "cache-control")


def _status_ok(status: int, expect: int | list[int] | None) -> bool:
    if expect is None:
        return status < 400
    return status in (expect if isinstance(expect, list) else [expect])


class HttpExecutor:
    def __init__(self, transport: httpx.AsyncBaseTransport | None = None):
        self.transport = transport

    async def run(self, ctx: StepContext) -> StepOutcome:
        inputs = parse_inputs(HttpInputs, ctx)
        if isinstance(inputs, StepOutcome):
            return inputs
        method = inputs.method
        may_repeat = (method in IDEMPOTENT_METHODS or inputs.idempotent is True
                      or (ctx.step.idempotent and inputs.idempotent is not False))
        timeout = min(inputs.timeout_seconds or ctx.timeout, ctx.timeout)
        headers = {str(k): "" if v is None else str(v) for k, v in inputs.headers.items()}
        try:
            url = _with_query(inputs.url, inputs.query)
        except httpx.InvalidURL as err:
            return StepOutcome(ok=False, error=f"invalid URL: {err}",
                               error_type=ErrorType.INVALID_STEP, retryable=False)
        kw: dict[str, Any] = {}
        if inputs.json_body is not None:
            kw["json"] = inputs.json_body
        elif isinstance(inputs.body, dict | list):
            kw["json"] = inputs.body
        elif inputs.body is not None:
            kw["content"] = str(inputs.body).encode()
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                                         transport=self.transport) as client:
                async with client.stream(method, url, headers=headers, **kw) as resp:
                    ctx.heartbeat({"status": resp.status_code})
                    raw, dropped = await _read_capped(resp)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            return StepOutcome(ok=False, error=f"{method} {_safe_url(inputs.url)}: cannot connect "
                               f"({type(err).__name__}: {err}); nothing was sent",
                               error_type=ErrorType.HTTP_CONNECT_ERROR, retryable=True)
        except httpx.TimeoutException as err:
            return self._transport_failure(method, inputs.url, err, may_repeat,
                                           ErrorType.STEP_TIMEOUT,
                                           f"no complete answer within {timeout:g}s")
        except httpx.TransportError as err:
            return self._transport_failure(method, inputs.url, err, may_repeat,
                                           ErrorType.HTTP_TRANSPORT_ERROR,
                                           f"{type(err).__name__}: {err}")
        except httpx.InvalidURL as err:
            return StepOutcome(ok=False, error=f"invalid URL: {err}",
                               error_type=ErrorType.INVALID_STEP, retryable=False)
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        text = raw.decode(resp.encoding or "utf-8", "replace")
        body: Any = text
        is_json = "json" in resp.headers.get("content-type", "")
        if not dropped and raw and (is_json or text.lstrip()[:1] in ("{", "[")):
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        if dropped:
            text += f"\n...[truncated {dropped} bytes]"
            body = text
        output = {"status": resp.status_code, "headers": {k: resp.headers[k] for k in KEPT_HEADERS
                                                          if k in resp.headers},
                  "body": body, "elapsed_ms": elapsed_ms, "truncated": bool(dropped)}
        checks = await assert_json_bounded(body, inputs.assertions)
        if checks:
            output["assertions"] = [c.to_dict() for c in checks]
        status = resp.status_code
        if not _status_ok(status, inputs.expect_status):
            wanted = inputs.expect_status if inputs.expect_status is not None else "< 400"
            repeat = (status >= 500 and may_repeat) or (status in (429, 503) and may_repeat)
            return StepOutcome(ok=False, stdout=text, output=output,
                               error_type=ErrorType.HTTP_STATUS,
                               error=f"{method} {_safe_url(inputs.url)} answered {status}, "
                                     f"expected {wanted}", retryable=repeat)
        failed = [c for c in checks if not c.passed]
        if failed:
            return StepOutcome(ok=False, stdout=text, output=output,
                               error_type=ErrorType.ASSERTION_FAILED, retryable=False,
                               error="; ".join(f"{c.expr}: {c.detail}" for c in failed))
        return StepOutcome(ok=True, stdout=text, output=output)

    @staticmethod
    def _transport_failure(method: str, url: str, err: Exception, may_repeat: bool,
                           kind: str, what: str) -> StepOutcome:
        note = ("" if may_repeat else f"; not retried: {method} is not idempotent and the "
                "request may have reached the server")
        return StepOutcome(ok=False, error=f"{method} {_safe_url(url)}: {what}{note}",
                           error_type=kind, retryable=may_repeat)


def _with_query(url: str, query: dict[str, Any]) -> httpx.URL:
    """The URL with `query` added to its own query string (httpx's `params=` replaces it)."""
    u = httpx.URL(url)
    if not query:
        return u
    params = {str(k): [str(x) for x in v] if isinstance(v, list) else str(v)
              for k, v in query.items()}
    return u.copy_merge_params(params)


async def _read_capped(resp: httpx.Response) -> tuple[bytes, int]:
    kept = bytearray()
    dropped = 0
    async for chunk in resp.aiter_bytes():
        room = OUTPUT_CAP_BYTES - len(kept)
        if room > 0:
            kept += chunk[:room]
        dropped += max(0, len(chunk) - max(room, 0))
    return bytes(kept), dropped


def _safe_url(url: str) -> str:
    """The URL without its query and userinfo, which may hold secrets."""
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid url)"
    return str(u.copy_with(query=None, fragment=None, userinfo=b""))
