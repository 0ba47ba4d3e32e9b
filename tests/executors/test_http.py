"""http_request executor against a real local HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opsconductor.activities.executors.base import OUTPUT_CAP_BYTES
from opsconductor.activities.executors.http import HttpExecutor
from opsconductor.schema.enums import ActionClass, StepKind
from opsconductor.starter.ports import free_port
from tests.executors.helpers import make_ctx
from tests.executors.servers import ApiHandler, serve


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with serve(ApiHandler) as url:
        yield url


async def run(inputs: dict, **kw: object):
    ac = ActionClass.READ if inputs.get("method", "GET") in ("GET", "HEAD") else ActionClass.MODIFY
    return await HttpExecutor().run(make_ctx(StepKind.HTTP, inputs, action_class=ac, **kw))


async def test_get_json_with_assertions(api: str) -> None:
    out = await run({"url": f"{api}/ok", "expect_status": 200, "assertions": [
        {"path": "$.status", "equals": "ok"}, {"path": "$.items[1].id", "equals": 2},
        {"path": "$.items[-1].id", "gte": 2}, {"path": "$.missing", "exists": False}]})
    assert out.ok, out.error
    assert out.output["status"] == 200 and out.output["body"]["ok"] is True
    assert out.output["headers"]["x-request-id"] == "r-1"
    assert "x-internal" not in out.output["headers"]
    assert out.output["elapsed_ms"] >= 0 and len(out.output["assertions"]) == 4


async def test_failed_assertion_and_status(api: str) -> None:
    out = await run({"url": f"{api}/ok", "assertions": [{"path": "$.status", "equals": "down"}]})
    assert not out.ok and out.error_type == "AssertionFailed" and not out.retryable
    assert "$.status" in (out.error or "")
    out = await run({"url": f"{api}/status/404", "expect_status": [200, 204]})
    assert not out.ok and out.error_type == "HttpStatus" and not out.retryable
    out = await run({"url": f"{api}/status/503"})
    assert out.error_type == "HttpStatus" and out.retryable  # GET may be repeated
    out = await run({"method": "POST", "url": f"{api}/status/503", "json": {}})
    assert out.error_type == "HttpStatus" and out.retryable is False  # may have acted
    out = await run({"url": f"{api}/status/418", "expect_status": 418})
    assert out.ok


async def test_post_json_text_query_and_secret_header(api: str) -> None:
    out = await run({"method": "post", "url": f"{api}/echo",
                     "headers": {"Authorization": "Bearer resolved-secret"},
                     "json": {"a": [1, 2]}, "expect_status": 201})
    assert out.ok, out.error
    assert out.output["body"]["received"] == {"a": [1, 2]}
    assert out.output["body"]["authorization"] == "Bearer resolved-secret"
    out = await run({"method": "PUT", "url": f"{api}/echo", "body": "raw text",
                     "headers": {"Content-Type": "text/plain"}})
    assert out.ok and out.output["body"]["received"] == "raw text"
    out = await run({"url": f"{api}/query", "query": {"q": "x y", "n": 3}})
    assert out.output["body"] == {"q": "x y", "n": "3"}


async def test_text_body_cap_head_and_redirect(api: str) -> None:
    out = await run({"url": f"{api}/text"})
    assert out.ok and out.output["body"] == "plain words" and out.stdout == "plain words"
    out = await run({"url": f"{api}/big"})
    assert out.ok and out.output["truncated"] and "[truncated" in out.output["body"]
    assert out.output["body"].endswith("\n...[truncated 1000 bytes]")
    assert len(out.output["body"]) < OUTPUT_CAP_BYTES + 100
    out = await run({"method": "HEAD", "url": f"{api}/ok"})
    assert out.ok and out.output["body"] == ""
    out = await run({"url": f"{api}/redirect", "expect_status": 302})
    assert out.ok and out.output["headers"]["location"] == "/ok"


async def test_retryable_only_for_idempotent_methods(api: str) -> None:
    # 1 s against a 3 s route: long enough that a loaded machine still connects in time (a
    # connect that times out never sent the request, and would be retryable even for POST).
    out = await run({"url": f"{api}/slow", "timeout_seconds": 1.0})
    assert not out.ok and out.error_type == "StepTimeout" and out.retryable
    out = await run({"method": "POST", "url": f"{api}/slow", "timeout_seconds": 1.0})
    assert not out.ok and out.retryable is False
    assert "not idempotent" in (out.error or "")
    out = await run({"method": "POST", "url": f"{api}/slow", "timeout_seconds": 1.0,
                     "idempotent": True})
    assert out.retryable is True
    # Connection refused: the request never left, so even a POST may be repeated.
    dead = f"http://127.0.0.1:{free_port()}/x"
    out = await run({"method": "POST", "url": dead, "json": {}})
    assert out.error_type == "HttpConnectError" and out.retryable


async def test_invalid_inputs() -> None:
    out = await run({"url": "http://x", "method": "TRACE"})
    assert out.error_type == "InvalidStep" and not out.retryable
