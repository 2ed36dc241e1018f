# The gateway's statistics and its admin port.
#
# Theory of operation
# -------------------
# `GatewayStats` is plain counters updated on the request path: one cell per
# (route, method, status class) holding a latency histogram on the shared
# bounds (proxy/metrics.py), one bisect per request. No locks (one event
# loop per process), no label objects per request, no formatting until
# someone scrapes.
#
# `AdminHandler` is a `Handler` served by the same engine on another port
# (default 7790):
#
#   GET /ready         200 once a configuration is loaded, else 503
#   GET /metrics       Prometheus text with the names every Crossway process
#                      uses: http_server_requests_total and
#                      http_server_request_duration_seconds{service="gateway",
#                      route, method, status_class}, and process metrics
#   GET /stats         Prometheus text: requests by route and status class,
#                      latency histograms per route, upstream exchanges,
#                      pool connections, active client connections, retries,
#                      circuit breaking (overload refusals, breaker trips and
#                      retries the budget refused, per service) and rate
#                      limits (refusals, Redis failures, per route)
#   GET /config_dump   the routes and call policies in force, as JSON
#                      documents, and the version
#   GET /clusters      every backend service's endpoints with health
#
# Invariants
# ----------
# - Recording never allocates beyond the first request of a (route, method, class).
# - The admin port answers only GET; every page is rendered in one go and
#   sent with a Content-Length.
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest

from crossway.proxy.errors import NoRoute, render
from crossway.proxy.headers import Headers
from crossway.proxy.http1_wire import Framing, encode_head, status_line
from crossway.proxy.metrics import Cell, RequestCells, gateway_registry
from crossway.proxy.routes.model import encode_route
from crossway.proxy.stream import Stream
from crossway.telemetry.metrics import LATENCY_BUCKETS, OTHER_METHOD
from crossway.traffic.policy import encode_policy

if TYPE_CHECKING:
    from crossway.proxy.gateway import Gateway


class GatewayStats:
    """Request counters and latency histograms (see the module header)."""

    def __init__(self) -> None:
        self.cells = RequestCells()
        """Requests by (route, method, status class) with latency histograms."""
        self.retries: defaultdict[str, int] = defaultdict(int)
        self.overloaded: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.breaker_trips: defaultdict[str, int] = defaultdict(int)
        self.budget_refused: defaultdict[str, int] = defaultdict(int)
        self.rate_limited: defaultdict[str, int] = defaultdict(int)
        self.rate_limit_unavailable: defaultdict[str, int] = defaultdict(int)

    def observe(self, route: str, status: int, seconds: float, method: str = OTHER_METHOD) -> None:
        # Status 0: the exchange ended without a status (client gone).
        self.cells.served(route, method, status, seconds)

    def by_route_and_class(self) -> dict[tuple[str, str], int]:
        """Requests per (route, status class), every method together."""
        out: defaultdict[tuple[str, str], int] = defaultdict(int)
        for (route, _, klass), cell in list(self.cells.server.items()):
            out[(route, klass)] += int(sum(cell[:-1]))
        return out

    def latency_by_route(self) -> dict[str, Cell]:
        """Per route: bucket counts on `LATENCY_BUCKETS` (+Inf last), then the sum."""
        out: dict[str, Cell] = {}
        for (route, _, _), cell in list(self.cells.server.items()):
            total = out.get(route)
            if total is None:
                out[route] = list(cell)
            else:
                out[route] = [a + b for a, b in zip(total, cell, strict=True)]
        return out

    def retried(self, route: str) -> None:
        self.retries[route] += 1

    def service_event(self, service: str, event: str) -> None:
        """A circuit-breaking event of `service` (overload.py's `Events`)."""
        if event == "trip":
            self.breaker_trips[service] += 1
        else:
            self.overloaded[(service, event)] += 1

    def retry_refused(self, service: str) -> None:
        self.budget_refused[service] += 1

    def limited(self, route: str) -> None:
        self.rate_limited[route] += 1

    def limit_unavailable(self, route: str) -> None:
        self.rate_limit_unavailable[route] += 1


def render_stats(stats: GatewayStats, gateway: Gateway, active_connections: int) -> str:
    lines = [
        "# TYPE crossway_gateway_requests_total counter",
        *(
            f'crossway_gateway_requests_total{{route="{r}",class="{c}"}} {n}'
            for (r, c), n in sorted(stats.by_route_and_class().items())
        ),
        "# TYPE crossway_gateway_request_duration_seconds histogram",
    ]
    for route, cell in sorted(stats.latency_by_route().items()):
        lines.extend(_histogram(route, cell))
    lines.append("# TYPE crossway_gateway_retries_total counter")
    lines.extend(
        f'crossway_gateway_retries_total{{route="{r}"}} {n}' for r, n in stats.retries.items()
    )
    lines.extend(_resilience_lines(stats))
    lines.append("# TYPE crossway_gateway_active_connections gauge")
    lines.append(f"crossway_gateway_active_connections {active_connections}")
    lines.extend(_pool_lines(gateway))
    return "\n".join(_with_help(lines)) + "\n"


HELP = {
    "crossway_gateway_requests_total": "Requests answered, by route and status class.",
    "crossway_gateway_request_duration_seconds": "Request duration, by route.",
    "crossway_gateway_retries_total": "Retries made, by route.",
    "crossway_gateway_active_connections": "Client connections open now.",
    "crossway_gateway_upstream_overloaded_total": "Requests refused by circuit breaking.",
    "crossway_gateway_breaker_trips_total": "Times a service's breaker opened.",
    "crossway_gateway_retry_budget_refused_total": "Retries the retry budget refused.",
    "crossway_gateway_rate_limited_total": "Requests refused by a route's rate limit.",
    "crossway_gateway_rate_limit_unavailable_total": "Rate-limit checks Redis could not answer.",
    "crossway_gateway_upstream_requests_total": "Exchanges with each upstream address.",
    "crossway_gateway_upstream_connections": "Upstream connections, open and idle.",
}


