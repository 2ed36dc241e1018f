# The gateway's statistics and its admin port.
#
# Theory of operation
# -------------------
# `GatewayStats` is plain counters updated on the request path: a dict
# increment per request for the count by route and status class, and one
# bisect into fixed latency buckets. No locks (one event loop per process),
# no label objects per request, no formatting until someone scrapes.
#
# `AdminHandler` is a `Handler` served by the same engine on another port
# (default 7790):
#
#   GET /ready         200 once a configuration is loaded, else 503
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
# - Recording never allocates beyond the first request of a (route, class).
# - The admin port answers only GET; every page is rendered in one go and
#   sent with a Content-Length.
from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from crossway.proxy.errors import NoRoute, render
from crossway.proxy.headers import Headers
from crossway.proxy.http1_wire import Framing, encode_head, status_line
from crossway.proxy.routes.model import encode_route
from crossway.proxy.stream import Stream
from crossway.traffic.policy import encode_policy

if TYPE_CHECKING:
    from crossway.proxy.gateway import Gateway

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class GatewayStats:
    """Request counters and latency histograms (see the module header)."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.retries: defaultdict[str, int] = defaultdict(int)
        self.overloaded: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.breaker_trips: defaultdict[str, int] = defaultdict(int)
        self.budget_refused: defaultdict[str, int] = defaultdict(int)
        self.rate_limited: defaultdict[str, int] = defaultdict(int)
        self.rate_limit_unavailable: defaultdict[str, int] = defaultdict(int)

    def observe(self, route: str, status: int, seconds: float) -> None:
        # Status 0: the exchange ended without a status (client gone).
        kind = CLASSES[status // 100 - 1] if 100 <= status < 600 else "none"
        self.requests[(route, kind)] += 1
        buckets = self.latency.get(route)
        if buckets is None:
            buckets = self.latency[route] = [0] * (len(BUCKETS) + 1)
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum[route] += seconds

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
            for (r, c), n in sorted(stats.requests.items())
        ),
        "# TYPE crossway_gateway_request_duration_seconds histogram",
    ]
    for route, counts in sorted(stats.latency.items()):
        lines.extend(_histogram(route, counts, stats.latency_sum[route]))
    lines.append("# TYPE crossway_gateway_retries_total counter")
    lines.extend(
        f'crossway_gateway_retries_total{{route="{r}"}} {n}' for r, n in stats.retries.items()
    )
    lines.extend(_resilience_lines(stats))
    lines.append("# TYPE crossway_gateway_active_connections gauge")
    lines.append(f"crossway_gateway_active_connections {active_connections}")
    lines.extend(_pool_lines(gateway))
    return "\n".join(lines) + "\n"


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


def _histogram(route: str, counts: list[int], total: float) -> list[str]:
    name = "crossway_gateway_request_duration_seconds"
    out = []
    running = 0
    for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
        running += count
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        out.append(f'{name}_bucket{{route="{route}",le="{le}"}} {running}')
    out.append(f'{name}_sum{{route="{route}"}} {total:.6f}')
    out.append(f'{name}_count{{route="{route}"}} {running}')
    return out


def _pool_lines(gateway: Gateway) -> list[str]:
    lines = [
        "# TYPE crossway_gateway_upstream_requests_total counter",
        "# TYPE crossway_gateway_upstream_connections gauge",
    ]
    for pool in gateway.pool.pools():
        host, port = pool.address
        label = f'upstream="{host}:{port}"'
        lines.append(f"crossway_gateway_upstream_requests_total{{{label}}} {pool.acquired}")
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
            b"/config_dump": self._page_config,
            b"/clusters": self._page_clusters,
        }

    def _page_ready(self) -> tuple[int, bytes, bytes]:
        ok = self._ready()
        return (200 if ok else 503), b"text/plain", b"ready\n" if ok else b"not ready\n"

    def _page_stats(self) -> tuple[int, bytes, bytes]:
        text = render_stats(self._stats, self._gateway, self._active())
        return 200, b"text/plain; version=0.0.4", text.encode()

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
