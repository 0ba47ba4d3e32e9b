"""A recording HTTP service for the injection tests: every request's raw target is kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.executors.servers import serve


class Recorder(BaseHTTPRequestHandler):
    """Answers 200 with what it received; `seen` keeps each raw request target and headers."""

    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        record = {"method": self.command, "target": self.path, "body": body,
                  "headers": {k.lower(): v for k, v in self.headers.items()}}
        Recorder.seen.append(record)
        raw = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _answer


@pytest.fixture(scope="module")
def recorder() -> Iterator[str]:
    with serve(Recorder) as url:
        yield url


@pytest.fixture
def seen(recorder: str) -> list[dict[str, Any]]:
    Recorder.seen.clear()
    return Recorder.seen
