"""Client side of the golden signals: count requests locally, push a summary every 10 s.

Theory of operation
- `Recorder.record(route, method, status, duration)` adds one request to a
  cell keyed by (service called, route, method, caller, status class): a
  latency histogram on the shared bounds, a failure count and a latency sum.
  Memory is one cell per distinct key, capped at `max_cells` (later routes
  are recorded under `overflow`), whatever the request rate.
- `snapshot()` takes every cell and starts afresh, returning the `Push` the
  control plane expects (see `push.py`), or None when nothing happened.
  Recording and snapshotting share one lock, held only for dictionary work
  (never across I/O), so threads of a sync application may record too.
- A cell's failures are not counted per request: its key's status class
  decides whether all of its requests failed or none did (`is_error`), so
  the snapshot derives them from the count.
- `cell(...)` hands out a cell for a key, for a hot caller that keeps it
  and adds to it directly (`Cell.add`, no lock, no key built per request):
  the gateway, and the SDK client on its event loop's thread. A kept cell is
  written without the lock, so it must have one writer: kept cells live
  apart from the cells `record` writes under the lock (a blocking client's
  threads beside the loop), never the same object, and `snapshot` adds the
  two together. `cell()` is called from one thread only, the one that takes
  the snapshots (the pusher's loop thread); that thread keeps its cells
  only while `generation` (bumped by every snapshot) is unchanged: after a
  snapshot a kept cell no longer belongs to the recorder.
- A server-side recorder (the SDK middleware, a sidecar's inbound side)
  records requests *to* its own service; a client-side recorder (the
  gateway, the SDK client, a sidecar's outbound side) records requests to
  other services, passing `service=` per call, with itself as the caller.
- `StatsPusher` is the thin async driver: every `interval` seconds it posts
  the snapshot of each of its recorders (a process that both serves and
  calls keeps one per side) to `POST /v1/stats/push`. A failed push is
  dropped and counted (re-sending it later would pile old traffic into a new
  time slot); it never raises into the application, and a control plane
  that stays down is logged once per outage, not once per push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import httpx2
import msgspec

from crossway.telemetry.metrics import OVERFLOW, LabelBudget, is_error, status_class
from crossway.telemetry.outage import OutageLog
from crossway.telemetry.signals.histogram import BOUNDS, BUCKET_COUNT
from crossway.telemetry.signals.push import Push, PushSeries, Side, Source

log = logging.getLogger("crossway.telemetry")

CellKey = tuple[str, str, str, str, str]
"""(service, route, method, caller, status class)."""


class Cell:
    """One key's requests since the last snapshot: a latency histogram on the
    shared bounds and the sum of the latencies."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * BUCKET_COUNT
        self.sum = 0.0

    def add(self, seconds: float) -> None:
        """Count one request that took `seconds` (>= 0: the caller clamps a
        negative reading to 0). Without a lock: see `Recorder.cell`."""
        self.counts[bisect_left(BOUNDS, seconds)] += 1  # bucket_index, inlined
        self.sum += seconds


