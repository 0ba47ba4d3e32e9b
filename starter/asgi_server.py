"""An ASGI app served by uvicorn in this process's event loop, in the background: the dev
stack's payload codec (and the tests' local HTTP servers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn

STARTED_POLL_SECONDS = 0.02  # uvicorn has no event for "listening"; only a flag


@dataclass
class BackgroundServer:
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, timeout)


async def serve_in_background(app: Any, host: str = "127.0.0.1", port: int = 0, *,
                              lifespan: Literal["auto", "on", "off"] = "off", timeout: float = 20.0
                              ) -> BackgroundServer:
    """Start serving `app` and return once it listens (port 0: a free one); OSError when it
    cannot (the port taken meanwhile), with the reason."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan=lifespan))

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit as exit_:  # uvicorn's answer to a failed bind; not the process's
            raise OSError(f"the server exited with {exit_.code} (the port may be in use)"
                          ) from None

    task = asyncio.create_task(serve())
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not server.started:
        if task.done() or loop.time() > end:
            if not task.done():
                task.cancel()
            err = (None if task.cancelled() or not task.done() else task.exception())
            raise OSError(f"could not serve on {host}:{port}: {err or 'it did not start'}")
        await asyncio.sleep(STARTED_POLL_SECONDS)
    return BackgroundServer(server, task)
