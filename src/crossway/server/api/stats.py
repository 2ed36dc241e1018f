"""HTTP API of the golden signals and the alerts.

    POST   /v1/stats/push                                 pre-aggregated signals (202)
    GET    /v1/stats?service=&route=&method=&by=&window=1m&series=true
    GET    /v1/edges?service=&caller=&window=1m&series=true
    GET    /v1/alerts                                     active alerts and recent history
    GET    /v1/alerts/rules                               the rule document in force
    PUT    /v1/alerts/rules                               replace it (YAML body, validated)
    DELETE /v1/alerts/rules                               back to the file's rules (or none)

`routes(ctx)` builds, once per process, the `Aggregator` the pushes feed (SDK,
gateway, sidecars: see `crossway.telemetry.signals.push` for the format), the
alert `Engine` reading it and the registry's catalog, the notifier
`Dispatcher`, and the `AlertLoop` that evaluates every 10 s. They start and
stop with the server.

Windows (`window=`) are durations from 10s to 24h — typically 10s, 1m, 5m,
1h, 24h — read at 10 s resolution up to an hour and 1 min beyond.
`GET /v1/stats` without `service` answers one row per service; with
`service` one row per route of it plus the service's `total`; `route` alone
lists that route across services; `by=service|route` chooses the rows
explicitly (`by=route`: every route of every service). Latencies are in
milliseconds.

Alert rules come from the store key `/alerts/rules` (written by `PUT`, shared
by every control plane on the same store, followed by a watch) and otherwise
from the file named by the environment variable `CROSSWAY_ALERT_RULES`, read
at start (an invalid file fails the start with its file:line error).
`CROSSWAY_ALERT_INTERVAL` (default 10s) sets the evaluation period and
`CROSSWAY_STATS_MAX_KEYS` (default 1024) the number of signal keys kept.

The signals live in this process's memory: with several control planes,
each answers for the pushes it received (point pushers at one address, or
scrape every one with Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.durations import format_duration, parse_duration
from crossway.core.errors import InvalidArgument
from crossway.registry import Catalog
from crossway.server.context import ServerContext
from crossway.server.http import PayloadTooLarge, json_response, read_json
from crossway.store import CompactedError, EventType, Store
from crossway.telemetry.alerts import (
    AlertLoop,
    Dispatcher,
    Engine,
    RuleSet,
    SignalSource,
    load_rules_file,
    parse_rules,
)
from crossway.telemetry.alerts.rules import EMPTY, RuleError
from crossway.telemetry.metrics import SERVICE_INSTANCES
from crossway.telemetry.signals import Aggregator, Limits, Push, validate
from crossway.telemetry.signals.aggregator import Kind, Stat, window_json
from crossway.telemetry.signals.series import MAX_WINDOW

log = logging.getLogger("crossway.alerts")

RULES_KEY = "/alerts/rules"
RULES_ENV = "CROSSWAY_ALERT_RULES"
INTERVAL_ENV = "CROSSWAY_ALERT_INTERVAL"
MAX_KEYS_ENV = "CROSSWAY_STATS_MAX_KEYS"
DEFAULT_WINDOW = 60.0
MIN_WINDOW = 10.0


def routes(ctx: ServerContext) -> list[BaseRoute]:
    aggregator = Aggregator(ctx.clock, limits=Limits(max_keys=_env_int(MAX_KEYS_ENV, 1024)))
    source = SignalSource(aggregator, lambda: instance_counts(ctx))
    loop = AlertLoop(
        Engine(clock=ctx.clock),
        source,
        Dispatcher(),
        interval=_env_duration(INTERVAL_ENV, 10.0),
    )
    ctx.provide(aggregator)
    ctx.provide(loop)
    rules_file = os.environ.get(RULES_ENV) or None
    api = StatsApi(ctx.store, aggregator, loop, rules_file=rules_file)
    ctx.registry.register(SignalMetrics(ctx, aggregator, loop))
    ctx.on_start(api.start)
    ctx.on_close(api.stop)
    return api.routes()


def instance_counts(ctx: ServerContext) -> dict[str, tuple[int, int]]:
    """{service: (passing instances, all instances)} from the registry's catalog."""
    try:
        catalog = ctx.service(Catalog)
    except LookupError:
        return {}
    out = {}
    for name, entry in catalog.services.items():
        passing = sum(1 for i in entry.instances.values() if i.status == "passing")
        out[name] = (passing, len(entry.instances))
    return out


