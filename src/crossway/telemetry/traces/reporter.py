"""Sending the spans a process records to the control plane, in batches.

    reporter = SpanReporter("http://127.0.0.1:7700")
    await reporter.start()
    reporter.record(span)          # from the request path: never blocks, never raises
    await reporter.aclose()        # sends what is left (bounded), then stops

Theory of operation
- `record(span)` appends to a bounded buffer and returns. When the buffer is
  full the span is dropped and counted (`stats.dropped`): a slow or dead
  control plane must cost the application nothing but those spans.
- One owned background task sends Zipkin v2 JSON to `POST /api/v2/spans`:
  every full batch (`batch_size` spans) as soon as it is waiting, and what
  is left, a partial batch, once `flush_interval` passes without a full
  one. A wake-up for a full batch sends full batches only: the spans
  recorded meanwhile wait to fill the next one rather than go as a second
  post of a few spans (each post costs about the same whatever its size).
  Each batch is encoded in one msgspec call. A batch that fails (network
  error, any non-2xx) is dropped and counted (`stats.failed`), not retried:
  spans are sampled data, and a retry queue is one more thing to bound. The
  rest of the buffer waits for the next tick, so a dead endpoint is tried
  once per interval, not once per batch. The outage is logged once when it
  starts and once when it ends (`OutageLog`).
- `record` may be called from any thread (a sync application's worker
  threads): a deque append is atomic, and the wake-up for a full batch goes
  through `call_soon_threadsafe` when called off the loop's thread.
- The gateway and the SDK share this class; the control plane's own
  forwarder (forward.py) is the retrying, higher-volume sibling.

Invariant: every span given to `record` is counted exactly once, as sent,
dropped (buffer full, or still buffered when closing ran out of time) or
failed (its batch was refused or could not be delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass

import httpx2
import msgspec

from crossway.telemetry.outage import OutageLog
from crossway.telemetry.traces.model import Span
from crossway.telemetry.traces.spans import HttpServerSpan

log = logging.getLogger("crossway.traces")

SPANS_PATH = "/api/v2/spans"

Reportable = Span | HttpServerSpan
"""What `record` takes: anything that encodes as a Zipkin v2 span."""
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class ReporterStats:
    recorded: int = 0
    sent: int = 0
    dropped: int = 0
    failed: int = 0
    batches: int = 0


class SpanReporter:
    """Batches spans to a control plane (see the module header).

    `url` is the control plane's base URL; `client`, when given, is used as
    is (its base URL and headers too) and not closed here.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        capacity: int = 10_000,
        timeout: float = 5.0,
        token: str | None = None,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        if batch_size < 1 or capacity < 1 or flush_interval <= 0:
            raise ValueError("batch_size, capacity and flush_interval must be positive")
        self.endpoint = url.rstrip("/") + SPANS_PATH
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.capacity = capacity
        self.timeout = timeout
        self.stats = ReporterStats()
        self.outage = OutageLog("spans", self.endpoint, log)
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._client = client
        self._owns_client = client is None
        self._spans: deque[Reportable] = deque()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- the request path ------------------------------------------------------------

    def record(self, span: Reportable) -> None:
        """Queue `span`; drops (and counts) it when the buffer is full or closed."""
        stats = self.stats
        stats.recorded += 1
        spans = self._spans
        if self._closed or len(spans) >= self.capacity:
            stats.dropped += 1
            return
        spans.append(span)
        if len(spans) == self.batch_size:
            self._wake_up()

    def _wake_up(self) -> None:
        wake, loop = self._wake, self._loop
        if wake is None or loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    def __len__(self) -> int:
        return len(self._spans)

    # -- the background task ---------------------------------------------------------

    async def start(self) -> None:
        """Start sending from the running loop (idempotent)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._http()  # made now: its set-up (TLS defaults, imports) stays off the request path
        self._task = self._loop.create_task(self._run(), name="crossway-span-reporter")

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            full_batch = True
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                full_batch = False
            self._wake.clear()
            if full_batch:
                await self._send_full_batches()
            else:
                await self.flush()

    async def _send_full_batches(self) -> None:
        spans, size = self._spans, self.batch_size
        while len(spans) >= size:
            if not await self._send(self._take()):
                return

    async def flush(self) -> bool:
        """Send everything buffered now, batch by batch; stops at the first
        failed batch (the rest waits for the next tick). True if all went.

        Spans recorded while it sends wait for the next wake-up: a caller
        that records one span per request would otherwise keep it sending
        batches of one or two, a POST per request."""
        pending = len(self._spans)
        while pending > 0 and self._spans:
            batch = self._take()
            pending -= len(batch)
            if not await self._send(batch):
                return False
        return True

    def _take(self) -> list[Reportable]:
        spans = self._spans
        return [spans.popleft() for _ in range(min(self.batch_size, len(spans)))]

    async def _send(self, batch: list[Reportable]) -> bool:
        body = _encode(batch)
        try:
            response = await self._http().post(self.endpoint, content=body, headers=self._headers)
        except httpx2.HTTPError as exc:
            return self._failed(batch, str(exc) or type(exc).__name__)
        except asyncio.CancelledError:
            self.stats.dropped += len(batch)  # every span stays counted once
            raise
        if response.status_code >= 300:
            return self._failed(batch, f"status {response.status_code}: {response.text[:200]}")
        self.stats.sent += len(batch)
        self.stats.batches += 1
        self.outage.succeeded()
        return True

    def _failed(self, batch: list[Reportable], why: str) -> bool:
        self.stats.failed += len(batch)
        self.outage.failed(why)
        return False

    async def aclose(self) -> None:
        """Stop the loop, send what is left within `timeout`, then drop (and
        count) anything still buffered. Cancellation still closes the client."""
        self._closed = True
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self.flush()
        finally:
            self.stats.dropped += len(self._spans)
            self._spans.clear()
            if self._owns_client and self._client is not None:
                await self._client.aclose()
                self._client = None

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:  # made on first use, inside the running loop
            self._client = httpx2.AsyncClient(timeout=self.timeout, trust_env=False)
        return self._client

    async def __aenter__(self) -> SpanReporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
