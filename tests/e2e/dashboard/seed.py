"""Real data for the dashboard's end-to-end tests, written through the HTTP API.

Everything goes through the same `/v1/...` (and Zipkin `/api/v2/spans`) calls
a service, the SDK or the CLI makes, so the dashboard is shown exactly what a
running system would show it. `seed(url, upstreams)` writes the lot and
returns a `Seed` naming what it wrote; `SignalPusher` keeps golden signals
flowing in the background (the control plane files each push at its own
clock, 10 s per point, so charts only grow points while pushes keep coming).

Invariants
- Instances and coordination sessions get 24 h TTLs: nothing expires while a
  test session runs, so no keepalive loop is needed.
- Every service name, key and id used by the tests is a constant here; the
  tests that change data (config edits, the canary) use keys of their own.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from crossway.telemetry.signals import Histogram

TTL = "24h"
PUSH_EVERY_S = 2.0
MAX_PUSHES = 3600
"""Bounds the pusher at two hours, whatever happens to the test session."""


@dataclass(frozen=True)
class Traffic:
    """One caller -> callee cell pushed every interval: ok requests at `latency_s`,
    `failed` requests (5xx) at `failed_latency_s`."""

    service: str
    caller: str | None
    route: str
    ok: int
    latency_s: float
    failed: int = 0
    failed_latency_s: float = 0.4


INSTANCES: dict[str, list[tuple[str, str, dict[str, str]]]] = {
    # service -> [(instance id, zone, metadata)]; orders and orders-canary are
    # added by `seed` at the addresses of the real upstream servers.
    "web": [("web-1", "eu-1", {"version": "3.1.0"}), ("web-2", "eu-2", {"version": "3.1.0"})],
    "checkout": [
        ("checkout-1", "eu-1", {"version": "2.4.1", "build": "a1f3"}),
        ("checkout-2", "eu-2", {"version": "2.4.1", "build": "a1f3"}),
        ("checkout-3", "us-1", {"version": "2.5.0-rc1", "build": "c09e"}),
    ],
    "payments": [("payments-1", "eu-1", {"version": "1.9.2"}), ("payments-2", "us-1", {})],
    "inventory": [("inventory-1", "eu-2", {"version": "0.8.0"})],
}

TRAFFIC = (
    Traffic("web", None, "/", ok=40, latency_s=0.05),
    Traffic("checkout", "web", "/checkout", ok=30, latency_s=0.03),
    Traffic("payments", "checkout", "/pay", ok=18, latency_s=0.02, failed=2),
    Traffic("orders", "checkout", "/orders/{id}", ok=24, latency_s=0.015),
    Traffic("inventory", "orders", "/stock/{sku}", ok=16, latency_s=0.005),
)
EDGES = tuple((t.caller, t.service) for t in TRAFFIC if t.caller is not None)
SIGNAL_SERVICES = tuple(t.service for t in TRAFFIC)

CONFIG: dict[tuple[str, str, str], tuple[str, list[str]]] = {
    # (namespace, group, key) -> (format, successive versions)
    ("prod", "orders", "app.yaml"): (
        "yaml",
        [
            "replicas: 2\nlog_level: info\n",
            "replicas: 3\nlog_level: info\n",
            "replicas: 3\nlog_level: warn\nfeatures:\n  fast_path: true\n",
        ],
    ),
    ("prod", "payments", "limits.json"): (
        "json",
        ['{"per_minute": 100}\n', '{"per_minute": 120, "burst": 20}\n'],
    ),
    ("staging", "orders", "app.yaml"): (
        "yaml",
        ["replicas: 1\nlog_level: debug\n", "replicas: 1\nlog_level: trace\n"],
    ),
    # Keys of the editing tests, one each so the tests do not depend on each other.
    ("prod", "checkout", "invalid.yaml"): ("yaml", ["timeout: 5s\nretries: 2\n"]),
    ("prod", "checkout", "valid.yaml"): ("yaml", ["replicas: 2\n"]),
    ("prod", "checkout", "rollback.yaml"): ("yaml", ["level: info\n", "level: debug\n"]),
    ("prod", "checkout", "gray.yaml"): ("yaml", ["feature: off\n"]),
}

ROUTES: dict[str, dict[str, Any]] = {
    "orders": {
        "match": {"path_prefix": "/orders"},
        "backends": [
            {"service": "orders", "weight": 90},
            {"service": "orders-canary", "weight": 10},
        ],
        "timeout": "5s",
    },
    "checkout-api": {
        "match": {"path_prefix": "/checkout", "methods": ["GET", "POST"]},
        "backends": [{"service": "checkout"}],
        "timeout": "3s",
        "retries": {"attempts": 2},
    },
    # The route the editing test changes.
    "edit-me": {"match": {"path_prefix": "/edit-me"}, "backends": [{"service": "web"}]},
}

POLICIES: dict[str, dict[str, Any]] = {
    "payments": {"timeout": "2s", "retries": {"attempts": 3}, "balancer": "least_request"},
}

ALERT_RULES = """\
rules:
  - name: payments-success
    expr: success_rate{service="payments"} < 0.99
    severity: page
    annotations: {summary: "payments success rate is {{ $value }}"}
  - name: checkout-latency
    expr: p99_latency{service="checkout"} > 500ms for 1m
    severity: warning