class Recorder:
    """Pre-aggregates requests into cells; see the module header."""

    def __init__(
        self,
        service: str,
        *,
        instance: str = "",
        side: Side = "server",
        max_cells: int = 500,
    ) -> None:
        self.service = service
        self.instance = instance
        self.side: Side = side
        self._routes = LabelBudget(max_cells)
        self._max_cells = max_cells
        self._cells: dict[CellKey, Cell] = {}  # written by `record`, under the lock
        self._kept: dict[CellKey, Cell] = {}  # handed out by `cell`, written by its thread
        self._lock = threading.Lock()
        self.generation = 0
        """Bumped by every snapshot: cells handed out before it are retired."""

    def record(
        self,
        route: str,
        method: str,
        status: int,
        duration: float,
        *,
        caller: str | None = None,
        service: str | None = None,
    ) -> None:
        """Count one request that took `duration` seconds and answered `status`
        (0: no response). `service` is the service called (default: this
        recorder's own); on the client side `caller` defaults to this service."""
        key = self._key(route, method, status, caller, service)
        seconds = duration if duration > 0.0 else 0.0
        index = bisect_left(BOUNDS, seconds)  # bucket_index, inlined: once per request
        with self._lock:
            cell = self._cells.get(key)
            if cell is None:
                cell = self._new_cell(self._cells, key)
            cell.counts[index] += 1
            cell.sum += seconds

    def cell(
        self,
        route: str,
        method: str,
        status: int,
        *,
        caller: str | None = None,
        service: str | None = None,
    ) -> Cell:
        """A cell for this request's key that only the calling thread adds to
        (without the lock), until `generation` changes; `record` counts the
        same key in another cell, and `snapshot` adds them up (module header)."""
        key = self._key(route, method, status, caller, service)
        with self._lock:
            cell = self._kept.get(key)
            return cell if cell is not None else self._new_cell(self._kept, key)

    def _key(
        self, route: str, method: str, status: int, caller: str | None, service: str | None
    ) -> CellKey:
        if caller is None and self.side == "client":
            caller = self.service
        route = self._routes.admit(route)
        return (service or self.service, route, method, caller or "", status_class(status))

    def _new_cell(self, cells: dict[CellKey, Cell], key: CellKey) -> Cell:
        if len(self._cells) + len(self._kept) >= self._max_cells:
            key = (key[0], OVERFLOW, key[2], key[3], key[4])
            found = cells.get(key)
            if found is not None:
                return found
        cell = cells[key] = Cell()
        return cell

    def snapshot(self, *, interval_s: float = 10.0) -> Push | None:
        """Everything recorded since the last snapshot, as a push; None if nothing."""
        with self._lock:
            cells, self._cells = self._cells, {}
            kept, self._kept = self._kept, {}
            self.generation += 1
        # Nothing writes these cells any more: `record` finds the new dict
        # under the lock, and a kept cell's thread is this one.
        for key, cell in kept.items():
            found = cells.get(key)
            if found is None:
                cells[key] = cell
            else:
                found.counts = [a + b for a, b in zip(found.counts, cell.counts, strict=True)]
                found.sum += cell.sum
        # A cell handed out by `cell()` may have been left empty.
        series = [_series(key, cell) for key, cell in cells.items() if any(cell.counts)]
        if not series:
            return None
        source = Source(self.service, self.instance)
        return Push(source=source, series=series, interval_s=interval_s, side=self.side)


def _series(key: CellKey, cell: Cell) -> PushSeries:
    service, route, method, caller, klass = key
    count = sum(cell.counts)
    return PushSeries(
        service=service,
        route=route,
        method=method,
        status_class=klass,
        count=count,
        buckets=cell.counts,
        errors=count if is_error(klass) else 0,
        sum=cell.sum,
        caller=caller or None,
    )


@dataclass(slots=True)
class PushStats:
    pushed: int = 0
    failed: int = 0
    series_dropped: int = 0


class StatsPusher:
    """Posts the snapshots of one or more `Recorder`s to a control plane every
    `interval` seconds.

    `start()` begins the loop in the running event loop; `aclose()` stops it
    and makes one last push (bounded by `timeout`). Cancellation of the loop is
    clean; a push that fails (unreachable control plane, error status) is
    dropped, counted in `stats` and logged once per outage, never raised.
    """

    def __init__(
        self,
        recorder: Recorder | Sequence[Recorder],
        url: str,
        *,
        interval: float = 10.0,
        timeout: float = 5.0,
        token: str | None = None,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.recorders = [recorder] if isinstance(recorder, Recorder) else list(recorder)
        self.recorder = self.recorders[0]
        self.endpoint = url.rstrip("/") + "/v1/stats/push"
        self.interval = interval
        self.timeout = timeout
        self.stats = PushStats()
        self.outage = OutageLog("golden signals", self.endpoint, log)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client
        self._owns_client = client is None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._http()  # made now, not during the first push
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def push(self) -> bool:
        """Send what was recorded since the last push; True when accepted (or nothing to send)."""
        ok = True
        for recorder in self.recorders:
            push = recorder.snapshot(interval_s=self.interval)
            if push is not None:
                ok = await self._push(push) and ok
        return ok

    async def _push(self, push: Push) -> bool:
        body = msgspec.json.encode(push)
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            response = await self._http().post(self.endpoint, content=body, headers=headers)
        except httpx2.HTTPError as exc:
            return self._failed(push, str(exc) or type(exc).__name__)
        if response.status_code >= 300:
            return self._failed(push, f"status {response.status_code}: {response.text[:200]}")
        self.stats.pushed += 1
        self.outage.succeeded()
        return True

    def _failed(self, push: Push, why: str) -> bool:
        self.stats.failed += 1
        self.stats.series_dropped += len(push.series)
        self.outage.failed(why)
        return False

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.push()

    async def aclose(self) -> None:
        """Stop the loop, push what is left (within `timeout`), close the client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.push()
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:  # made on first use, inside the running loop
            self._client = httpx2.AsyncClient(timeout=self.timeout)
        return self._client

    async def __aenter__(self) -> StatsPusher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
