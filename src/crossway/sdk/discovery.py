"""The discovery cache: every instance of the services this process calls,
followed through the control plane's watch, kept in memory and on disk.

Theory of operation
- Per service, one follower task: list (`GET /v1/services/{svc}`, which also
  answers the revision it reflects), then follow
  `GET /v1/watch?prefix=/services/{svc}/instances/&after=<revision>` (SSE).
  `put` events add or replace an instance, `delete` events remove one. On
  `event: compacted`, or whenever the stream breaks, the follower lists
  again and watches from the new listing's revision: a listing is the only
  way to learn where a restarted control plane's revisions now stand (a
  memory store starts again from zero), so reconnecting never resumes blind.
- A `ServiceView` holds one service's state and is pure: listings and events
  in, "did the set change" out. The follower is the thin asyncio driver.
- Every change to the set is written to `<cache_dir>/<service>.json`
  (debounced, temp file + fsync + rename, off the event loop), so a process
  that restarts while the control plane is down boots from the last set it
  knew instead of from nothing (Eureka's and Nacos's failover cache).
- When the control plane cannot be reached, the cache keeps serving what it
  has — from memory, or from the snapshot when the process has nothing yet —
  marks the service stale (`is_stale`, the `crossway_sdk_discovery_stale`
  gauge) and logs one warning per outage; it follows again as soon as a
  listing succeeds, and logs that too.

- A control plane whose revisions went backwards since the last listing has
  a new store (a memory store restarted empty): its first listings miss the
  instances that have not registered again yet. Those are kept, stale, for
  one TTL (theirs, else 30 s), after which a listing decides alone.

Invariants
- An outage never removes an instance: only a `delete` event or a successful
  listing of the same store changes the set. A process that cannot see the
  control plane keeps calling the instances it last knew.
- `instances()` waits for at most one listing attempt (bounded by the
  settings' request timeout); afterwards every read is memory only.
- Subscribers are called in the event loop, after the set changed, with the
  whole new list; an exception in one is logged and does not stop the others.
- Every task is created after `start()` or by a call from a running loop (never
  at construction) and is cancelled and awaited by `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import parse_duration
from crossway.core.files import write_atomically
from crossway.registry.model import Instance, check_name, parse_instance_key, service_prefix
from crossway.resilience.backoff import Backoff, Jitter
from crossway.sdk.control import (
    ControlPlane,
    ControlPlaneError,
    ControlPlaneUnavailable,
    SseEvent,
)

log = logging.getLogger("crossway.sdk.discovery")

Subscriber = Callable[[str, list[Instance]], None]

SNAPSHOT_DEBOUNCE = 0.2
"""Seconds a change waits before it is written, so a burst makes one write."""
RECONNECT = Backoff(base=0.1, cap=3.0, jitter=Jitter.EQUAL)
DEFAULT_GRACE = 30.0
"""Seconds instances missing from a replaced store are kept when their TTL is unknown."""
MAX_GRACE = 300.0


class Snapshot(msgspec.Struct):
    """The on-disk form of one service's instances."""

    service: str
    index: int
    saved_at: float
    instances: list[Instance]


_snapshot_decoder = msgspec.json.Decoder(Snapshot)
_instance_decoder = msgspec.json.Decoder(Instance)
_encoder = msgspec.json.Encoder()


