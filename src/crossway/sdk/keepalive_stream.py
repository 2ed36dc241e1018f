"""Lease keepalives over one long-lived stream per client, as etcd's clients do.

    channel = KeepaliveChannel(control)          # one per Client
    ttl = await channel.renew(lease, timeout=3)  # a line on the stream
    await channel.aclose()

Theory of operation
- `POST /v1/leases/keepalive/stream` (crossway.server.api.registry) takes a
  chunked body of lease ids, one per line, and answers each on a chunked
  response: `<lease> <ttl>`, `<lease> missing` or `<text> invalid`; lines
  starting with `#` are notes. A renewal costs a line instead of a request.
- That needs the request body and the response to flow at the same time.
  httpx2 (httpcore2) sends the whole request body before it reads the
  response, so a body that never ends would never see an answer; the stream
  therefore runs on h11 directly (`DuplexStream`): the same HTTP/1.1 state
  machine httpx2 uses, over an asyncio connection of our own. Everything
  else the SDK sends still goes through httpx2.
- `KeepaliveChannel.renew` writes the lease on the stream (lines written in
  one event-loop iteration go out as one chunk) and waits for its answer;
  the answers arrive in order, so each lease's waiters are served first in,
  first out. It answers as `ControlPlane.keepalive` (the PUT) does: the TTL,
  `ControlPlaneError` 404 `lease_not_found` for `missing`, 400 for
  `invalid`, `ControlPlaneUnavailable` when no answer comes in time.
- The stream is opened on first use and again after it ends. When the server
  ends it (shutting down, idle), renewals in flight are sent once more on a
  fresh stream. When the control plane has no such route (404/405: an older
  version) or the stream cannot be opened, renewals go by PUT; the stream is
  tried again after `UNSUPPORTED_RETRY` or `STREAM_RETRY` seconds.

Invariants
- At most one stream per channel; its reader and writer tasks are created
  when it opens and cancelled and awaited by `aclose()` (or when it breaks).
- A renewal never waits longer than its `timeout`; a stream that let one
  time out is dropped, so the next renewal starts afresh.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl

import h11
import httpx2

from crossway.core.clock import Clock, SystemClock
from crossway.sdk.control import ControlPlane, ControlPlaneError, ControlPlaneUnavailable

log = logging.getLogger("crossway.sdk.registration")

STREAM_PATH = "/v1/leases/keepalive/stream"
STREAM_RETRY = 10.0
"""Seconds of PUT keepalives after a stream could not be opened."""
UNSUPPORTED_RETRY = 600.0
"""Seconds of PUT keepalives after the control plane said it has no stream."""
READ_SIZE = 65536
MAX_ANSWER_LINE = 4096
"""Bytes of an answer line beyond which the stream is taken as broken."""


class StreamRefused(Exception):
    """The server answered the stream's request with an error status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class StreamClosed(Exception):
    """The stream ended or broke before answering."""


