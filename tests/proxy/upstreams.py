"""Real upstream servers on loopback for the engine's integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

CHUNK = b"x" * 65536


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """/echo echoes the body; /big?n=N streams N bytes; /count counts the body;
    /headers returns the request headers; anything else says hello."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":
        await _echo(receive, send)
    elif path == "/big":
        await _big(int(scope["query_string"].split(b"=")[1]), send)
    elif path == "/count":
        await _count(receive, send)
    elif path == "/headers":
        lines = b"\n".join(n + b": " + v for n, v in scope["headers"])
        await _reply(send, 200, lines)
    elif path == "/status":
        await _reply(send, int(scope["query_string"].split(b"=")[1]), b"")
    else:
        await _reply(send, 200, b"hello " + path.encode())


async def _reply(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _echo(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
        await send(
            {"type": "http.response.body", "body": message.get("body", b""), "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


async def _big(n: int, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while n > 0:
        piece = CHUNK[: min(n, len(CHUNK))]
        n -= len(piece)
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _count(receive: Receive, send: Send) -> None:
    total = 0
    more = True
    while more:
        message = await receive()
        total += len(message.get("body", b""))
        more = message.get("more_body", False)
    await _reply(send, 200, str(total).encode())


@contextlib.asynccontextmanager
async def uvicorn_upstream() -> AsyncIterator[int]:
    """An uvicorn server running `app` on 127.0.0.1; yields its port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="error", http="httptools", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def raw_upstream(
    respond: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A hand-written upstream for misbehaviour; yields (port, heads it received)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            await respond(reader, writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read until the peer closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read(-1) if until_close else await reader.read(65536)
    finally:
        writer.close()
