"""Small real HTTP services (stdlib http.server in a thread) for the executor tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opsconductor.activities.executors.base import OUTPUT_CAP_BYTES


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Base(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else (
            json.dumps(body).encode() if ctype == "application/json" else str(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""


class ApiHandler(_Base):
    """Routes for the http_request executor tests."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/ok":
            self._send(200, {"status": "ok", "ok": True, "items": [{"id": 1}, {"id": 2}]},
                       headers={"X-Request-Id": "r-1", "X-Internal": "hidden"})
        elif url.path == "/text":
            self._send(200, "plain words", "text/plain; charset=utf-8")
        elif url.path == "/big":
            self._send(200, b"y" * (OUTPUT_CAP_BYTES + 1000), "text/plain")
        elif url.path.startswith("/status/"):
            self._send(int(url.path.rsplit("/", 1)[1]), {"code": url.path})
        elif url.path == "/query":
            self._send(200, {k: v[0] for k, v in parse_qs(url.query).items()})
        elif url.path == "/headers":
            self._send(200, {"authorization": self.headers.get("Authorization")})
        elif url.path == "/slow":
            time.sleep(3)  # the server being slow is the point of this route
            self._send(200, {"late": True})
        elif url.path == "/redirect":
            self._send(302, "", "text/plain", headers={"Location": "/ok"})
        else:
            self._send(404, {"error": "no route"})

    do_HEAD = do_GET
    do_DELETE = do_GET

    def do_POST(self) -> None:
        body = self._body()
        if self.path.startswith("/status/"):
            self._send(int(self.path.rsplit("/", 1)[1]), {"code": self.path})
            return
        if self.path == "/slow":
            time.sleep(3)
        ctype = self.headers.get("Content-Type", "")
        doc: Any = json.loads(body) if "json" in ctype and body else body.decode()
        self._send(201, {"received": doc, "content_type": ctype,
                         "authorization": self.headers.get("Authorization")})

    do_PUT = do_POST


class AutomationService(_Base):
    """The Automation Service contract, for real: POST /execute runs the command locally."""

    token: str | None = None
    requests: list[dict[str, Any]] = []

    def _authorized(self) -> bool:
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, {"detail": "bad token"})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path == "/status":
            self._send(200, {"status": "healthy", "service": "automation-service"})
        else:
            self._send(404, {"detail": "not found"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        if self.path != "/execute":
            self._send(404, {"detail": "not found"})
            return
        req = json.loads(self._body())
        type(self).requests.append(req)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        env = dict(req.get("environment_vars") or {})
        proc = subprocess.Popen(["/bin/sh", "-c", req["command"]], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                cwd=req.get("working_directory") or None,
                                env={"PATH": "/usr/bin:/bin", **env})
        try:
            out, err = proc.communicate(timeout=req["timeout"])
            status = "completed" if proc.returncode == 0 else "failed"
            result = {"exit_code": proc.returncode, "stdout": out, "stderr": err,
                      "error_message": None}
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            status = "timeout"
            result = {"exit_code": None, "stdout": "", "stderr": "",
                      "error_message": f"timed out after {req['timeout']}s"}
        self._send(200, {"execution_id": f"ex-{len(self.requests)}", "status": status,
                         "started_at": started,
                         "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         **result})


class AssetService(_Base):
    """The Asset Service's read API, with injectable 5xx failures and a bearer token."""

    token = "asset-token"
    fail_next = 0
    calls = 0
    assets: dict[str, dict[str, Any]] = {}
    creds: dict[str, dict[str, Any]] = {}

    def do_GET(self) -> None:
        cls = type(self)
        cls.calls += 1
        if cls.fail_next > 0:
            cls.fail_next -= 1
            self._send(503, {"detail": "try later"})
            return
        if self.headers.get("Authorization") != f"Bearer {cls.token}":
            self._send(401, {"detail": "unauthorized"})
            return
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "assets"]:
            self._send(404, {"detail": "no route"})
        elif len(parts) == 3:
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            found = [a for a in cls.assets.values()
                     if all(str(a.get(k)) == v for k, v in q.items())]
            self._send(200, {"success": True, "data": {"assets": found, "total": len(found)}})
        elif len(parts) == 4 and parts[3] in cls.assets:
            self._send(200, {"success": True, "data": cls.assets[parts[3]]})
        elif len(parts) == 5 and parts[4] == "credentials" and parts[3] in cls.creds:
            self._send(200, cls.creds[parts[3]])
        else:
            self._send(404, {"detail": "asset not found"})
