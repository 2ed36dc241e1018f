"""The alert engine on a virtual clock: states, dedup, repeats, resolution."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.telemetry.alerts.engine import (
    FIRING,
    PENDING,
    Engine,
    Notification,
    Sample,
    render,
)
from crossway.telemetry.alerts.expr import Condition
from crossway.telemetry.alerts.rules import parse_rules
from crossway.telemetry.alerts.source import SignalSource
from crossway.telemetry.signals.aggregator import Aggregator
from crossway.telemetry.signals.histogram import Histogram
from crossway.telemetry.signals.push import Push, PushSeries, Source

RULES = """
rules:
  - name: orders-success
    expr: success_rate{service="orders"} < 0.99 for 2m
    severity: page
    annotations: {summary: "{{ $labels.service }} at {{ $value }}"}
notifiers:
  - name: ops
    webhook: http://127.0.0.1:9/hook
    repeat_interval: 1h
  - name: quiet
    webhook: http://127.0.0.1:9/quiet
    repeat_interval: 10m
    send_resolved: false
"""


class FakeSource:
    """Per-service values set by the test."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def samples(self, condition: Condition, window: float) -> Sequence[Sample]:
        return [Sample((("service", s),), v) for s, v in self.values.items()]


def kinds(notifications: list[Notification]) -> list[tuple[str, str, bool]]:
    return [(n.notifier.name, n.status, n.repeat) for n in notifications]


def test_pending_then_firing_then_resolved() -> None:
    clock = VirtualClock()
    engine = Engine(parse_rules(RULES), clock=clock)
    source = FakeSource()
    source.values = {"orders": 0.95, "books": 0.5}  # books is not selected by the matcher
    assert engine.evaluate(source) == []
    [alert] = engine.active()
    assert alert.state == PENDING
    assert dict(alert.labels) == {
        "alertname": "orders-success",
        "severity": "page",
        "service": "orders",
    }
    clock.advance(119)
    assert engine.evaluate(source) == []
    clock.advance(1)
    fired = engine.evaluate(source)
    assert kinds(fired) == [("ops", "firing", False), ("quiet", "firing", False)]
    assert fired[0].alert["annotations"]["summary"] == "orders at 95%"
    assert fired[0].alert["state"] == FIRING
    assert engine.evaluate(source) == []  # dedup: nothing new at the same moment
    clock.advance(600)
    assert kinds(engine.evaluate(source)) == [("quiet", "firing", True)]
    clock.advance(3000)
    assert kinds(engine.evaluate(source)) == [("ops", "firing", True), ("quiet", "firing", True)]
    source.values["orders"] = 0.999
    resolved = engine.evaluate(source)
    assert kinds(resolved) == [("ops", "resolved", False)]  # quiet does not want resolutions
    assert resolved[0].alert["resolved_at"] is not None
    assert engine.active() == []
    assert [e["state"] for e in engine.history()] == ["resolved", "firing"]


def test_a_pending_alert_that_clears_sends_nothing() -> None:
    clock = VirtualClock()
    engine = Engine(parse_rules(RULES), clock=clock)
    source = FakeSource()
    source.values = {"orders": 0.9}
    engine.evaluate(source)
    clock.advance(60)
    source.values = {}  # no traffic at all: no sample, the condition does not hold
    assert engine.evaluate(source) == []
    assert engine.active() == []
    assert engine.history() == []


def test_for_zero_fires_at_once_and_reloading_keeps_unchanged_rules() -> None:
    clock = VirtualClock()
    text = RULES.replace(" for 2m", "")
    engine = Engine(parse_rules(text), clock=clock)
    source = FakeSource()
    source.values = {"orders": 0.5}
    assert len(engine.evaluate(source)) == 2
    engine.load(parse_rules(text))  # same rules: state kept, nothing re-sent
    assert engine.evaluate(source) == []
    engine.load(parse_rules(text.replace("0.99", "0.98")))  # changed: starts afresh
    assert len(engine.evaluate(source)) == 2


def test_templates() -> None:
    rule = parse_rules(RULES).rules[0]
    labels = (("service", "orders"),)
    assert render("{{$labels.service}}/{{ $labels.nope }}", labels, 0.5, rule) == "orders/"
    assert render("{{ $value }}", labels, 0.5, rule) == "50%"


def test_the_signal_source_feeds_rules_from_pushes_and_the_registry() -> None:
    clock = VirtualClock()
    agg = Aggregator(clock)
    ok = Histogram.of([0.01] * 90)
    bad = Histogram.of([0.8] * 10)
    agg.ingest(
        Push(
            source=Source("orders"),
            series=[
                PushSeries("orders", "/o", "GET", "2xx", ok.count, ok.counts, 0, ok.sum, "web"),
                PushSeries("orders", "/o", "GET", "5xx", bad.count, bad.counts, 10, bad.sum, "web"),
            ],
        )
    )
    clock.advance(10)
    rules = parse_rules(
        """
rules:
  - {name: svc, expr: 'success_rate{service="orders"} < 0.99'}
  - {name: route, expr: 'p99_latency{route="/o"} > 500ms'}
  - {name: edge, expr: 'error_rate{caller="web"} > 5%'}
  - {name: rate, expr: 'rps > 1'}
  - {name: hosts, expr: 'healthy_instances < 2'}
notifiers: [{name: n, webhook: 'http://127.0.0.1:9/'}]
"""
    )
    source = SignalSource(agg, lambda: {"orders": (1, 3), "books": (2, 2)})
    engine = Engine(rules, clock=clock)
    fired = {n.alert["alertname"]: n.alert for n in engine.evaluate(source)}
    assert fired["svc"]["value"] == 0.9
    assert fired["route"]["labels"]["method"] == "GET"
    assert fired["edge"]["labels"]["caller"] == "web"
    assert fired["rate"]["value"] == 100 / 60
    assert fired["hosts"]["labels"]["service"] == "orders"
    assert set(fired) == {"svc", "route", "edge", "rate", "hosts"}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 400), st.booleans()), min_size=1, max_size=40))
def test_notifications_respect_for_repeat_and_order(steps: list[tuple[float, bool]]) -> None:
    clock = VirtualClock()
    engine = Engine(parse_rules(RULES), clock=clock)
    source = FakeSource()
    sent: list[tuple[float, str, str]] = []  # (time, notifier, status)
    bad_since: float | None = None
    for gap, bad in steps:
        clock.advance(gap)
        source.values = {"orders": 0.5 if bad else 1.0}
        if bad and bad_since is None:
            bad_since = clock.now()
        if not bad:
            bad_since = None
        for n in engine.evaluate(source):
            sent.append((clock.now(), n.notifier.name, n.status))
            if n.status == FIRING:
                assert bad_since is not None
                assert clock.now() - bad_since >= 120  # never before `for`
    repeats = {"ops": 3600, "quiet": 600}
    last: dict[str, float] = {}  # notifier → time of its last firing in this episode
    for t, name, status in sent:
        if status == FIRING:
            assert name not in last or t - last[name] >= repeats[name]
            last[name] = t
        else:
            assert name == "ops"  # quiet does not want resolutions
            assert name in last  # a resolution only after a firing
            last.clear()  # the episode is over; the next firing is a new one
