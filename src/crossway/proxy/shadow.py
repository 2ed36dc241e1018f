# The shadow side of traffic mirroring: a bodiless copy of a request whose
# answer and failures are dropped (see `Gateway._mirror`).
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from crossway.proxy.headers import Headers
from crossway.proxy.stream import Stream


class ShadowStream:
    """A mirrored copy of a request without a body; whatever comes back is dropped."""

    def __init__(self, original: Stream) -> None:
        head = original.head
        host = (head.host or b"") + b"-shadow"  # as Envoy marks shadowed requests
        headers = [(n, host if n == b"host" else v) for n, v in head.headers]
        self.head = dataclasses.replace(head, headers=headers, host=host, expect_continue=False)
        self.peer = original.peer
        self.response_started = False

    async def read(self) -> bytes | None:
        return None

    def start_response(
        self,
        status: int,
        headers: Headers,
        *,
        length: int | None,
        no_body: bool = False,
        defer: bool = False,
    ) -> None:
        self.response_started = True

    async def write(self, data: bytes) -> None:
        return None

    def finish(self) -> None:
        return None

    def abort(self) -> None:
        return None

    def send_local(self, response: bytes, *, close: bool = False) -> None:
        return None

    def start_tunnel(self, headers: Headers) -> None:
        return None

    async def tunnel_read(self) -> bytes | None:
        return None

    async def tunnel_write(self, data: bytes) -> None:
        return None


def forget(tasks: set[asyncio.Task[int]]) -> Callable[[asyncio.Task[int]], None]:
    def done(task: asyncio.Task[int]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so a shadow failure is never logged as lost

    return done
