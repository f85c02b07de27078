"""The hub can abort a stuck client's TCP connection only if the endpoint finds the
server's transport: checked under real uvicorn (the server `exchange serve` runs), with
the app's own middleware, since Starlette wraps the ASGI `send` the endpoint sees."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect

from app.config import Settings
from app.main import create_app
from app.ws.endpoint import KeepRawSend, _transport_abort


def test_the_app_installs_the_middleware() -> None:
    app = create_app(Settings())
    assert any(m.cls is KeepRawSend for m in app.user_middleware)


async def test_the_endpoint_finds_the_transport_under_uvicorn() -> None:
    found: list[object] = []
    app = FastAPI()

    @app.exception_handler(Exception)  # like the real app: Starlette then wraps `send`
    async def handler(_: object, exc: Exception) -> None:
        raise exc

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        found.append(_transport_abort(websocket))
        await websocket.send_text("ok")
        await websocket.close()

    app.add_middleware(KeepRawSend)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with connect(f"ws://127.0.0.1:{port}/ws") as client:
            assert await client.recv() == "ok"
    finally:
        server.should_exit = True
        await task
    assert len(found) == 1 and callable(found[0])
    assert getattr(found[0], "__name__", "") == "abort"
