"""HTTP API of the service registry.

    PUT    /v1/services/{service}/instances/{id}     register (idempotent)
    DELETE /v1/services/{service}/instances/{id}     deregister
    PUT    /v1/leases/{lease}/keepalive               renew every instance on a lease
    POST   /v1/leases/keepalive                       renew many leases: {"leases": [hex…]}
    POST   /v1/leases/keepalive/stream                renew leases sent as lines of a stream
    GET    /v1/services                               services with counts (blocking query)
    GET    /v1/services/{service}?healthy=&zone=&tag= instances (blocking query)
    GET|PUT /v1/services/{service}/settings          per-service protect threshold
    GET|DELETE /v1/registry/self-preservation        state; lift it

Reads are served from the catalog (memory), answer `X-Crossway-Index`, and
accept `?index=N&wait=30s` (Consul-style): a service query blocks until that
service changes after N, the service list until any service does. The changes
themselves stream from `GET /v1/watch?prefix=/services/…` (see watch.py).

The keepalive stream is etcd's LeaseKeepAlive over HTTP/1.1: the request
body is a chunked stream of lease ids, one per line, for as long as the client
likes; the response streams back one line per id (`KeepaliveStream`). A
renewal then costs a few bytes instead of a request.

`routes(ctx)` builds the registry's moving parts once per process — the
catalog, the self-preservation guard and the active health checker — starts
them with the server and stops them before the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from crossway.core.errors import InvalidArgument
from crossway.health import HealthChecker
from crossway.registry import Catalog, Instance, Registration, Registry
from crossway.registry.guard import PreservationGuard
from crossway.registry.model import SETTINGS_PREFIX, check_name, lease_from_text
from crossway.server.blocking import BlockingParams, jittered_wait
from crossway.server.context import ServerContext
from crossway.server.http import Endpoint, QuietRoute, json_response, read_json
from crossway.store import Store

log = logging.getLogger("crossway.server")

_encoder = msgspec.json.Encoder()


MAX_KEEPALIVE_BATCH = 10_000
"""Leases per batched keepalive: bounds the time one request holds the loop."""


class ServiceSettings(msgspec.Struct, forbid_unknown_fields=True):
    protect_threshold: float = 0.0


class KeepaliveBatch(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `POST /v1/leases/keepalive`."""

    leases: list[str]


def routes(ctx: ServerContext) -> list[BaseRoute]:
    catalog = Catalog(ctx.store)
    registry = Registry(ctx.store, catalog, clock=ctx.clock)
    guard = PreservationGuard(ctx.store, catalog, clock=ctx.clock)
    checker = HealthChecker(registry, catalog, clock=ctx.clock)
    api = RegistryApi(ctx.store, registry, guard, ctx.stopping)
    ctx.provide(registry)
    ctx.provide(catalog)
    ctx.registry.register(RegistryMetrics(catalog, guard, checker))

    releaser: list[asyncio.Task[None]] = []

    async def release_on_stopping() -> None:
        await ctx.stopping.wait()
        catalog.release_all()  # blocked queries answer at once when draining starts

    async def start() -> None:
        await catalog.start()
        await api.load_settings()
        guard.start()
        await checker.start()
        releaser.append(asyncio.create_task(release_on_stopping(), name="registry-release"))

    async def stop() -> None:
        for task in releaser:
            task.cancel()
        await checker.stop()
        await guard.stop()
        await catalog.stop()

    ctx.on_start(start)
    ctx.on_close(stop)
    return api.routes()