class StatsApi:
    def __init__(
        self,
        store: Store,
        aggregator: Aggregator,
        loop: AlertLoop,
        *,
        rules_file: str | None = None,
    ) -> None:
        self.store = store
        self.aggregator = aggregator
        self.loop = loop
        self.rules_file = rules_file
        self.origin = "none"
        self._file_rules = EMPTY
        self._follower: asyncio.Task[None] | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/stats/push", self.push, methods=["POST"]),
            Route("/v1/stats", self.stats, methods=["GET"]),
            Route("/v1/edges", self.edges, methods=["GET"]),
            Route("/v1/alerts", self.alerts, methods=["GET"]),
            Route("/v1/alerts/rules", self.get_rules, methods=["GET"]),
            Route("/v1/alerts/rules", self.put_rules, methods=["PUT"]),
            Route("/v1/alerts/rules", self.delete_rules, methods=["DELETE"]),
        ]

    # Lifecycle.

    async def start(self) -> None:
        """Load the rules (store first, then file), start evaluating and following the store.

        Raises `RuleError` when the rule file or the stored document is invalid."""
        if self.rules_file:
            self._file_rules = load_rules_file(self.rules_file)
        found = await self.store.get(RULES_KEY)
        await self._apply(found.value if found else None)
        await self.loop.start()
        revision = found.mod_revision if found else await self.store.revision()
        self._follower = asyncio.get_running_loop().create_task(self._follow(revision))

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.loop.stop()

    async def _apply(self, stored: bytes | None) -> None:
        if stored is None:
            rules, self.origin = self._file_rules, "file" if self.rules_file else "none"
        else:
            rules, self.origin = parse_rules(stored.decode(), source=RULES_KEY), "store"
        await self.loop.load(rules)

    async def _follow(self, revision: int) -> None:
        """Apply rule changes made through any control plane on this store."""
        while True:
            try:
                async with self.store.watch(RULES_KEY, after_revision=revision) as watch:
                    async for event in watch:
                        revision = event.kv.mod_revision
                        if event.kv.key == RULES_KEY:
                            put = event.type is EventType.PUT
                            await self._apply_logged(event.kv.value if put else None)
            except CompactedError:
                found = await self.store.get(RULES_KEY)
                await self._apply_logged(found.value if found else None)
                revision = await self.store.revision()
            except Exception as exc:
                log.warning("following the alert rules failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _apply_logged(self, stored: bytes | None) -> None:
        try:
            await self._apply(stored)
        except RuleError as exc:  # written by a newer or broken writer: keep the old rules
            log.warning("ignoring invalid stored alert rules: %s", exc.message)

    # Signals.

    async def push(self, request: Request) -> Response:
        body = await read_json(request, Push)
        validate(body)
        result = self.aggregator.ingest(body)
        return json_response({"accepted": result.series, "overflowed": result.overflowed}, 202)

    async def stats(self, request: Request) -> Response:
        query = request.query_params
        window = _window(query.get("window"))
        points = _flag(query.get("series"), "series")
        service = query.get("service") or None
        route = query.get("route") or None
        method = query.get("method") or None
        kind = _kind(query.get("by"), narrowed=bool(service or route or method))
        rows = self.aggregator.stats(
            kind, window, service=service, route=route, method=method, points=points
        )
        body = _listing(kind, window, rows)
        if service is not None:
            total = self.aggregator.stats("service", window, service=service, points=points)
            body["total"] = total[0].to_json() if total else None
        return json_response(body)

    async def edges(self, request: Request) -> Response:
        query = request.query_params
        window = _window(query.get("window"))
        rows = self.aggregator.stats(
            "edge",
            window,
            service=query.get("service") or None,
            caller=query.get("caller") or None,
            points=_flag(query.get("series"), "series"),
        )
        return json_response(_listing("edge", window, rows))

    # Alerts.

    async def alerts(self, request: Request) -> Response:
        engine = self.loop.engine
        stats = self.loop.dispatcher.stats
        return json_response(
            {
                "active": [a.to_json() for a in engine.active()],
                "history": engine.history(),
                "evaluations": engine.evaluations,
                "rules": len(engine.rules.rules),
                "notifications": {
                    "sent": stats.sent,
                    "failed": stats.failed,
                    "dropped": stats.dropped,
                    "retries": stats.retries,
                },
            }
        )

    async def get_rules(self, request: Request) -> Response:
        found = await self.store.get(RULES_KEY)
        index = found.mod_revision if found else await self.store.revision()
        return json_response(rules_json(self.loop.engine.rules, self.origin), index=index)

    async def put_rules(self, request: Request) -> Response:
        body = await _read_text(request)
        rules = parse_rules(body, source="request body")
        put = await self.store.put(RULES_KEY, body.encode())
        await self.loop.load(rules)
        self.origin = "store"
        return json_response(rules_json(rules, self.origin), index=put.revision)

    async def delete_rules(self, request: Request) -> Response:
        deleted = await self.store.delete(RULES_KEY)
        await self._apply(None)
        return json_response(
            rules_json(self.loop.engine.rules, self.origin), index=deleted.revision
        )


def rules_json(rules: RuleSet, origin: str) -> dict[str, Any]:
    """The rule set as the API shows it: where it came from, its YAML, a summary."""
    return {
        "origin": origin,
        "source": rules.source,
        "yaml": rules.text,
        "rules": [
            {
                "name": r.name,
                "expr": r.condition.text,
                "for": format_duration(r.for_s) if r.for_s else "0s",
                "window": format_duration(r.window_s),
                "severity": r.severity,
                "labels": dict(r.labels),
                "annotations": dict(r.annotations),
                "notify": list(r.notify) or [n.name for n in rules.notifiers],
            }
            for r in rules.rules
        ],
        "notifiers": [
            {
                "name": n.name,
                "kind": n.kind,
                "repeat_interval": format_duration(n.repeat_interval),
                "send_resolved": n.send_resolved,
            }
            for n in rules.notifiers
        ],
    }


def _listing(kind: str, window: float, rows: list[Stat]) -> dict[str, Any]:
    return {
        "window": format_duration(window),
        **window_json(window),
        "kind": kind,
        "rows": [row.to_json() for row in rows],
    }


def _kind(by: str | None, *, narrowed: bool) -> Kind:
    """Rows per service or per route: `by=` when given, else routes once narrowed."""
    if by is None or by == "":
        return "route" if narrowed else "service"
    if by not in ("service", "route"):
        raise InvalidArgument("by must be service or route", field="by")
    return "route" if by == "route" else "service"


def _window(text: str | None) -> float:
    if not text:
        return DEFAULT_WINDOW
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InvalidArgument(f"window: {exc}", field="window") from None
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise InvalidArgument("window must be between 10s and 24h", field="window")
    return seconds


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("", "1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise InvalidArgument(f"{name} must be true or false", field=name)


async def _read_text(request: Request) -> str:
    """The request body as UTF-8 text, within the server's body limit."""
    limit: int = request.app.state.ctx.settings.max_body_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("the rules must be UTF-8 text (YAML)") from None


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"{name} must be a positive whole number, got {text!r}")
    return int(text)


def _env_duration(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InvalidArgument(f"{name}: {exc}") from None
    if seconds <= 0:
        raise InvalidArgument(f"{name} must be longer than zero")
    return seconds


class SignalMetrics(Collector):
    """Per-service instance gauges (for alert rules in Prometheus), push and alert counters."""

    def __init__(self, ctx: ServerContext, aggregator: Aggregator, loop: AlertLoop) -> None:
        self._ctx = ctx
        self._aggregator = aggregator
        self._loop = loop

    def collect(self) -> Any:
        yield self._instances(instance_counts(self._ctx))
        counters = self._aggregator.counters
        yield CounterMetricFamily(
            "crossway_stats_pushes", "Golden-signal pushes received", value=counters.pushes
        )
        yield CounterMetricFamily(
            "crossway_stats_series", "Pushed series filed", value=counters.series
        )
        yield CounterMetricFamily(
            "crossway_stats_overflowed_series",
            "Pushed series filed under the overflow route (per-source limit)",
            value=counters.overflowed,
        )
        yield GaugeMetricFamily(
            "crossway_stats_keys",
            "Golden-signal keys kept (service, route, edge)",
            value=len(self._aggregator.all_keys()),
        )
        yield self._alerts()
        yield self._notifications()

    def _instances(self, counts: Mapping[str, tuple[int, int]]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            SERVICE_INSTANCES,
            "Registered instances per service, by health (passing or not)",
            labels=["service", "status"],
        )
        for service, (passing, total) in sorted(counts.items()):
            family.add_metric([service, "passing"], passing)
            family.add_metric([service, "failing"], total - passing)
        return family

    def _alerts(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "crossway_alerts", "Alerts by state (pending or firing)", labels=["state"]
        )
        active = self._loop.engine.active()
        for state in ("pending", "firing"):
            family.add_metric([state], sum(1 for a in active if a.state == state))
        return family

    def _notifications(self) -> CounterMetricFamily:
        stats = self._loop.dispatcher.stats
        family = CounterMetricFamily(
            "crossway_alert_notifications", "Alert notifications by outcome", labels=["result"]
        )
        for result in ("sent", "failed", "dropped"):
            family.add_metric([result], getattr(stats, result))
        return family
