"""Without an issuer: a local token (random, 0600, reused, compared in constant time) guards
every route, the codec key in the path opens only the codec, and `serve` refuses a
non-loopback address naming the setting that would allow it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from opsconductor.schema.config import load_settings
from opsconductor.schema.payloads import DATA_CONVERTER
from opsconductor.starter.auth import LocalTokenAuth, is_loopback, load_or_create_token
from tests.api_auth.conftest import ApiFactory
from tests.helpers import payload_as_json, payload_from_json
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_token_file_is_made_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "home" / "api-token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    again, created_again = load_or_create_token(path)
    assert (again, created_again) == (token, False)
    assert load_or_create_token(tmp_path / "other")[0] != token  # random, not derived
    path.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        load_or_create_token(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(ValueError, match="at least 32 characters"):
        load_or_create_token(path)


async def test_the_local_token_guards_every_route_and_the_codec_key_only_the_codec(
        engine: Any, api_with: ApiFactory, tmp_path: Path) -> None:
    auth, printed = LocalTokenAuth.from_settings(load_settings({"OPSC_HOME": str(tmp_path)}))
    assert printed is not None
    token = printed
    [big] = await DATA_CONVERTER.encode([{"n": "x" * 100_000}])
    body = {"payloads": [payload_as_json(big)]}
    refused = 0
    async with api_with(auth) as http:
        for path in ("/executions", "/metrics", "/openapi.json"):
            for headers in ({}, {"Authorization": "Bearer " + "x" * len(token)},
                            {"Authorization": f"Bearer {token[:-1]}"},
                            {"Authorization": f"Bearer {auth.codec_key}"}):
                assert (await http.get(path, headers=headers)).status_code == 401
                refused += 1
            ok = await http.get(path, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200, (path, ok.text)
        assert (await http.post("/codec/decode", json=body)).status_code == 401
        assert (await http.post(f"/codec/key/{'0' * 64}/decode", json=body)).status_code == 401
        refused += 2
        resp = await http.post(f"/codec/key/{auth.codec_key}/decode", json=body)
        assert resp.status_code == 200, resp.text
        shown = payload_from_json(resp.json()["payloads"][0])
        assert shown.metadata["encoding"] == b"json/plain"
        assert json.loads(shown.data) == {"n": "x" * 100_000}
        with_token = await http.post("/codec/decode", json=body,
                                     headers={"Authorization": f"Bearer {token}"})
        assert with_token.status_code == 200
        # A path that only looks like the codec's (dot segments, sent raw: httpx would
        # normalise them) reaches nothing behind it.
        host, port = str(http.base_url).removeprefix("http://").rstrip("/").split(":")
        up = "." * 2  # a URL's dot segment (spelt so: no file path is meant)
        for raw in (f"/codec/{up}/executions", "/codec/%2e%2e/executions",
                    f"/codec/key/{auth.codec_key}/{up}/{up}/executions"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                         .encode())
            status = (await reader.readline()).split()[1]
            writer.close()
            assert status in (b"401", b"404"), (raw, status)
            refused += 1
    print(f"[local-token] {refused} requests without the right credential refused")


async def test_serve_refuses_a_non_loopback_host_without_an_issuer(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSC_")}
    env["OPSC_HOME"] = str(tmp_path / "home")
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        cli = await run_cli(env, "serve", "--host", host, "--port", "1", timeout=60)
        assert cli.code == 2, cli
        assert "OPSC_OIDC_ISSUER" in cli.stderr and host in cli.stderr, cli
    assert not (tmp_path / "home" / "api-token").exists()  # refused before anything else
    unsafe = await run_cli({**env, "OPSC_OIDC_ISSUER": "https://id.example.com/realms/ops",
                            "OPSC_OIDC_AUDIENCE": "api", "OPSC_OIDC_ALGORITHMS": "HS256"},
                           "serve", "--port", "1", timeout=60)
    assert unsafe.code == 2 and "OPSC_OIDC_ALGORITHMS" in unsafe.stderr, unsafe
    assert "Traceback" not in unsafe.stderr
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.8.0.1")] == [
        True] * 4
