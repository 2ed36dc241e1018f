"""Prometheus recording and alerting rules, and a Grafana dashboard, for the golden signals.

Theory of operation
- Recording rules compute, from the conventions in `crossway.telemetry.metrics`,
  the same golden signals the control plane keeps: per service, per route and
  per caller→callee edge, the request rate, the success ratio and the p50, p95
  and p99 latency over 1 minute. Names follow Prometheus' `level:metric:ops`
  scheme (`service:http_server_requests:rate1m`, …). Rates and success come
  from the request counters (`http_*_requests_total`, which carry
  `status_class`), quantiles from the duration histograms' buckets.
- A success ratio must exist even when a service has no failures at all (no
  5xx series) or nothing but failures, so failures are `(sum of failed rates)
  or (total rate × 0)`: the ratio is 1 − failed / total in every case.
- Each Crossway alert rule becomes an alerting rule with the same name,
  `for`, labels and annotations (`{{ $labels.x }}` / `{{ $value }}` are Go
  template syntax already). Its expression reads the recorded series when the
  rule's window is 1 minute and an equivalent inline expression otherwise.
  Edges are recorded from the client side: the caller is the client metric's
  `service` label and the callee its `peer_service`, so matchers are renamed.
- Everything here is pure text generation; the output passes
  `promtool check rules` (tested).
"""

from __future__ import annotations

from typing import Any

import yaml

from crossway.telemetry.alerts.expr import LATENCY_QUANTILES, Condition, Matcher
from crossway.telemetry.alerts.rules import Rule, RuleSet
from crossway.telemetry.metrics import (
    HTTP_CLIENT_DURATION,
    HTTP_CLIENT_REQUESTS_TOTAL,
    HTTP_SERVER_DURATION,
    HTTP_SERVER_REQUESTS_TOTAL,
    SERVICE_INSTANCES,
)

_FAILED = 'status_class=~"5xx|none"'
_QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


class _Level:
    """An aggregation level: its metrics, the labels it groups by, its record prefix."""

    def __init__(self, prefix: str, by: str, requests: str, duration: str, kind: str) -> None:
        self.prefix = prefix
        self.by = by
        self.requests = requests
        self.duration = duration
        self.kind = kind
        self.metric = "http_client" if kind == "edge" else "http_server"

    def rate_name(self) -> str:
        return f"{self.prefix}:{self.metric}_requests:rate1m"

    def success_name(self) -> str:
        return f"{self.prefix}:{self.metric}_success:ratio_rate1m"

    def quantile_name(self, label: str) -> str:
        return f"{self.prefix}:{self.metric}_request_duration_seconds:{label}_1m"

    def rate(self, window: str, selector: str = "") -> str:
        inner = _join(selector)
        return f"sum by ({self.by}) (rate({self.requests}{inner}[{window}]))"

    def success(self, window: str, selector: str = "") -> str:
        total = self.rate(window, selector)
        failed = self.rate(window, ", ".join(filter(None, [selector, _FAILED])))
        return f"1 - (({failed}) or ({total} * 0)) / {total}"

    def quantile(self, q: float, window: str, selector: str = "") -> str:
        buckets = f"rate({self.duration}_bucket{_join(selector)}[{window}])"
        return f"histogram_quantile({q:g}, sum by ({self.by}, le) ({buckets}))"


LEVELS = {
    "service": _Level(
        "service", "service", HTTP_SERVER_REQUESTS_TOTAL, HTTP_SERVER_DURATION, "service"
    ),
    "route": _Level(
        "service_route",
        "service, route, method",
        HTTP_SERVER_REQUESTS_TOTAL,
        HTTP_SERVER_DURATION,
        "route",
    ),
    "edge": _Level(
        "service_peer",
        "service, peer_service",
        HTTP_CLIENT_REQUESTS_TOTAL,
        HTTP_CLIENT_DURATION,
        "edge",
    ),
}


def recording_rules() -> list[dict[str, str]]:
    """The golden signals at every level, over 1 minute."""
    out = []
    for level in LEVELS.values():
        out.append({"record": level.rate_name(), "expr": level.rate("1m")})
        out.append({"record": level.success_name(), "expr": level.success("1m")})
        for label, q in _QUANTILES:
            out.append({"record": level.quantile_name(label), "expr": level.quantile(q, "1m")})
    return out


def alerting_rule(rule: Rule) -> dict[str, Any]:
    """The Prometheus alerting rule equivalent to `rule`."""
    condition = rule.condition
    out: dict[str, Any] = {
        "alert": rule.name,
        "expr": f"{signal_expr(condition, rule.window_s)} {condition.op} {condition.threshold:g}",
    }
    if rule.for_s:
        out["for"] = prom_duration(rule.for_s)
    out["labels"] = {"severity": rule.severity, **dict(rule.labels)}
    if rule.annotations:
        out["annotations"] = dict(rule.annotations)
    return out