class RegistryApi:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        guard: PreservationGuard,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.guard = guard
        self.stopping = stopping or asyncio.Event()

    def routes(self) -> list[BaseRoute]:
        instance = "/v1/services/{service}/instances/{id}"
        settings = "/v1/services/{service}/settings"
        preservation = "/v1/registry/self-preservation"
        return [
            Route("/v1/services", Endpoint(self.list_services), methods=["GET"]),
            Route("/v1/services/{service}", Endpoint(self.get_service), methods=["GET"]),
            Route(instance, Endpoint(self.register), methods=["PUT"]),
            Route(instance, Endpoint(self.deregister), methods=["DELETE"]),
            Route(settings, Endpoint(self.get_settings), methods=["GET"]),
            Route(settings, Endpoint(self.put_settings), methods=["PUT"]),
            QuietRoute("/v1/leases/{lease}/keepalive", Endpoint(self.keepalive), methods=["PUT"]),
            QuietRoute("/v1/leases/keepalive", Endpoint(self.keepalive_many), methods=["POST"]),
            Route(
                "/v1/leases/keepalive/stream",
                KeepaliveStream(self.registry, self.stopping),
                methods=["POST"],
            ),
            Route(preservation, Endpoint(self.preservation), methods=["GET"]),
            Route(preservation, Endpoint(self.lift), methods=["DELETE"]),
        ]

    async def load_settings(self) -> None:
        listing = await self.store.range(SETTINGS_PREFIX)
        for kv in listing.kvs:
            try:
                settings = msgspec.json.decode(kv.value, type=ServiceSettings)
            except msgspec.DecodeError:
                continue
            service = kv.key[len(SETTINGS_PREFIX) :]
            self.registry.protect_thresholds[service] = settings.protect_threshold

    async def register(self, request: Request) -> Response:
        body = await read_json(request, Registration)
        params = request.path_params
        instance = await self.registry.register(params["service"], params["id"], body)
        return json_response(instance, index=self.registry.catalog.revision)

    async def deregister(self, request: Request) -> Response:
        params = request.path_params
        instance = await self.registry.deregister(params["service"], params["id"])
        return json_response(instance, index=self.registry.catalog.revision)

    async def keepalive(self, request: Request) -> Response:
        lease = request.path_params["lease"]
        ttl = await self.registry.keepalive(lease)
        return json_response({"lease": lease, "ttl": f"{ttl:g}s"}, index=self._index())

    async def keepalive_many(self, request: Request) -> Response:
        """Renew every lease of the body at once, as an agent renewing all the
        instances of its node does: `{"renewed": {lease: ttl_seconds},
        "missing": [lease…]}`. A malformed id refuses the whole batch (400)."""
        batch = await read_json(request, KeepaliveBatch)
        if len(batch.leases) > MAX_KEEPALIVE_BATCH:
            raise InvalidArgument(
                f"at most {MAX_KEEPALIVE_BATCH} leases per request", field="$.leases"
            )
        renewed, missing = await self.registry.keepalive_many(batch.leases)
        return json_response({"renewed": renewed, "missing": missing}, index=self._index())

    async def list_services(self, request: Request) -> Response:
        catalog = self.registry.catalog
        await self._block(request, lambda: catalog.modified)
        services, index = self.registry.services()
        return json_response(services, index=index)

    async def get_service(self, request: Request) -> Response:
        service = check_name(request.path_params["service"], "service")
        catalog = self.registry.catalog
        healthy, zone, tag = False, None, None
        if request.scope["query_string"]:  # most queries have none: skip the parsing
            await self._block(request, lambda: catalog.service_index(service), service)
            query = request.query_params
            healthy = _flag(query.get("healthy"), "healthy")
            zone, tag = query.get("zone") or None, query.get("tag") or None
        body, protected = self._instances(service, healthy, zone, tag)
        headers = {"X-Crossway-Protected": "true"} if protected else None
        return json_response(msgspec.Raw(body), index=catalog.revision, headers=headers)

    def _instances(
        self, service: str, healthy: bool, zone: str | None, tag: str | None
    ) -> tuple[bytes, bool]:
        """The encoded answer of a discovery query, and whether the protect
        threshold made it return every instance.

        Unfiltered answers are remembered by the catalog until the service
        changes (encoding 100 instances costs more than the rest of the
        request). Filtered ones are not: clients choose the filters, and a memo
        keyed by them could grow without bound. Nor are answers while
        self-preservation marks instances stale: that depends on the guard."""

        def build() -> tuple[bytes, bool]:
            found = self.registry.discover(service, healthy=healthy, zone=zone, tag=tag)
            instances = [self._mark_stale(i) for i in found.instances]
            return _encoder.encode(instances), found.protected

        if zone is not None or tag is not None or self.guard.last.stale:
            return build()
        threshold = self.registry.protect_thresholds.get(service, 0.0)
        return self.registry.catalog.memo(service, ("instances", healthy, threshold), build)

    def _mark_stale(self, instance: Instance) -> Instance:
        if self.guard.is_stale(instance.lease):
            return msgspec.structs.replace(instance, stale=True)
        return instance

    async def get_settings(self, request: Request) -> Response:
        service = check_name(request.path_params["service"], "service")
        threshold = self.registry.protect_thresholds.get(service, 0.0)
        return json_response(ServiceSettings(threshold), index=self._index())

    async def put_settings(self, request: Request) -> Response:
        service = check_name(request.path_params["service"], "service")
        settings = await read_json(request, ServiceSettings)
        if not 0.0 <= settings.protect_threshold <= 1.0:
            raise InvalidArgument(
                "protect_threshold must be between 0 and 1", field="protect_threshold"
            )
        put = await self.store.put(SETTINGS_PREFIX + service, _encoder.encode(settings))
        self.registry.protect_thresholds[service] = settings.protect_threshold
        return json_response(settings, index=put.revision)

    async def preservation(self, request: Request) -> Response:
        return json_response(self._preservation_state(), index=self._index())

    async def lift(self, request: Request) -> Response:
        self.guard.lift()
        return json_response(self._preservation_state(), index=self._index())

    def _preservation_state(self) -> dict[str, Any]:
        last = self.guard.last
        settings = self.guard.policy.settings
        return {
            "engaged": last.engaged,
            "lifted": self.guard.policy.lifted,
            "lapsing": last.lapsing,
            "leases": last.total,
            "stale": len(last.stale),
            "share": settings.share,
            "min_leases": settings.min_leases,
        }

    def _index(self) -> int:
        return self.registry.catalog.revision

    async def _block(
        self, request: Request, index_of: Callable[[], int], service: str | None = None
    ) -> None:
        params = BlockingParams.parse(request.query_params)
        if params.index is None or params.wait <= 0 or self.stopping.is_set():
            return
        if params.index > self.registry.catalog.revision:
            return  # not an index of this store: answer so the client resyncs
        wait = jittered_wait(params.wait, random.random())
        # Shutdown releases the wait too (`Catalog.release_all`, on `stopping`).
        await self.registry.catalog.wait_change(index_of, params.index, wait, service=service)


