# The seam between a wire protocol and the request handling above it.
#
# Theory of operation
# -------------------
# A protocol driver (HTTP/1.1 today in server.py, HTTP/2 later) turns each
# request into a `Stream`: the parsed head, the request body as a pull
# iterator, and a way to send the response. Handlers (the forwarder, local
# responses, admin pages) are written against `Stream` only, so a second
# protocol slots in by implementing this interface — framing, flow control,
# 100-continue and connection reuse stay inside the driver.
#
# Invariants
# ----------
# - `read()` returns body pieces in order, then None; it is the driver's cue
#   that the handler wants the body (HTTP/1.1 sends 100 Continue then).
# - `start_response` is called at most once; `write`/`finish` only after it.
# - A failure to deliver (client gone) raises `ConnectionError` from `write`
#   or `read`; a body the client sent wrongly raises `ClientBodyError`.
from __future__ import annotations

from typing import Protocol

from crossway.proxy.headers import Headers, Peer
from crossway.proxy.http1 import Rejected, RequestHead


class ClientBodyError(Exception):
    """The client's request body broke a rule mid-stream (e.g. too large)."""

    def __init__(self, rejected: Rejected) -> None:
        super().__init__(rejected.detail)
        self.rejected = rejected


class Stream(Protocol):
    head: RequestHead
    peer: Peer

    @property
    def response_started(self) -> bool: ...

    async def read(self) -> bytes | None: ...

    def start_response(
        self,
        status: int,
        headers: Headers,
        *,
        length: int | None,
        no_body: bool = False,
        defer: bool = False,
    ) -> None:
        """Send (or with `defer`, hold until the first body bytes) the head."""
        ...

    async def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...

    def send_local(self, response: bytes, *, close: bool = False) -> None: ...

    def start_tunnel(self, headers: Headers) -> None:
        """Answer 101 with `headers`; from now on bytes flow untouched."""
        ...

    async def tunnel_read(self) -> bytes | None:
        """The client's next tunnel bytes, or None when it closed."""
        ...

    async def tunnel_write(self, data: bytes) -> None:
        """Bytes to the client through the tunnel; waits while it is slow."""
        ...


class Handler(Protocol):
    async def __call__(self, stream: Stream) -> None: ...