class DuplexStream:
    """One HTTP/1.1 request whose body and response stream at the same time
    (see the module header). Not safe for two concurrent senders or readers."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: h11.Connection
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = conn

    @classmethod
    async def open(
        cls, url: str, headers: list[tuple[str, str]], *, content_type: str = "text/plain"
    ) -> DuplexStream:
        """Connect, send the request head with a chunked body, and wait for a
        200 head. `StreamRefused` for any other status (its body read), OSError
        or `h11.ProtocolError` when the connection fails. Cancelling closes it."""
        target = httpx2.URL(url)
        tls = ssl.create_default_context() if target.scheme == "https" else None
        port = target.port or (443 if tls else 80)
        reader, writer = await asyncio.open_connection(target.host, port, ssl=tls)
        stream = cls(reader, writer, h11.Connection(our_role=h11.CLIENT))
        try:
            host = target.host if target.port is None else f"{target.host}:{target.port}"
            request_headers = [
                ("Host", host),
                ("Transfer-Encoding", "chunked"),
                ("Content-Type", content_type),
                *headers,
            ]
            path = target.raw_path.decode("ascii")
            stream._write(h11.Request(method="POST", target=path, headers=request_headers))
            response = await stream._head()
            if response.status_code != 200:
                raise StreamRefused(response.status_code, await stream._rest())
        except BaseException:
            stream.abort()
            raise
        return stream

    async def send(self, data: bytes) -> None:
        """Send `data` as one chunk of the body; OSError if the connection broke."""
        self._write(h11.Data(data=data))
        await self._writer.drain()

    async def finish(self) -> None:
        """End the request body; the server then ends its response."""
        self._write(h11.EndOfMessage())
        await self._writer.drain()

    async def receive(self) -> bytes | None:
        """The next piece of the response body; None once the response ended.
        OSError or `h11.ProtocolError` when the connection breaks."""
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._reader.read(READ_SIZE))
            elif isinstance(event, h11.Data):
                return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    def abort(self) -> None:
        """Close the connection now (whatever is unsent is dropped)."""
        self._writer.close()

    async def _head(self) -> h11.Response:
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._reader.read(READ_SIZE))
            elif isinstance(event, h11.Response):
                return event
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the server closed the connection")

    async def _rest(self) -> bytes:
        body = bytearray()
        while (piece := await self.receive()) is not None:
            body += piece
        return bytes(body)

    def _write(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)


class LeaseStream:
    """An open keepalive stream: lines out, answers in (see the module header)."""

    def __init__(self, duplex: DuplexStream) -> None:
        self._duplex = duplex
        self._waiting: dict[str, collections.deque[asyncio.Future[str]]] = {}
        self._outbox: list[str] = []
        self._wakeup = asyncio.Event()
        self.closed = False
        self._tasks = [
            asyncio.create_task(self._read(), name="crossway-keepalive-stream-reader"),
            asyncio.create_task(self._write(), name="crossway-keepalive-stream-writer"),
        ]

    async def renew(self, lease: str) -> str:
        """Send `lease` and return the server's answer word (a TTL, `missing`
        or `invalid`). `StreamClosed` if the stream ends first."""
        if self.closed:
            raise StreamClosed("the keepalive stream is closed")
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(lease, collections.deque()).append(answer)
        self._outbox.append(lease)
        self._wakeup.set()
        try:
            return await answer
        except asyncio.CancelledError:
            answers = self._waiting.get(lease)
            if answers is not None:
                with contextlib.suppress(ValueError):
                    answers.remove(answer)
                if not answers:
                    del self._waiting[lease]
            raise

    async def aclose(self) -> None:
        self._close()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._duplex.abort()
        waiting, self._waiting = self._waiting, {}
        for answers in waiting.values():
            for answer in answers:
                if not answer.done():
                    answer.set_exception(StreamClosed("the keepalive stream ended"))

    async def _write(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                lines, self._outbox = self._outbox, []
                await self._duplex.send(("\n".join(lines) + "\n").encode())
        except (OSError, h11.ProtocolError) as exc:
            log.debug("the keepalive stream broke while sending: %s", exc)
        finally:
            self._close()

    async def _read(self) -> None:
        partial = b""
        try:
            while (piece := await self._duplex.receive()) is not None:
                *lines, partial = (partial + piece).split(b"\n")
                for line in lines:
                    self._answer(line.decode("utf-8", "replace").strip())
                if len(partial) > MAX_ANSWER_LINE:
                    raise h11.RemoteProtocolError("an answer line without end")
            log.debug("the control plane ended the keepalive stream")
        except (OSError, h11.ProtocolError) as exc:
            log.debug("the keepalive stream broke: %s", exc)
        finally:
            self._close()

    def _answer(self, line: str) -> None:
        if not line or line.startswith("#"):
            if line:
                log.debug("keepalive stream: %s", line[1:].strip())
            return
        lease, _, word = line.rpartition(" ")
        answers = self._waiting.get(lease)
        if not answers:
            return  # an answer to a renewal that was cancelled meanwhile
        answer = answers.popleft()
        if not answers:
            del self._waiting[lease]
        if not answer.done():
            answer.set_result(word)


class KeepaliveChannel:
    """Renews leases over one stream per client, or by PUT where the stream
    is not available; see the module header. Close with `aclose()`."""

    def __init__(
        self, control: ControlPlane, *, streaming: bool = True, clock: Clock | None = None
    ) -> None:
        self.control = control
        self.streaming = streaming
        self.clock = clock or SystemClock()
        self.stream_renewals = 0
        """Renewals answered on the stream."""
        self.put_renewals = 0
        """Renewals sent as `PUT /v1/leases/{lease}/keepalive`."""
        self.streams_opened = 0
        self._stream: LeaseStream | None = None
        self._opening = asyncio.Lock()
        self._retry_at = 0.0

    async def renew(self, lease: str, *, timeout: float) -> float | None:
        """Renew `lease` within `timeout` seconds: its TTL (None when renewed by
        PUT, which answers no number the SDK needs). Raises `ControlPlaneError`
        404 `lease_not_found` when the lease is gone (register again), or
        `ControlPlaneUnavailable`. Cancellation propagates."""
        try:
            async with asyncio.timeout(timeout):
                return await self._renew(lease, timeout)
        except TimeoutError:
            await self._drop()
            raise ControlPlaneUnavailable(
                f"no answer to the keepalive of lease {lease} within {timeout:g}s"
            ) from None

    async def aclose(self) -> None:
        """Close the stream (renewals waiting on it fail with `StreamClosed`
        inside and are not retried: the channel is done)."""
        self.streaming = False
        await self._drop()

    async def _renew(self, lease: str, timeout: float) -> float | None:
        for _ in range(2):
            stream = await self._open()
            if stream is None:
                self.put_renewals += 1
                await self.control.keepalive(lease, timeout=timeout)
                return None
            try:
                word = await stream.renew(lease)
            except StreamClosed:
                continue  # ended by the server (shutdown, idle): once more, on a new stream
            self.stream_renewals += 1
            return _ttl_of(lease, word)
        raise ControlPlaneUnavailable("the keepalive stream ended twice before answering")

    async def _open(self) -> LeaseStream | None:
        """The open stream, opening one if needed; None: use PUT for now."""
        if self._stream is not None and not self._stream.closed:
            return self._stream
        if not self.streaming or self.clock.now() < self._retry_at:
            return None
        async with self._opening:
            if self._stream is not None and not self._stream.closed:
                return self._stream
            if self._stream is not None:
                await self._stream.aclose()
                self._stream = None
            self._stream = await self._connect()
            return self._stream

    async def _connect(self) -> LeaseStream | None:
        headers = [("Authorization", f"Bearer {t}")] if (t := self.control.settings.token) else []
        try:
            duplex = await DuplexStream.open(self.control.url + STREAM_PATH, headers)
        except StreamRefused as exc:
            unsupported = exc.status in (404, 405)
            self._retry_at = self.clock.now() + (UNSUPPORTED_RETRY if unsupported else STREAM_RETRY)
            if unsupported:
                log.info("the control plane has no keepalive stream; renewing leases with PUT")
            else:
                log.debug("the keepalive stream was refused (HTTP %d)", exc.status)
            return None
        except (OSError, h11.ProtocolError) as exc:
            self._retry_at = self.clock.now() + STREAM_RETRY
            log.debug("cannot open the keepalive stream: %s", exc)
            return None
        self.streams_opened += 1
        return LeaseStream(duplex)

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()


def _ttl_of(lease: str, word: str) -> float:
    """The TTL in an answer word, or the error the PUT would have raised."""
    if word == "missing":
        raise ControlPlaneError(404, "lease_not_found", f"lease {lease} not found")
    if word == "invalid":
        raise ControlPlaneError(400, "invalid_argument", f"{lease!r} is not a lease id")
    try:
        return float(word)
    except ValueError:
        raise ControlPlaneUnavailable(f"the keepalive stream answered {word!r}") from None