STREAM_MAX_LINE = 64
"""Bytes in one line of a keepalive stream; a longer line ends the stream."""
STREAM_IDLE = 300.0
"""Seconds a keepalive stream may stay silent before the server ends it."""
_SHUTTING_DOWN = b"# closing: the server is shutting down; reconnect\n"
_STREAM_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer
    # The stream may end while the client is still sending (shutdown, idle,
    # a bad line): the connection cannot carry another request after that.
    (b"connection", b"close"),
]


class KeepaliveStream:
    """`POST /v1/leases/keepalive/stream`: renew the leases a client sends as
    lines of a streamed body, answering each on the streamed response.

    Theory of operation
    - The request body is newline-separated lease ids (hex), sent in chunks for
      as long as the client likes; blank lines are allowed (a client may send
      one to keep an otherwise silent stream open) and answer nothing.
    - Every complete line of a received chunk is renewed with ONE
      `Registry.keepalive_many` call (up to `MAX_KEEPALIVE_BATCH` at a time),
      and the answers to that chunk go out in one write, one line per id and
      in order: `<lease> <ttl seconds>` renewed, `<lease> missing` unknown or
      expired (register again), `<text> invalid` not a lease id (the stream
      goes on). Lines starting with `#` are notes for people; clients skip them.
    - A partial line waits for the next chunk. The stream ends, with a `#`
      note saying why, on a line over `max_line` bytes, after `idle` seconds
      without a byte, when the server begins to shut down (the client
      reconnects, to another replica if there is one), or if the store fails.
      When the client ends its body, the last answers are sent and the
      response ends. When the client disconnects, the handler just returns:
      a stream holds nothing but its own buffer.
    - uvicorn's httptools protocol lets `receive()` deliver body chunks while
      the response is streaming, so one task reads and answers in turn.
    """

    def __init__(
        self,
        registry: Registry,
        stopping: asyncio.Event,
        *,
        idle: float = STREAM_IDLE,
        max_line: int = STREAM_MAX_LINE,
    ) -> None:
        self.registry = registry
        self.stopping = stopping
        self.idle = idle
        self.max_line = max_line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        note = await self._pump(receive, send)
        if note is not None:  # None: the client is gone, nothing to finish
            await send({"type": "http.response.body", "body": note, "more_body": False})

    async def _pump(self, receive: Receive, send: Send) -> bytes | None:
        """Answer chunk after chunk until the stream ends; the closing note
        (b"" when the client ended it), or None when the client went away.

        A chunk costs one `receive()` and one `send()`: the idle limit is a
        deadline moved on with each chunk, and shutdown cancels this task
        (one waiter per stream, not a wait on two futures per chunk; at one
        line per chunk that took the server's CPU per keepalive from about
        52 to 40 µs, its background work included)."""
        if self.stopping.is_set():
            return _SHUTTING_DOWN
        task = asyncio.current_task()
        assert task is not None
        shutdown = asyncio.ensure_future(self._cancel_on_shutdown(task))
        loop = asyncio.get_running_loop()
        partial = b""
        try:
            async with asyncio.timeout(self.idle) as idle:
                while True:
                    message = await receive()
                    idle.reschedule(loop.time() + self.idle)
                    if message["type"] == "http.disconnect":
                        return None
                    last = not message.get("more_body", False)
                    lines, partial = split_lines(partial + message.get("body", b""), last=last)
                    if len(partial) > self.max_line or any(len(x) > self.max_line for x in lines):
                        return b"# closing: a line is longer than %d bytes\n" % self.max_line
                    if lines:
                        answers = await self._answer(lines)
                        if answers is None:
                            return b"# closing: the store failed; reconnect\n"
                        await send(
                            {"type": "http.response.body", "body": answers, "more_body": True}
                        )
                    if last:
                        return b""
        except TimeoutError:
            return b"# closing: idle for %gs\n" % self.idle
        except asyncio.CancelledError:
            if shutdown.done() and not shutdown.cancelled() and task.uncancel() == 0:
                return _SHUTTING_DOWN  # our own cancellation, not the server's
            raise
        finally:
            shutdown.cancel()

    async def _cancel_on_shutdown(self, task: asyncio.Task[Any]) -> None:
        await self.stopping.wait()
        task.cancel()

    async def _answer(self, lines: list[bytes]) -> bytes | None:
        """The answer lines to `lines`, renewing the valid ones at once; None
        if the store failed (logged)."""
        texts = [line.decode("utf-8", "replace") for line in lines]
        valid = [text for text in texts if _is_lease(text)]
        renewed: dict[str, float] = {}
        try:
            for start in range(0, len(valid), MAX_KEEPALIVE_BATCH):
                done, _ = await self.registry.keepalive_many(
                    valid[start : start + MAX_KEEPALIVE_BATCH]
                )
                renewed.update(done)
        except Exception:
            log.exception("renewing leases from a keepalive stream failed")
            return None
        return "".join(_answer_line(text, renewed) for text in texts).encode()