def _with_help(lines: list[str]) -> list[str]:
    # promtool (and Prometheus's own lint) wants a HELP line for every family.
    out: list[str] = []
    for line in lines:
        if line.startswith("# TYPE "):
            name = line.split(" ", 3)[2]
            out.append(f"# HELP {name} {HELP.get(name, name)}")
        out.append(line)
    return out


def _resilience_lines(stats: GatewayStats) -> list[str]:
    lines = ["# TYPE crossway_gateway_upstream_overloaded_total counter"]
    lines.extend(
        f'crossway_gateway_upstream_overloaded_total{{service="{s}",reason="{r}"}} {n}'
        for (s, r), n in sorted(stats.overloaded.items())
    )
    for name, label, counts in (
        ("crossway_gateway_breaker_trips_total", "service", stats.breaker_trips),
        ("crossway_gateway_retry_budget_refused_total", "service", stats.budget_refused),
        ("crossway_gateway_rate_limited_total", "route", stats.rate_limited),
        ("crossway_gateway_rate_limit_unavailable_total", "route", stats.rate_limit_unavailable),
    ):
        lines.append(f"# TYPE {name} counter")
        lines.extend(f'{name}{{{label}="{k}"}} {n}' for k, n in sorted(counts.items()))
    return lines


def _histogram(route: str, cell: Cell) -> list[str]:
    name = "crossway_gateway_request_duration_seconds"
    out = []
    running = 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), cell[:-1], strict=True):
        running += int(count)
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        out.append(f'{name}_bucket{{route="{route}",le="{le}"}} {running}')
    out.append(f'{name}_sum{{route="{route}"}} {cell[-1]:.6f}')
    out.append(f'{name}_count{{route="{route}"}} {running}')
    return out


def _pool_lines(gateway: Gateway) -> list[str]:
    # Each family's samples together, as the exposition format requires.
    pools = [(f'upstream="{p.address[0]}:{p.address[1]}"', p) for p in gateway.pool.pools()]
    lines = ["# TYPE crossway_gateway_upstream_requests_total counter"]
    lines.extend(
        f"crossway_gateway_upstream_requests_total{{{label}}} {pool.acquired}"
        for label, pool in pools
    )
    lines.append("# TYPE crossway_gateway_upstream_connections gauge")
    for label, pool in pools:
        lines.append(f'crossway_gateway_upstream_connections{{{label},state="open"}} {pool.active}')
        lines.append(f'crossway_gateway_upstream_connections{{{label},state="idle"}} {pool.idle}')
    return lines


class AdminHandler:
    """Serves the admin pages for one gateway (see the module header)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        stats: GatewayStats,
        ready: Callable[[], bool],
        active_connections: Callable[[], int],
    ) -> None:
        self._gateway = gateway
        self._stats = stats
        self._ready = ready
        self._active = active_connections
        # The shared request metrics by their conventional names, plus the
        # process's own (CPU, memory, file descriptors), for Prometheus.
        self._registry = gateway_registry(stats.cells)
        ProcessCollector(registry=self._registry)

    async def __call__(self, stream: Stream) -> None:
        path = stream.head.target.split(b"?", 1)[0]
        page = self._pages().get(path)
        if page is None or stream.head.method != b"GET":
            stream.send_local(render(NoRoute(f"no admin page {path.decode('latin-1')}")))
            return
        status, content_type, body = page()
        stream.send_local(_response(status, content_type, body))

    def _pages(self) -> dict[bytes, Callable[[], tuple[int, bytes, bytes]]]:
        return {
            b"/ready": self._page_ready,
            b"/stats": self._page_stats,
            b"/metrics": self._page_metrics,
            b"/config_dump": self._page_config,
            b"/clusters": self._page_clusters,
        }

    def _page_ready(self) -> tuple[int, bytes, bytes]:
        ok = self._ready()
        return (200 if ok else 503), b"text/plain", b"ready\n" if ok else b"not ready\n"

    def _page_stats(self) -> tuple[int, bytes, bytes]:
        text = render_stats(self._stats, self._gateway, self._active())
        return 200, b"text/plain; version=0.0.4", text.encode()

    def _page_metrics(self) -> tuple[int, bytes, bytes]:
        return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(self._registry)

    def _page_config(self) -> tuple[int, bytes, bytes]:
        config = self._gateway.config
        routes = {name: msgspec.json.decode(encode_route(r)) for name, r in config.routes.items()}
        policies = {n: msgspec.json.decode(encode_policy(p)) for n, p in config.policies.items()}
        dump = {"version": config.version, "routes": routes, "policies": policies}
        return 200, b"application/json", _json(dump)

    def _page_clusters(self) -> tuple[int, bytes, bytes]:
        guards = self._gateway.guards.all()
        clusters = []
        for cluster in self._gateway.clusters.all():
            shown = cluster.describe()
            guard = guards.get(cluster.name)
            if guard is not None:
                shown["limits"] = guard.describe()
            clusters.append(shown)
        return 200, b"application/json", _json({"clusters": clusters})


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


def _response(status: int, content_type: bytes, body: bytes) -> bytes:
    headers: Headers = [(b"content-type", content_type)]
    return encode_head(status_line(status), headers, Framing.LENGTH, len(body)) + body