@dataclass
class ServiceView:
    """One service's instances and where they stand; pure (no I/O)."""

    service: str
    instances: dict[str, Instance] = field(default_factory=dict)
    index: int = 0
    known: bool = False
    """True once a listing, an event or a snapshot gave us a set."""
    stale: bool = False
    from_snapshot: bool = False
    updates: int = 0
    provisional_until: float | None = None
    """While set, instances a new store does not list yet are still served."""
    grace: float | None = None
    """How long those are kept; None: the longest TTL among them."""

    def listing(self, instances: Iterable[Instance], index: int, *, now: float) -> bool:
        """A successful listing replaces the set; True when it changed.

        Except when the revisions went backwards: the store behind the
        control plane was replaced (a memory store restarted empty), and its
        instances are still registering again. Then the instances it does not
        list yet are kept, and the service stays stale, until they have had
        one TTL to come back (`provisional_until`); the listing after that
        replaces the set.
        """
        fresh = {i.id: i for i in instances}
        if self.known and self.instances and index < self.index:
            self.provisional_until = now + self._grace()
            fresh = {**self.instances, **fresh}
        else:
            self.provisional_until = None
        changed = not self.known or fresh != self.instances
        self.instances, self.index, self.known = fresh, index, True
        self.stale = self.provisional_until is not None
        self.from_snapshot = False
        return self._changed(changed)

    def apply(self, event: SseEvent) -> bool:
        """Apply one watch event; True when the set changed."""
        if event.id is not None and event.id.isdigit():
            self.index = max(self.index, int(event.id))
        try:
            data = event.json()
            parsed = parse_instance_key(str(data["key"]))
        except (ValueError, KeyError, TypeError):
            return False
        if parsed is None or parsed[0] != self.service:
            return False
        if event.event == "delete":
            return self._changed(self.instances.pop(parsed[1], None) is not None)
        if event.event != "put":
            return False
        return self._put(parsed[1], data)

    def restore(self, snapshot: Snapshot) -> bool:
        """Adopt a disk snapshot, only when nothing better is known."""
        if self.known:
            return False
        self.instances = {i.id: i for i in snapshot.instances}
        self.index, self.known, self.from_snapshot = snapshot.index, True, True
        return self._changed(True)

    def current(self) -> list[Instance]:
        return list(self.instances.values())

    def snapshot(self, saved_at: float) -> Snapshot:
        return Snapshot(self.service, self.index, saved_at, self.current())

    def _put(self, instance_id: str, data: dict[str, Any]) -> bool:
        try:
            instance = _instance_decoder.decode(str(data["value"]).encode())
        except (msgspec.DecodeError, KeyError):
            log.warning("ignoring an unreadable instance %s of %s", instance_id, self.service)
            return False
        changed = self.instances.get(instance_id) != instance
        self.instances[instance_id] = instance
        self.known = True
        return self._changed(changed)

    def _grace(self) -> float:
        if self.grace is not None:
            return self.grace
        ttls = [_seconds(i.ttl) for i in self.instances.values()]
        return min(MAX_GRACE, max([t for t in ttls if t is not None], default=DEFAULT_GRACE))

    def _changed(self, changed: bool) -> bool:
        if changed:
            self.updates += 1
        return changed


def _seconds(ttl: str | None) -> float | None:
    if ttl is None:
        return None
    try:
        return parse_duration(ttl)
    except ValueError:
        return None


def snapshot_path(cache_dir: Path, service: str) -> Path:
    return cache_dir / f"{service}.json"


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Write atomically: readers see the old file or the new one, never a part
    (several worker processes of one service may write it at once)."""
    write_atomically(path, _encoder.encode(snapshot))


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at `path`, or None when missing or unreadable (logged)."""
    try:
        return _snapshot_decoder.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        log.warning("ignoring the unreadable discovery snapshot %s: %s", path, exc)
        return None


class _Follower:
    """The asyncio side of one `ServiceView`."""

    def __init__(self, service: str) -> None:
        self.view = ServiceView(service)
        self.ready = asyncio.Event()
        self.subscribers: list[Subscriber] = []
        self.task: asyncio.Task[None] | None = None
        self.flush: asyncio.Task[None] | None = None
        self.dirty = False
        self.outage = False