def split_lines(data: bytes, *, last: bool) -> tuple[list[bytes], bytes]:
    """The complete non-blank lines of `data` (stripped of spaces and "\r"),
    and what is left of an unfinished last line (nothing when `last`)."""
    *complete, partial = data.split(b"\n")
    if last:
        complete.append(partial)
        partial = b""
    return [line for raw in complete if (line := raw.strip())], partial


def _is_lease(text: str) -> bool:
    try:
        lease_from_text(text)
    except InvalidArgument:
        return False
    return True


def _answer_line(text: str, renewed: dict[str, float]) -> str:
    ttl = renewed.get(text)
    if ttl is not None:
        return f"{text} {ttl:g}\n"
    return f"{text} missing\n" if _is_lease(text) else f"{text} invalid\n"


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _flag(value: str | None, name: str) -> bool:
    """`?healthy`, `?healthy=true|1|yes` → True; absent or false|0|no → False."""
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("", "1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise InvalidArgument(f"{name} must be true or false", field=name)


class RegistryMetrics(Collector):
    """Registry and health gauges, read at scrape time (nothing to keep in sync)."""

    def __init__(self, catalog: Catalog, guard: PreservationGuard, checker: HealthChecker) -> None:
        self._catalog = catalog
        self._guard = guard
        self._checker = checker

    def collect(self) -> Any:
        instances = GaugeMetricFamily(
            "crossway_registry_instances", "Registered instances by status", labels=["status"]
        )
        counts = {"passing": 0, "warning": 0, "critical": 0}
        for entry in self._catalog.services.values():
            for instance in entry.instances.values():
                counts[instance.status] = counts.get(instance.status, 0) + 1
        for status, count in counts.items():
            instances.add_metric([status], count)
        yield instances
        yield GaugeMetricFamily(
            "crossway_registry_services",
            "Services with at least one instance",
            value=sum(1 for e in self._catalog.services.values() if e.instances),
        )
        last = self._guard.last
        yield GaugeMetricFamily(
            "crossway_registry_self_preservation_engaged",
            "1 while lease expiry is paused because too many leases lapse at once",
            value=1 if last.engaged else 0,
        )
        yield GaugeMetricFamily(
            "crossway_registry_stale_instances",
            "Leases kept alive by self-preservation",
            value=len(last.stale),
        )
        stats = self._checker.stats
        checks = CounterMetricFamily(
            "crossway_health_checks", "Active health probes run", labels=["result"]
        )
        checks.add_metric(["ok"], stats.checks - stats.failures)
        checks.add_metric(["failed"], stats.failures)
        yield checks
        yield CounterMetricFamily(
            "crossway_health_transitions", "Health status changes", value=stats.transitions
        )
        yield CounterMetricFamily(
            "crossway_health_deregistrations",
            "Instances removed after staying critical",
            value=stats.deregistrations,
        )
