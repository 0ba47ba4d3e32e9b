"""Local stand-ins of OpsConductor's services for the upstream-plan tests.

Each records what it received and refuses a request that breaks the contract our clients
promise, so a test that passes proves the request shape, not just that something answered.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.executors.servers import _Base

AUTOMATION_REQUIRED = ("command", "target_host", "connection_type", "credentials", "timeout")


class Recorder:
    """What a stand-in received, shared with the test (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.assets: list[dict[str, Any]] = []

    def add(self, call: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(call)


AUTOMATION = Recorder()
ASSET_SERVICE = Recorder()


class AutomationService(_Base):
    """`POST /execute`: answers like the Automation Service, after checking the body."""

    def do_POST(self) -> None:
        body = json.loads(self._body() or b"{}")
        AUTOMATION.add(body)
        missing = [k for k in AUTOMATION_REQUIRED if k not in body]
        creds = body.get("credentials") or {}
        if missing or not creds.get("username") or not creds.get("password"):
            self._send(422, {"detail": f"missing {missing or 'credentials'}"})
            return
        if body["connection_type"] not in ("powershell", "impacket", "winrm", "ssh"):
            self._send(422, {"detail": f"bad connection_type {body['connection_type']}"})
            return
        self._send(200, {"execution_id": f"auto-{len(AUTOMATION.calls)}", "status": "completed",
                         "exit_code": 0, "stderr": "",
                         "stdout": f"[{body['connection_type']}@{body['target_host']}] "
                                   f"{body['command']}"})


class AssetService(_Base):
    """`GET /api/v1/assets[?filters]` and `GET /api/v1/assets/{id}` over ASSET_SERVICE.assets;
    `tags` is a comma list the asset must all carry, `hostname` also matches the address."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        ASSET_SERVICE.add({"path": url.path, "query": q})
        assets = ASSET_SERVICE.assets
        if url.path == "/api/v1/assets":
            out = []
            for a in assets:
                if "tags" in q and not set(q["tags"].split(",")) <= set(a.get("tags", [])):
                    continue
                if "hostname" in q and q["hostname"] not in (a.get("hostname"),
                                                             a.get("ip_address")):
                    continue
                out.append(a)
            self._send(200, {"assets": out[:int(q.get("limit", 1000))]})
            return
        for a in assets:
            if url.path == f"/api/v1/assets/{a['id']}":
                self._send(200, a)
                return
        self._send(404, {"detail": "not found"})


DIGEST_USER, DIGEST_REALM, DIGEST_NONCE = "root", "AXIS_ACCC8E", "n0nce42"
DIGEST_PASSWORD = "camera-secret-7"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # HTTP digest (RFC 7616) uses MD5


class DigestCamera(_Base):
    """An Axis-like VAPIX endpoint behind HTTP digest auth (RFC 7616, MD5, qop=auth)."""

    calls: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        header = self.headers.get("Authorization") or ""
        DigestCamera.calls.append({"path": self.path, "authorization": header})
        if not header.startswith("Digest "):
            self._send(401, {"error": "auth"}, headers={
                "WWW-Authenticate": f'Digest realm="{DIGEST_REALM}", nonce="{DIGEST_NONCE}", '
                                    'qop="auth", algorithm=MD5'})
            return
        parts = dict(p.strip().split("=", 1) for p in header[7:].split(","))
        f = {k: v.strip('"') for k, v in parts.items()}
        ha1 = _md5(f"{DIGEST_USER}:{DIGEST_REALM}:{DIGEST_PASSWORD}")
        ha2 = _md5(f"GET:{f.get('uri')}")
        want = _md5(f"{ha1}:{DIGEST_NONCE}:{f.get('nc')}:{f.get('cnonce')}:auth:{ha2}")
        if f.get("username") != DIGEST_USER or f.get("response") != want:
            self._send(401, {"error": "bad digest"})
            return
        self._send(200, {"ok": True, "query": {k: v[0] for k, v in
                                               parse_qs(urlsplit(self.path).query).items()}})


# ---------------------------------------------------------- an Asset Service for fan-out

ASSETS = [
    {"id": "a1", "hostname": "node-a", "connector": "local", "ip_address": "127.0.0.1",
     "tags": ["win10"]},
    {"id": "a2", "hostname": "node-b", "connector": "local", "ip_address": "127.0.0.2",
     "tags": ["win10"]},
    {"id": "a3", "hostname": "node-c", "connector": "local", "tags": ["other"]},
]
SEEN: list[dict[str, Any]] = []


class TagAssetService(_Base):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        SEEN.append({"path": url.path, "query": q})
        if url.path == "/api/v1/assets":
            found = [a for a in ASSETS
                     if ("tags" not in q or q["tags"] in a["tags"])
                     and ("hostname" not in q or q["hostname"] == a["hostname"])]
            self._send(200, {"assets": found})
            return
        for a in ASSETS:
            if url.path == f"/api/v1/assets/{a['id']}":
                self._send(200, a)
                return
        self._send(404, {"detail": "not found"})


PLAN = {"tenant": "t", "actor": "a", "environment": "dev", "plan": {"steps": [
    {"step_number": 1, "tool": "asset-query", "parameters": {"filters": {"tags": ["win10"]},
                                                            "fields": ["hostname"]}},
    {"step_number": 2, "tool": "shell",
     "parameters": {"command": "echo host={{item.hostname}} ip={{ip_address}}",
                    "target": "{{hostname}}"}}]}}
