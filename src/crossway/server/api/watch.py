"""`GET /v1/watch?prefix=/…&after=N`: store events as Server-Sent Events.

Theory of operation
- The stream starts after `Last-Event-ID` (a reconnecting client), else after
  `?after=N`, else at the current revision; the response's
  `X-Crossway-Index` says which. The usual client pattern is: list, then
  watch with `after=<the list's X-Crossway-Index>`; nothing falls between.
- One loop waits for whichever comes first: a batch of events (sent at once,
  framed by `crossway.server.sse`), the client disconnecting, the server
  beginning to shut down, or `sse_heartbeat` seconds of silence (a comment
  line is sent, keeping proxies and load balancers from timing out).
- If the requested revision has been compacted away, the stream sends one
  `event: compacted` and ends: the client must re-list.
- Shutdown ends the stream promptly with a comment; clients reconnect to
  another replica (or this one, restarted) with `Last-Event-ID`.

The endpoint is a raw ASGI app rather than a `StreamingResponse`, so that it
notices a disconnect at once instead of at the next write, and releases its
store watch right away.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from crossway.server.context import ServerContext
from crossway.server.http import INDEX_HEADER
from crossway.server.sse import (
    check_prefix,
    comment,
    compacted_frame,
    encode_batch,
    resume_revision,
)
from crossway.store.errors import CompactedError, StoreClosed
from crossway.store.protocol import Watch
from crossway.store.types import Event

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer
]


def routes(ctx: ServerContext) -> list[BaseRoute]:
    return [Route("/v1/watch", WatchStream(ctx), methods=["GET"])]


class WatchStream:
    """The ASGI endpoint; one instance serves every watch request."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        prefix = check_prefix(request.query_params.get("prefix", "/"))
        after = resume_revision(
            request.headers.get("last-event-id"), request.query_params.get("after")
        )
        start = after if after is not None else await self.ctx.store.revision()
        headers = [*SSE_HEADERS, (INDEX_HEADER.lower().encode(), str(start).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await _body(send, comment(f"watching {prefix} after revision {start}"))
        async with self.ctx.store.watch(prefix, after_revision=start) as watch:
            if await self._pump(watch, receive, send):
                await send({"type": "http.response.body", "body": b""})

    async def _pump(self, watch: Watch, receive: Receive, send: Send) -> bool:
        """Stream until the end; True when the response should be finished
        normally, False when the client is gone."""
        batch = asyncio.ensure_future(watch.next_batch())
        gone = asyncio.ensure_future(_disconnected(receive))
        stopping = asyncio.ensure_future(self.ctx.stopping.wait())
        heartbeat = self.ctx.settings.sse_heartbeat
        try:
            while True:
                waiting = {batch, gone, stopping}
                done, _ = await asyncio.wait(
                    waiting, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    return False
                if batch in done:
                    if not await _send_batch(batch, send):
                        return True
                    batch = asyncio.ensure_future(watch.next_batch())
                elif stopping in done:
                    await _body(send, comment("server shutting down; reconnect with Last-Event-ID"))
                    return True
                else:
                    await _body(send, comment("heartbeat"))
        finally:
            await _cancel_all(batch, gone, stopping)


async def _send_batch(batch: asyncio.Future[list[Event]], send: Send) -> bool:
    """Send the finished batch; False when the stream must end (compacted or
    the store closed)."""
    try:
        events = batch.result()
    except CompactedError as exc:
        await _body(send, compacted_frame(exc.compacted_revision))
        return False
    except StoreClosed:
        return False
    await _body(send, encode_batch(events))
    return True


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cancel_all(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
