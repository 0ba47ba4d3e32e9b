"""The Web UI's payload codec over real HTTP: a compressed payload (a big plan's spec) comes
back as the JSON it carries, anything else unchanged; the UI's origin may call it and no other;
a bad body or an inflation bomb is refused with the reason; the `temporal` CLI reads a
compressed workflow input through it."""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from temporalio.api.common.v1 import Payload

from opsconductor.schema.payloads import DATA_CONVERTER, ENCODING, LargePayloadCodec
from opsconductor.starter.api import create_app
from opsconductor.starter.auth import LocalTokenAuth
from opsconductor.starter.binaries import temporal_cli
from opsconductor.starter.codec_server import CODEC_PATH, codec_app, ui_origins
from tests.helpers import payload_as_json, payload_from_json, serving, unique_queue

pytestmark = pytest.mark.asyncio(loop_scope="session")
UI = "http://127.0.0.1:8233"
AUTH = LocalTokenAuth("c" * 43)


@pytest.fixture
async def codec() -> AsyncIterator[httpx.AsyncClient]:
    """The codec behind a local token; the client sends it as the UI server would
    (`codec.passAccessToken`)."""
    app = Starlette(routes=[Mount(CODEC_PATH, codec_app(ui_origins(UI), auth=AUTH))])
    async with serving(app) as url, httpx.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": "Bearer " + "c" * 43}) as http:
        yield http


async def test_the_ui_sees_a_compressed_payload_as_its_json(codec: httpx.AsyncClient) -> None:
    big = {"steps": [{"id": f"s{i}", "command": f"echo {i}" * 20} for i in range(3000)]}
    small = {"status": "completed"}
    encoded = await DATA_CONVERTER.encode([big, small])
    assert encoded[0].metadata["encoding"] == ENCODING  # what the UI would show as binary
    resp = await codec.post("/codec/decode",
                            json={"payloads": [payload_as_json(p) for p in encoded]},
                            headers={"X-Namespace": "default", "Origin": UI})
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == UI
    shown = [payload_from_json(p) for p in resp.json()["payloads"]]
    assert shown[0].metadata["encoding"] == b"json/plain"
    assert json.loads(shown[0].data) == big
    assert shown[1] == encoded[1]  # not ours to decode: passed through untouched
    print(f"[codec] {encoded[0].ByteSize()} compressed bytes shown as {len(shown[0].data)} "
          "bytes of JSON")
    back = await codec.post("/codec/encode", json=resp.json())
    assert back.status_code == 200
    assert payload_from_json(back.json()["payloads"][0]).metadata["encoding"] == ENCODING


async def test_only_the_ui_origin_may_call_it(codec: httpx.AsyncClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,x-namespace"}
    for origin in (UI, "http://localhost:8233"):
        ok = await codec.options("/codec/decode", headers={"Origin": origin, **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
    other = await codec.options("/codec/decode",
                                headers={"Origin": "http://evil.test", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # The origin is the browser's business; the credential is the codec's own.
    bare = await codec.post("/codec/decode", json={"payloads": []},
                            headers={"Origin": UI, "Authorization": ""})
    assert bare.status_code == 401 and "bearer token is required" in bare.json()["error"]


async def test_bad_bodies_are_refused_with_the_reason(codec: httpx.AsyncClient) -> None:
    garbled = await codec.post("/codec/decode", content=b"{not json")
    assert garbled.status_code == 400
    assert "not a Payloads protobuf as JSON" in garbled.json()["error"]
    broken = Payload(metadata={"encoding": ENCODING}, data=b"not zlib at all")
    bad = await codec.post("/codec/decode", json={"payloads": [payload_as_json(broken)]})
    assert bad.status_code == 400 and "could not be decoded" in bad.json()["error"]
    assert (await codec.get("/codec/decode")).status_code == 405


async def test_an_inflation_bomb_stops_at_the_bound() -> None:
    bomb = Payload(metadata={"encoding": ENCODING},
                   data=zlib.compress(Payload(data=b"0" * 1_000_000).SerializeToString(), 9))
    assert len(bomb.data) < 2_000
    with pytest.raises(ValueError, match="inflates past 100000 bytes"):
        await LargePayloadCodec().decode_bounded([bomb], 100_000)
    whole = await LargePayloadCodec().decode_bounded([bomb], 2_000_000)
    assert len(whole[0].data) == 1_000_000


async def test_serve_mounts_the_codec(engine: Any) -> None:
    encoded = await DATA_CONVERTER.encode([{"n": "x" * 200_000}])
    async with (serving(create_app(engine, auth=AUTH)) as url,
                httpx.AsyncClient(base_url=url, timeout=30,
                                  headers={"Authorization": "Bearer " + "c" * 43}) as http):
        body = {"payloads": [payload_as_json(encoded[0])]}
        assert (await http.post("/codec/decode", json=body, headers={"Authorization": ""})
                ).status_code == 401
        resp = await http.post("/codec/decode", json=body)
        assert resp.status_code == 200, resp.text
        shown = payload_from_json(resp.json()["payloads"][0])
        assert json.loads(shown.data) == {"n": "x" * 200_000}
        assert "/codec/decode" in (await http.get("/openapi.json")).json()["paths"]


async def test_ui_origins() -> None:
    assert ui_origins("http://127.0.0.1:8233") == ["http://127.0.0.1:8233",
                                                   "http://localhost:8233"]
    assert ui_origins("https://temporal.example.com/ui") == ["https://temporal.example.com"]
    assert ui_origins(UI, "https://a.example, https://b.example/") == [
        "https://a.example", "https://b.example"]
    assert ui_origins(None) == []


async def test_the_temporal_cli_reads_a_compressed_input_through_the_codec(
        codec: httpx.AsyncClient, temporal_client: Any, temporal_server: Any) -> None:
    big = {"steps": [{"id": f"s{i}", "command": f"echo {i}" * 20} for i in range(3000)]}
    workflow_id = f"codec-probe-{uuid.uuid4().hex}"
    handle = await temporal_client.start_workflow("CodecProbe", big, id=workflow_id,
                                                  task_queue=unique_queue("codec"))
    try:
        async def show(*extra: str) -> Any:
            proc = await asyncio.create_subprocess_exec(
                temporal_cli(), "workflow", "show", "--address", temporal_server.address,
                "--workflow-id", workflow_id, "--output", "json", *extra,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            started = json.loads(out)["events"][0]["workflowExecutionStartedEventAttributes"]
            return started["input"]["payloads"][0]

        raw = await show()
        assert payload_from_json(raw).metadata["encoding"] == ENCODING  # binary without it
        decoded = payload_from_json(await show(
            "--codec-endpoint", f"{codec.base_url}{CODEC_PATH}",
            "--codec-auth", f"Bearer {'c' * 43}"))
        assert decoded.metadata["encoding"] == b"json/plain"
        assert json.loads(decoded.data) == big
    finally:
        await handle.terminate("codec probe done")