def signal_expr(condition: Condition, window_s: float) -> str:
    """PromQL for the metric a condition reads, with its matchers, over `window_s`."""
    metric = condition.metric
    if condition.dimension == "instances":
        status = ['status="passing"'] if metric == "healthy_instances" else []
        selector = ", ".join(status + [str(m) for m in condition.matchers])
        return f"sum by (service) ({SERVICE_INSTANCES}{_join(selector)})"
    level = LEVELS[condition.dimension]
    selector = ", ".join(str(m) for m in _prometheus_matchers(condition))
    if window_s == 60.0:
        return _recorded(level, metric, selector)
    return _inline(level, metric, selector, prom_duration(window_s))


def _recorded(level: _Level, metric: str, selector: str) -> str:
    inner = _join(selector)
    if metric == "rps":
        return level.rate_name() + inner
    if metric == "success_rate":
        return level.success_name() + inner
    if metric == "error_rate":
        return f"(1 - {level.success_name()}{inner})"
    label = metric.split("_", 1)[0]
    return level.quantile_name(label) + inner


def _inline(level: _Level, metric: str, selector: str, window: str) -> str:
    if metric == "rps":
        return level.rate(window, selector)
    if metric == "success_rate":
        return f"({level.success(window, selector)})"
    if metric == "error_rate":
        return f"(1 - ({level.success(window, selector)}))"
    return level.quantile(LATENCY_QUANTILES[metric], window, selector)


def _prometheus_matchers(condition: Condition) -> list[Matcher]:
    """Edge matchers renamed to the client metrics' labels (caller → service → peer_service)."""
    if condition.dimension != "edge":
        return list(condition.matchers)
    renamed = {"service": "peer_service", "caller": "service"}
    return [Matcher(renamed.get(m.label, m.label), m.op, m.value) for m in condition.matchers]


def prometheus_rules(rules: RuleSet | None = None, *, group: str = "crossway") -> str:
    """A Prometheus rule file: recording rules, plus alerting rules for `rules`."""
    groups: list[dict[str, Any]] = [{"name": f"{group}-golden-signals", "rules": recording_rules()}]
    if rules is not None and rules.rules:
        groups.append({"name": f"{group}-alerts", "rules": [alerting_rule(r) for r in rules.rules]})
    header = (
        "# Crossway golden signals: recording rules (and alerting rules equivalent to\n"
        "# the control plane's alert rules). Check with: promtool check rules FILE\n"
    )
    body = yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000, allow_unicode=True)
    return header + body


def prom_duration(seconds: float) -> str:
    """A duration in Prometheus' syntax: whole units only ("90s", "500ms", "2h")."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _join(selector: str) -> str:
    return f"{{{selector}}}" if selector else ""


# Grafana.

_SERVICE_FILTER = '{service=~"$service"}'


def grafana_dashboard(
    *, title: str = "Crossway golden signals", uid: str = "crossway-golden"
) -> dict[str, Any]:
    """A Grafana dashboard over the recorded golden signals (rate, success, p50/p95/p99)."""
    service = LEVELS["service"]
    route = LEVELS["route"]
    edge = LEVELS["edge"]
    f = _SERVICE_FILTER
    panels = [
        _panel(1, "Request rate", "reqps", 0, 0, [(service.rate_name() + f, "{{service}}")]),
        _panel(
            2, "Success rate", "percentunit", 12, 0, [(service.success_name() + f, "{{service}}")]
        ),
        _panel(
            3,
            "Latency p50 / p95 / p99",
            "s",
            0,
            8,
            [(service.quantile_name(q) + f, f"{{{{service}}}} {q}") for q, _ in _QUANTILES],
        ),
        _panel(
            4,
            "Route latency p99",
            "s",
            12,
            8,
            [(route.quantile_name("p99") + f, "{{service}} {{method}} {{route}}")],
        ),
        _panel(
            5,
            "Edges: request rate (caller → callee)",
            "reqps",
            0,
            16,
            [(edge.rate_name() + f, "{{service}} → {{peer_service}}")],
        ),
        _panel(
            6,
            "Edges: success rate",
            "percentunit",
            12,
            16,
            [(edge.success_name() + f, "{{service}} → {{peer_service}}")],
        ),
    ]
    return {
        "uid": uid,
        "title": title,
        "tags": ["crossway", "golden-signals"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [_datasource_variable(), _service_variable(service.rate_name())]},
        "panels": panels,
    }


def _panel(
    panel_id: int, title: str, unit: str, x: int, y: int, targets: list[tuple[str, str]]
) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "type": "datasource",
        "query": "prometheus",
        "label": "Data source",
    }


def _service_variable(series: str) -> dict[str, Any]:
    return {
        "name": "service",
        "type": "query",
        "label": "Service",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": f"label_values({series}, service)", "refId": "services"},
        "definition": f"label_values({series}, service)",
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }
