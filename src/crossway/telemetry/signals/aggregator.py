"""Golden signals per service, per route and per caller→callee edge, from pushes.

Theory of operation
- `ingest(push)` files every pushed series under up to three keys — the
  service called, its route (method + template), and the edge from the caller
  when the caller is known — each holding a `Series` (10 s slots for the last
  hour, 1 min slots for the last day). Records are placed at the control
  plane's wall time of arrival, so pushes from machines with skewed clocks
  still line up.
- Each key also carries the `side` the requests were measured on. A service
  measured by its own SDK or sidecar (server side) and by its callers (client
  side) would be counted twice if the sides were added, so reads pick one:
  the server side when anything was recorded on it in the last day, else the
  client side (a service without Crossway inside it is still seen through
  its callers).
- Memory is bounded three ways: at most `max_keys` keys (a `Series` is at most
  ~216 KB), new keys past that go to one overflow key per kind and side; at
  most `max_cells_per_source` distinct (service, method, route, caller) cells
  per pushing source, later routes becoming `overflow`; and at most
  `max_sources` sources remembered (least recently seen forgotten first).
  Keys with nothing recorded for a day are dropped.
- Pure: the clock is injected; nothing here sleeps or does I/O.

Invariants
1. `len(keys) ≤ max_keys + 6` (the overflow keys: three kinds × two sides).
2. A push changes only the slots of the current time; reads never change state.
3. Totals over a service equal the sum of its routes' totals on the same side
   (each series is added to both).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from crossway.core.clock import Clock
from crossway.telemetry.metrics import OVERFLOW
from crossway.telemetry.signals.push import Push, PushSeries
from crossway.telemetry.signals.series import (
    MAX_WINDOW,
    Point,
    Series,
    Totals,
    resolution,
    sparse,
)

Kind = Literal["service", "route", "edge"]
KINDS: tuple[Kind, ...] = ("service", "route", "edge")
_EXPIRY_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Key:
    kind: Kind
    service: str
    """The service called."""
    side: str
    route: str = ""
    method: str = ""
    caller: str = ""

    @property
    def identity(self) -> tuple[str, str, str, str, str]:
        """The key without its side: what a row of a report is about."""
        return (self.kind, self.service, self.route, self.method, self.caller)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_keys: int = 1024
    max_cells_per_source: int = 500
    max_sources: int = 4096


@dataclass(slots=True)
class Stat:
    """The golden signals of one key over one window."""

    key: Key
    totals: Totals
    points: list[Point] | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"service": self.key.service}
        if self.key.kind == "route":
            row["route"] = self.key.route
            row["method"] = self.key.method
        if self.key.kind == "edge":
            row["caller"] = self.key.caller
        row["side"] = self.key.side
        row.update(totals_json(self.totals))
        if self.points is not None:
            row["series"] = [point_json(p) for p in self.points]
        return row


@dataclass(slots=True)
class Ingested:
    series: int = 0
    overflowed: int = 0


@dataclass(slots=True)
class _Counters:
    pushes: int = 0
    series: int = 0
    overflowed: int = 0
    keys_dropped: int = 0


@dataclass(slots=True)
class _SourceCells:
    cells: set[tuple[str, str, str, str]] = field(default_factory=set)


class Aggregator:
    """Golden-signal series for every key; see the module header."""

    def __init__(self, clock: Clock, *, limits: Limits | None = None) -> None:
        self.clock = clock
        self.limits = limits or Limits()
        self.counters = _Counters()
        self._series: dict[Key, Series] = {}
        self._sources: OrderedDict[tuple[str, str], _SourceCells] = OrderedDict()
        self._expired_at = clock.wall()

    # Writing.

    def ingest(self, push: Push) -> Ingested:
        """File a validated push (see `push.validate`) under its keys."""
        now = self.clock.wall()
        result = Ingested()
        cells = self._cells_of(push)
        for series in push.series:
            if series.count == 0:
                continue
            route = self._admit(cells, series)
            result.overflowed += route == OVERFLOW and series.route != OVERFLOW
            result.series += 1
            pairs = sparse(series.per_bucket())
            for key in _keys(series, route, push.side):
                self._record(key, now, pairs, series.errors, series.sum)
        self.counters.pushes += 1
        self.counters.series += result.series
        self.counters.overflowed += result.overflowed
        if now - self._expired_at >= _EXPIRY_EVERY:
            self.expire()
        return result

    def expire(self) -> int:
        """Drop keys with nothing recorded for a day; how many were dropped."""
        now = self.clock.wall()
        self._expired_at = now
        stale = [k for k, s in self._series.items() if s.updated < now - MAX_WINDOW]
        for key in stale:
            del self._series[key]
        self.counters.keys_dropped += len(stale)
        return len(stale)

    def _cells_of(self, push: Push) -> _SourceCells:
        source = (push.source.service, push.source.instance)
        cells = self._sources.get(source)
        if cells is None:
            cells = self._sources[source] = _SourceCells()
            while len(self._sources) > self.limits.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        return cells

    def _admit(self, source: _SourceCells, series: PushSeries) -> str:
        """The route to file `series` under: its own, or `OVERFLOW` past the source's limit."""
        cell = (series.service, series.method, series.route, series.caller or "")
        if cell in source.cells:
            return series.route
        if len(source.cells) < self.limits.max_cells_per_source:
            source.cells.add(cell)
            return series.route
        return OVERFLOW

    def _record(
        self, key: Key, now: float, pairs: list[tuple[int, int]], errors: int, total: float
    ) -> None:
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.limits.max_keys:
                key = _overflow_key(key)
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series()
        series.add_sparse(now, pairs, errors, total)

    # Reading.

    def stats(
        self,
        kind: Kind,
        window: float,
        *,
        service: str | None = None,
        route: str | None = None,
        method: str | None = None,
        caller: str | None = None,
        points: bool = False,
    ) -> list[Stat]:
        """One `Stat` per key of `kind` matching the filters, over the last `window` s."""
        now = self.clock.wall()
        out = []
        for key, series in self._chosen(kind):
            if not _matches(key, service=service, route=route, method=method, caller=caller):
                continue
            totals = series.window(now, window)
            if totals.requests == 0 and not points:
                continue
            stat = Stat(key, totals, series.points(now, window) if points else None)
            out.append(stat)
        out.sort(key=lambda s: s.key.identity)
        return out

    def total(self, window: float, *, service: str) -> Stat | None:
        """The service's own totals (all routes), or None without traffic in `window`."""
        found = self.stats("service", window, service=service)
        return found[0] if found else None

    def all_keys(self) -> list[Key]:
        return list(self._series)

    def _chosen(self, kind: Kind) -> Iterator[tuple[Key, Series]]:
        """The keys of `kind`, one side per identity: server when it exists."""
        chosen: dict[tuple[str, ...], tuple[Key, Series]] = {}
        for key, series in self._series.items():
            if key.kind != kind:
                continue
            held = chosen.get(key.identity)
            if held is None or (held[0].side != "server" and key.side == "server"):
                chosen[key.identity] = (key, series)
        yield from chosen.values()


