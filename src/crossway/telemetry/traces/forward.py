"""Forwarding ingested spans to an external Zipkin or OTLP/HTTP collector.

One setting chooses the destination (`CROSSWAY_TRACES_FORWARD`):

    zipkin+http://zipkin:9411/api/v2/spans     Zipkin v2 JSON
    otlp+http://collector:4318/v1/traces       OTLP/HTTP JSON
    (…+https:// likewise; a URL without a path gets the protocol's usual one)

Theory of operation
- `ForwardBuffer` is the pure part: a bounded FIFO of spans. `offer` never
  blocks and never fails: what does not fit is dropped and counted, because
  ingest must not slow down when the collector does.
- `Forwarder` owns one background task that takes batches of up to
  `batch_size` spans, when a batch is full or every `flush_interval`, and
  POSTs each. A batch that fails with a network error, a 5xx, 408 or 429 is
  retried after an exponential backoff with full jitter, up to
  `max_attempts`; any other 4xx will not get better and is dropped at once.
  Meanwhile new spans wait in the buffer (bounded, as above).
- Every span is forwarded as it was ingested, before the local store's tail
  sampling: the collector makes its own sampling decisions.

Invariant: the buffer never holds more than `capacity` spans; every span
offered is eventually counted exactly once as forwarded, dropped (buffer
full, batch given up, or still buffered when the forwarder closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx2

from crossway.core.errors import InvalidArgument
from crossway.resilience.backoff import Backoff
from crossway.telemetry.traces import otlp, zipkin
from crossway.telemetry.traces.model import Span

log = logging.getLogger("crossway.traces")

Protocol = Literal["zipkin", "otlp"]
DEFAULT_PATHS: dict[str, str] = {"zipkin": "/api/v2/spans", "otlp": "/v1/traces"}
_RETRIED_STATUSES = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    protocol: Protocol
    url: str

    def encode(self, spans: Sequence[Span]) -> bytes:
        if self.protocol == "zipkin":
            return zipkin.encode_spans(spans)
        return otlp.encode_json(spans)


def parse_target(text: str) -> ForwardTarget:
    """`zipkin+http://host:9411/api/v2/spans` or `otlp+http://host:4318/v1/traces`.

    Raises `InvalidArgument` for anything else (an unknown protocol, a scheme
    other than http/https, no host).
    """
    parts = urlsplit(text.strip())
    protocol, _, scheme = parts.scheme.partition("+")
    if protocol not in DEFAULT_PATHS or scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(
            f"CROSSWAY_TRACES_FORWARD: {text!r} must look like "
            "zipkin+http://host:9411/api/v2/spans or otlp+http://host:4318/v1/traces",
            field="CROSSWAY_TRACES_FORWARD",
        )
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATHS[protocol]
    url = urlunsplit((scheme, parts.netloc, path, parts.query, ""))
    return ForwardTarget(protocol, url)  # type: ignore[arg-type]  # checked just above


@dataclass(slots=True)
class ForwardStats:
    forwarded: int = 0
    dropped: int = 0
    retries: int = 0
    failed_batches: int = 0


class ForwardBuffer:
    """A bounded FIFO of spans that drops (and counts) what does not fit."""

    def __init__(self, capacity: int, stats: ForwardStats | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.stats = stats if stats is not None else ForwardStats()
        self._spans: deque[Span] = deque()

    def offer(self, spans: Sequence[Span]) -> int:
        """Buffer as many of `spans` as fit; returns that number."""
        room = self.capacity - len(self._spans)
        taken = spans[: max(0, room)]
        self._spans.extend(taken)
        self.stats.dropped += len(spans) - len(taken)
        return len(taken)

    def take(self, limit: int) -> list[Span]:
        """Up to `limit` spans, oldest first, removed from the buffer."""
        count = min(limit, len(self._spans))
        return [self._spans.popleft() for _ in range(count)]

    def discard(self) -> int:
        """Drop everything buffered (counted as dropped); returns how many."""
        count = len(self._spans)
        self._spans.clear()
        self.stats.dropped += count
        return count

    def __len__(self) -> int:
        return len(self._spans)


class Forwarder:
    """Batches spans to one target from one owned background task.

    `start()` inside the running loop; `offer()` from the same loop; `close()`
    sends what is buffered within `close_timeout` seconds, then cancels the
    task and drops (counting) whatever is left.
    """

    def __init__(
        self,
        target: ForwardTarget,
        *,
        batch_size: int = 512,
        capacity: int = 20_000,
        flush_interval: float = 1.0,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        timeout: float = 10.0,
        close_timeout: float = 5.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.target = target
        self.stats = ForwardStats()
        self.buffer = ForwardBuffer(capacity, self.stats)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff if backoff is not None else Backoff(base=0.5, cap=30.0)
        self.close_timeout = close_timeout
        self._rand = rand
        self._timeout = timeout
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._http: httpx2.AsyncClient | None = None

    async def start(self) -> None:
        if self._task is None:
            self._http = httpx2.AsyncClient(timeout=self._timeout)
            self._task = asyncio.get_running_loop().create_task(self._run())

    def offer(self, spans: Sequence[Span]) -> None:
        """Queue spans for the collector; never blocks (drops when full)."""
        if self._closing:
            self.stats.dropped += len(spans)
            return
        self.buffer.offer(spans)
        if len(self.buffer) >= self.batch_size:
            self._wake.set()

    async def close(self) -> None:
        """Flush within `close_timeout`, then stop. On cancellation the task is
        still cancelled and the HTTP client closed before it propagates."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), self.close_timeout)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            self.buffer.discard()
            if self._http is not None:
                await self._http.aclose()

    async def _run(self) -> None:
        while True:
            if not self._closing and len(self.buffer) < self.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            while batch := self.buffer.take(self.batch_size):
                try:
                    await self._send_with_retries(batch)
                except asyncio.CancelledError:
                    self.stats.dropped += len(batch)  # keeps every span counted once
                    raise
            if self._closing:
                return

    async def _send_with_retries(self, batch: list[Span]) -> None:
        body = self.target.encode(batch)
        previous: float | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
                previous = self.backoff.delay(attempt - 1, previous=previous, rand=self._rand)
                await asyncio.sleep(previous)
            outcome = await self._send(body)
            if outcome == "sent":
                self.stats.forwarded += len(batch)
                return
            if outcome == "rejected" or self._closing:
                break
        self.stats.failed_batches += 1
        self.stats.dropped += len(batch)

    async def _send(self, body: bytes) -> Literal["sent", "retry", "rejected"]:
        assert self._http is not None
        try:
            response = await self._http.post(
                self.target.url, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx2.HTTPError as exc:
            log.warning("forwarding spans failed: %s", exc, extra={"target": self.target.url})
            return "retry"
        if response.status_code < 300:
            return "sent"
        log.warning(
            "the trace collector answered %d",
            response.status_code,
            extra={"target": self.target.url},
        )
        retry = response.status_code >= 500 or response.status_code in _RETRIED_STATUSES
        return "retry" if retry else "rejected"
