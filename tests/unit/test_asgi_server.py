"""A background server on a port already taken says so and leaves the process running
(uvicorn answers a failed bind with SystemExit, which would end the whole event loop)."""

from __future__ import annotations

import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from opsconductor.starter.asgi_server import serve_in_background

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_taken_port_is_an_error_not_an_exit() -> None:
    app = Starlette(routes=[Route("/", lambda _r: PlainTextResponse("up"))])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"could not serve on 127.0.0.1:{port}"):
            await serve_in_background(app, "127.0.0.1", port)
    server = await serve_in_background(app)  # the loop goes on: a free port still serves
    async with httpx.AsyncClient() as http:
        assert (await http.get(server.url)).text == "up"
    await server.stop()