def _keys(series: PushSeries, route: str, side: str) -> Iterable[Key]:
    yield Key("service", series.service, side)
    yield Key("route", series.service, side, route=route, method=series.method)
    if series.caller:
        yield Key("edge", series.service, side, caller=series.caller)


def _overflow_key(key: Key) -> Key:
    if key.kind == "service":
        return Key("service", OVERFLOW, key.side)
    if key.kind == "route":
        return Key("route", OVERFLOW, key.side, route=OVERFLOW, method=OVERFLOW)
    return Key("edge", OVERFLOW, key.side, caller=OVERFLOW)


def _matches(
    key: Key, *, service: str | None, route: str | None, method: str | None, caller: str | None
) -> bool:
    return (
        (service is None or key.service == service)
        and (route is None or key.route == route)
        and (method is None or key.method == method)
        and (caller is None or key.caller == caller)
    )


def totals_json(totals: Totals) -> dict[str, Any]:
    """Requests, errors, rps, success rate and p50/p95/p99 in milliseconds."""
    return {
        "requests": totals.requests,
        "errors": totals.errors,
        "rps": float(f"{totals.rps:.6g}"),
        "success_rate": _round(totals.success_rate, 6),
        "p50_ms": _ms(totals.quantile(0.5)),
        "p95_ms": _ms(totals.quantile(0.95)),
        "p99_ms": _ms(totals.quantile(0.99)),
    }


def point_json(point: Point) -> dict[str, Any]:
    return {"t": point.start, **totals_json(point.totals)}


def window_json(window: float) -> dict[str, float]:
    return {"window_s": window, "resolution_s": resolution(window)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