"""
FIRING_RULE = "payments-success"
QUIET_RULE = "checkout-latency"

LOCK = "nightly-report"
ELECTION = "scheduler"
LEADER_VALUE = "checkout-1:8080"


@dataclass
class TraceSpans:
    trace_id: str
    spans: list[dict[str, Any]]

    @property
    def span_ids(self) -> list[str]:
        return [span["id"] for span in self.spans]


@dataclass
class Seed:
    """What `seed` wrote, for the tests to look for."""

    services: list[str]
    instances: dict[str, list[str]]
    ok_trace: TraceSpans
    error_trace: TraceSpans
    slow_trace: TraceSpans
    session_id: str
    extra: dict[str, Any] = field(default_factory=dict)


def seed(url: str, upstreams: dict[str, int]) -> Seed:
    """Write every kind of data the dashboard shows; `upstreams` maps a service
    name to the loopback port of a real server answering for it."""
    with httpx.Client(base_url=url, timeout=10) as client:
        instances = register_all(client, upstreams)
        traces = [ok_trace(), error_trace(), slow_trace()]
        ok(client.post("/api/v2/spans", json=[s for t in traces for s in t.spans]))
        for (namespace, group, key), (fmt, versions) in CONFIG.items():
            for content in versions:
                path = f"/v1/config/{namespace}/{group}/{key}"
                ok(client.put(path, params={"format": fmt}, content=content))
        for name, route in ROUTES.items():
            ok(client.put(f"/v1/routes/{name}", json=route))
        for name, policy in POLICIES.items():
            ok(client.put(f"/v1/policies/{name}", json=policy))
        ok(client.put("/v1/alerts/rules", content=ALERT_RULES))
        session_id = hold_coordination(client)
    return Seed(
        services=sorted(instances),
        instances=instances,
        ok_trace=traces[0],
        error_trace=traces[1],
        slow_trace=traces[2],
        session_id=session_id,
    )


def register_all(client: httpx.Client, upstreams: dict[str, int]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for service, members in INSTANCES.items():
        for number, (instance, zone, metadata) in enumerate(members):
            body = {"address": "127.0.0.1", "port": 9000 + number, "zone": zone}
            register(client, service, instance, {**body, "metadata": metadata})
            out.setdefault(service, []).append(instance)
    for service, port in upstreams.items():
        instance = f"{service}-1"
        body = {"address": "127.0.0.1", "port": port, "zone": "eu-1"}
        register(client, service, instance, {**body, "metadata": {"role": service}})
        out[service] = [instance]
    return out


def register(client: httpx.Client, service: str, instance: str, body: dict[str, Any]) -> None:
    path = f"/v1/services/{service}/instances/{instance}"
    ok(client.put(path, json={"ttl": TTL, **body}))


def hold_coordination(client: httpx.Client) -> str:
    """A session holding a lock and leading an election; its id."""
    answer = ok(client.post("/v1/sessions", json={"ttl": TTL, "name": "checkout-1"}))
    session: str = answer.json()["session"]
    ok(client.put(f"/v1/locks/{LOCK}", params={"session": session, "wait": "5s"}))
    params = {"session": session, "wait": "5s"}
    ok(client.put(f"/v1/elections/{ELECTION}", params=params, json={"value": LEADER_VALUE}))
    return session


def ok(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise AssertionError(f"{response.request.method} {response.request.url}: {response.text}")
    return response


# -- traces -----------------------------------------------------------------------------


def _span(
    trace_id: str,
    service: str,
    name: str,
    *,
    start_us: int,
    duration_us: int,
    parent: str | None = None,
    remote: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": trace_id,
        "id": secrets.token_hex(8),
        "name": name,
        "kind": "SERVER",
        "timestamp": start_us,
        "duration": duration_us,
        "localEndpoint": {"serviceName": service, "ipv4": "127.0.0.1"},
        "tags": {"http.method": "GET", "http.status_code": "200", **(tags or {})},
    }
    if parent is not None:
        span["parentId"] = parent
    if remote is not None:
        span["remoteEndpoint"] = {"serviceName": remote}
    return span


def _chain(hops: list[tuple[str, str, int, int, dict[str, str]]]) -> TraceSpans:
    """A trace whose spans call each other in order: (service, name, offset
    from the root's start in ms, duration in ms, tags) per hop."""
    trace_id = secrets.token_hex(16)
    start = int((time.time() - 30) * 1_000_000)
    spans: list[dict[str, Any]] = []
    for service, name, offset_ms, duration_ms, tags in hops:
        parent = spans[-1]["id"] if spans else None
        span = _span(
            trace_id,
            service,
            name,
            start_us=start + offset_ms * 1000,
            duration_us=duration_ms * 1000,
            parent=parent,
            tags=tags,
        )
        spans.append(span)
    return TraceSpans(trace_id, spans)


def ok_trace() -> TraceSpans:
    return _chain(
        [
            ("web", "get /", 0, 120, {}),
            ("checkout", "get /checkout", 5, 100, {}),
            ("orders", "get /orders/{id}", 15, 60, {}),
            ("inventory", "get /stock/{sku}", 25, 20, {}),
        ]
    )


def error_trace() -> TraceSpans:
    failed = {"http.status_code": "500", "error": "card processor unavailable"}
    return _chain(
        [
            ("web", "post /checkout", 0, 480, {"http.status_code": "502", "error": "502"}),
            ("checkout", "post /checkout", 4, 460, {"http.status_code": "502", "error": "502"}),
            ("payments", "post /pay", 12, 430, failed),
        ]
    )


def slow_trace() -> TraceSpans:
    return _chain(
        [
            ("web", "get /orders", 0, 2600, {}),
            ("checkout", "get /orders", 10, 2550, {}),
            ("orders", "get /orders/{id}", 20, 2500, {}),
        ]
    )


# -- golden signals ---------------------------------------------------------------------


def push_body(traffic: Traffic, interval_s: float) -> dict[str, Any]:
    series = []
    cells = (
        (traffic.ok, "2xx", traffic.latency_s),
        (traffic.failed, "5xx", traffic.failed_latency_s),
    )
    for count, status_class, latency in cells:
        if not count:
            continue
        histogram = Histogram.of([latency] * count)
        cell: dict[str, Any] = {
            "service": traffic.service,
            "route": traffic.route,
            "method": "GET",
            "status_class": status_class,
            "count": count,
            "errors": count if status_class == "5xx" else 0,
            "sum": histogram.sum,
            "buckets": histogram.counts,
        }
        if traffic.caller is not None:
            cell["caller"] = traffic.caller
        series.append(cell)
    source = {"service": traffic.service, "instance": f"{traffic.service}-1"}
    return {"source": source, "interval_s": interval_s, "side": "server", "series": series}


class SignalPusher:
    """Pushes every `TRAFFIC` cell every `PUSH_EVERY_S` seconds on a thread of
    its own until `stop()` (at most `MAX_PUSHES` rounds)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.rounds = 0
        self.failures: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="signal-pusher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while self.rounds < MAX_PUSHES and not self._stopping.is_set():
                self.push_once(client)
                self._stopping.wait(PUSH_EVERY_S)

    def push_once(self, client: httpx.Client) -> None:
        self.rounds += 1
        for traffic in TRAFFIC:
            try:
                answer = client.post("/v1/stats/push", json=push_body(traffic, PUSH_EVERY_S))
            except httpx.HTTPError as exc:  # the server stopping at the end of the session
                self.failures.append(str(exc))
                continue
            if answer.status_code != 202:
                self.failures.append(answer.text)