class DiscoveryCache:
    """Instances of every followed service; see the module header."""

    def __init__(
        self,
        control: ControlPlane,
        *,
        cache_dir: Path | str | None,
        metrics_registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        debounce: float = SNAPSHOT_DEBOUNCE,
        rebuild_grace: float | None = None,
    ) -> None:
        self.control = control
        self.rebuild_grace = rebuild_grace
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.clock = clock or SystemClock()
        self.debounce = debounce
        self._followers: dict[str, _Follower] = {}
        self._started = False
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        if metrics_registry is not None:
            metrics_registry.register(DiscoveryMetrics(self))

    async def start(self) -> None:
        """Begin following every service subscribed so far. Idempotent."""
        if self._stopped:
            raise RuntimeError("a stopped DiscoveryCache cannot start again")
        self._started = True
        self._loop = asyncio.get_running_loop()
        for follower in list(self._followers.values()):
            self._launch(follower)

    async def stop(self) -> None:
        """Cancel every follower, write pending snapshots, and return. Idempotent;
        if cancelled midway, every task has been cancelled already, and the
        pending snapshots may not be written."""
        self._stopped = True
        followers = list(self._followers.values())
        tasks = [t for f in followers for t in (f.task, f.flush) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # wait(), not `await task`: a cancellation of stop() itself must
            # propagate rather than be swallowed as a task's CancelledError.
            await asyncio.wait(tasks)
        for follower in followers:
            follower.task = follower.flush = None
            if follower.dirty:
                await self._write(follower)

    async def instances(self, service: str) -> list[Instance]:
        """The instances of `service` (every status; filter on `.status`).

        The first call for a service starts following it and waits for one
        listing attempt; when that fails the disk snapshot (or an empty list)
        is served and the service is stale. Later calls never wait. Raises
        `InvalidArgument` for a malformed service name. Cancelling the wait
        leaves the service followed.
        """
        follower = self._follow(service, launch=True)
        await follower.ready.wait()
        return follower.view.current()

    def peek(self, service: str) -> list[Instance] | None:
        """What is known now, without I/O or waiting; None when nothing is."""
        follower = self._followers.get(service)
        if follower is None or not follower.view.known:
            return None
        return follower.view.current()

    def is_stale(self, service: str) -> bool:
        """True while `service` is served from memory or disk that the control
        plane could not confirm (unreachable, or not yet listed)."""
        follower = self._followers.get(service)
        return follower is not None and follower.view.stale

    def subscribe(self, service: str, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(service, instances)` after every change of the set;
        returns a function that unsubscribes. Follows the service from now (or
        from `start()` when called before it, outside a running loop). May be
        called from another thread; callbacks always run in the event loop."""
        follower = self._follow(service, launch=_loop_running())
        follower.subscribers.append(callback)
        if follower.task is None and self._loop is not None and not _loop_running():
            self._loop.call_soon_threadsafe(self._launch, follower)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                follower.subscribers.remove(callback)

        return unsubscribe

    def services(self) -> list[str]:
        return sorted(self._followers)

    def view(self, service: str) -> ServiceView | None:
        """The state behind `service` (for diagnostics and tests)."""
        follower = self._followers.get(service)
        return follower.view if follower is not None else None

    def views(self) -> Iterator[ServiceView]:
        # A snapshot of the list: the metrics collector runs in the scraping thread.
        return (f.view for f in list(self._followers.values()))

    # -- following -----------------------------------------------------------------

    def _follow(self, service: str, *, launch: bool) -> _Follower:
        follower = self._followers.get(service)
        if follower is None:
            check_name(service, "service")
            if self._stopped:
                raise RuntimeError("this DiscoveryCache is stopped")
            follower = self._followers[service] = _Follower(service)
            follower.view.grace = self.rebuild_grace
        if launch:
            self._started = True
            self._loop = self._loop or asyncio.get_running_loop()
            self._launch(follower)
        return follower

    def _launch(self, follower: _Follower) -> None:
        if follower.task is None and not self._stopped:
            name = f"crossway-discovery-{follower.view.service}"
            follower.task = asyncio.create_task(self._run(follower), name=name)

    async def _run(self, follower: _Follower) -> None:
        failures = 0
        while True:
            try:
                await self._list_and_watch(follower)
                failures = 0  # the stream ended cleanly (server restarting): list again
            except ControlPlaneUnavailable as exc:
                self._unreachable(follower, str(exc))
                failures += 1
            except ControlPlaneError as exc:
                self._unreachable(follower, f"refused: {exc.message}")
                failures += 1
            except Exception:
                log.exception("discovery of %s failed unexpectedly", follower.view.service)
                failures += 1
            await asyncio.sleep(RECONNECT.delay(failures, rand=random.random))

    async def _list_and_watch(self, follower: _Follower) -> None:
        view = follower.view
        listed, index = await self.control.instances(view.service)
        self._recovered(follower)
        self._changed(follower, view.listing(listed, index, now=self.clock.now()))
        follower.ready.set()
        until = view.provisional_until
        # While provisional, the watch is cut at the deadline to list again.
        limit = None if until is None else max(0.0, until - self.clock.now())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self._watch(follower, index)

    async def _watch(self, follower: _Follower, index: int) -> None:
        view = follower.view
        params: dict[str, str | int] = {"prefix": service_prefix(view.service), "after": index}
        # aclosing: leaving the loop early must close the stream now, not at GC.
        async with contextlib.aclosing(self.control.sse("/v1/watch", params)) as events:
            async for event in events:
                if event.event == "compacted":
                    return  # events were lost: list again
                self._changed(follower, view.apply(event))

    def _unreachable(self, follower: _Follower, reason: str) -> None:
        view = follower.view
        if not view.known:
            self._restore(follower)
        view.stale = True
        follower.ready.set()
        if not follower.outage:
            follower.outage = True
            source = "the disk snapshot" if view.from_snapshot else "memory"
            log.warning(
                "discovery of %s: control plane unreachable (%s); serving %d last known "
                "instance(s) from %s",
                view.service,
                reason,
                len(view.instances),
                source,
            )

    def _recovered(self, follower: _Follower) -> None:
        if follower.outage:
            follower.outage = False
            log.warning("discovery of %s: control plane reachable again", follower.view.service)

    def _restore(self, follower: _Follower) -> None:
        if self.cache_dir is None:
            return
        snapshot = read_snapshot(snapshot_path(self.cache_dir, follower.view.service))
        if snapshot is not None and follower.view.restore(snapshot):
            self._notify(follower)

    def _changed(self, follower: _Follower, changed: bool) -> None:
        if not changed:
            return
        self._notify(follower)
        if self.cache_dir is not None:
            follower.dirty = True
            if follower.flush is None or follower.flush.done():
                follower.flush = asyncio.create_task(self._flush_later(follower))

    def _notify(self, follower: _Follower) -> None:
        instances = follower.view.current()
        for callback in list(follower.subscribers):
            try:
                callback(follower.view.service, instances)
            except Exception:
                log.exception("a discovery subscriber of %s failed", follower.view.service)

    async def _flush_later(self, follower: _Follower) -> None:
        await asyncio.sleep(self.debounce)
        await self._write(follower)

    async def _write(self, follower: _Follower) -> None:
        assert self.cache_dir is not None
        follower.dirty = False
        snapshot = follower.view.snapshot(self.clock.wall())
        path = snapshot_path(self.cache_dir, follower.view.service)
        try:
            await asyncio.to_thread(write_snapshot, path, snapshot)
        except OSError as exc:
            log.warning("could not write the discovery snapshot %s: %s", path, exc)


class DiscoveryMetrics(Collector):
    """Per-service gauges and counters, read at scrape time."""

    def __init__(self, cache: DiscoveryCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Any]:
        stale = GaugeMetricFamily(
            "crossway_sdk_discovery_stale",
            "1 while a service is served from a cache the control plane could not confirm",
            labels=["service"],
        )
        count = GaugeMetricFamily(
            "crossway_sdk_discovery_instances", "Instances known per service", labels=["service"]
        )
        updates = CounterMetricFamily(
            "crossway_sdk_discovery_updates",
            "Changes to a service's instance set",
            labels=["service"],
        )
        for view in self._cache.views():
            stale.add_metric([view.service], 1.0 if view.stale else 0.0)
            count.add_metric([view.service], float(len(view.instances)))
            updates.add_metric([view.service], float(view.updates))
        yield stale
        yield count
        yield updates


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
