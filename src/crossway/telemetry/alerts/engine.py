"""Alert evaluation: pending → firing → resolved, deduplicated, with repeat intervals.

Theory of operation
- Each evaluation asks a `Source` for the samples of every rule's metric (one
  per service, route or edge) over the rule's window. Every sample selected by
  the rule's matchers whose value satisfies the comparison is an *active*
  alert instance, identified by the rule name plus its labels.
- States, per instance (the table every transition follows):

      state      condition holds                      condition does not hold
      ---------  -----------------------------------  ------------------------------
      (none)     → pending (→ firing if `for` is 0)    —
      pending    → firing once held for `for`          → (none), nothing sent
      firing     stays firing; repeat if due           → resolved, sent once, forgotten

  A sample that disappears (no traffic in the window, a service gone from the
  registry) counts as "does not hold", as in Prometheus.
- Notifications are deduplicated: an instance produces one `firing`
  notification per notifier when it starts firing, then again only when that
  notifier's `repeat_interval` has passed; one `resolved` notification goes to
  each notifier that was told it was firing (and wants resolutions). Evaluating
  twice at the same moment produces nothing new.
- Pure: the clock is injected (`now()` times `for` and repeats, `wall()`
  stamps what people read); the engine returns notifications and never sends.

Invariants
1. At most one instance per (rule, labels); its state only moves along the table.
2. A notifier never gets two `firing` notifications for one instance less than
   its `repeat_interval` apart, and never a `resolved` without a `firing` first.
3. History is bounded (`history` newest transitions kept).
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from crossway.core.clock import Clock
from crossway.telemetry.alerts.expr import Condition
from crossway.telemetry.alerts.rules import EMPTY, NotifierConfig, Rule, RuleSet

Labels = tuple[tuple[str, str], ...]

PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"
_TEMPLATE = re.compile(r"\{\{\s*\$(labels\.([A-Za-z_][A-Za-z0-9_]*)|value)\s*\}\}")


class Sample(NamedTuple):
    labels: Labels
    value: float


class Source(Protocol):
    def samples(self, condition: Condition, window: float) -> Sequence[Sample]:
        """The metric of `condition` over the last `window` seconds, one sample per key."""
        ...


@dataclass(slots=True)
class Alert:
    rule: Rule
    labels: Labels
    state: str
    value: float
    since: float
    """Clock `now()` when the condition started holding."""
    started_at: float
    """Wall time when the condition started holding."""
    fired_at: float | None = None
    resolved_at: float | None = None
    sent: dict[str, float] = field(default_factory=dict)
    """Notifier name → clock `now()` of the last firing notification."""

    @property
    def fingerprint(self) -> str:
        text = "\x00".join(f"{k}={v}" for k, v in self.labels)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        labels = dict(self.labels)
        return {
            "fingerprint": self.fingerprint,
            "alertname": self.rule.name,
            "state": self.state,
            "labels": labels,
            "annotations": self.annotations(),
            "value": self.value,
            "value_text": self.rule.condition.format_value(self.value),
            "expr": self.rule.condition.text,
            "for_s": self.rule.for_s,
            "started_at": _iso(self.started_at),
            "fired_at": _iso(self.fired_at),
            "resolved_at": _iso(self.resolved_at),
        }

    def annotations(self) -> dict[str, str]:
        out = {k: render(v, self.labels, self.value, self.rule) for k, v in self.rule.annotations}
        out.setdefault("summary", self._summary())
        return out

    def _summary(self) -> str:
        condition = self.rule.condition
        where = ", ".join(f"{k}={v}" for k, v in self.labels if k in _DIMENSIONS)
        value = condition.format_value(self.value)
        limit = condition.format_value(condition.threshold)
        return f"{condition.metric} {value} {condition.op} {limit}" + (
            f" ({where})" if where else ""
        )


_DIMENSIONS = ("service", "route", "method", "caller")


@dataclass(frozen=True, slots=True)
class Notification:
    notifier: NotifierConfig
    status: str
    """"firing" or "resolved"."""
    alert: dict[str, Any]
    repeat: bool = False


def render(template: str, labels: Labels, value: float, rule: Rule) -> str:
    """`{{ $labels.NAME }}` and `{{ $value }}` filled in (unknown labels: empty)."""
    found = dict(labels)

    def fill(m: re.Match[str]) -> str:
        if m.group(1) == "value":
            return rule.condition.format_value(value)
        return found.get(m.group(2), "")

    return _TEMPLATE.sub(fill, template)


class Engine:
    """Alert states for one rule set; see the module header."""

    def __init__(self, rules: RuleSet = EMPTY, *, clock: Clock, history: int = 500) -> None:
        self.clock = clock
        self.rules = rules
        self.evaluations = 0
        self._alerts: dict[tuple[str, Labels], Alert] = {}
        self._history: deque[dict[str, Any]] = deque(maxlen=history)

    def load(self, rules: RuleSet) -> None:
        """Switch to `rules`, keeping the state of rules that did not change."""
        unchanged = {r.name for r in rules.rules if r in self.rules.rules}
        for key in [k for k in self._alerts if k[0] not in unchanged]:
            del self._alerts[key]
        self.rules = rules

    def evaluate(self, source: Source) -> list[Notification]:
        """One evaluation of every rule; the notifications to send now."""
        out: list[Notification] = []
        for rule in self.rules.rules:
            holding = self._holding(rule, source)
            out += self._advance(rule, holding)
        self.evaluations += 1
        return out

    def active(self) -> list[Alert]:
        """Pending and firing alerts, firing first, then by rule and labels."""
        return sorted(self._alerts.values(), key=lambda a: (a.state != FIRING, a.labels))

    def history(self) -> list[dict[str, Any]]:
        """Recent transitions, newest first."""
        return list(reversed(self._history))

    def _holding(self, rule: Rule, source: Source) -> dict[Labels, float]:
        condition = rule.condition
        holding: dict[Labels, float] = {}
        for sample in source.samples(condition, rule.window_s):
            if condition.selects(dict(sample.labels)) and condition.holds(sample.value):
                holding[_alert_labels(rule, sample.labels)] = sample.value
        return holding

    def _advance(self, rule: Rule, holding: Mapping[Labels, float]) -> list[Notification]:
        out: list[Notification] = []
        for labels, value in holding.items():
            alert = self._alerts.get((rule.name, labels))
            if alert is None:
                alert = self._start(rule, labels, value)
            alert.value = value
            out += self._step_active(alert)
        for key in [k for k in self._alerts if k[0] == rule.name and k[1] not in holding]:
            out += self._step_inactive(self._alerts.pop(key))
        return out

    def _start(self, rule: Rule, labels: Labels, value: float) -> Alert:
        alert = Alert(rule, labels, PENDING, value, self.clock.now(), self.clock.wall())
        self._alerts[(rule.name, labels)] = alert
        return alert

    def _step_active(self, alert: Alert) -> list[Notification]:
        now = self.clock.now()
        if alert.state == PENDING and now - alert.since >= alert.rule.for_s:
            alert.state = FIRING
            alert.fired_at = self.clock.wall()
            self._record(alert)
        if alert.state != FIRING:
            return []
        out = []
        for notifier in self.rules.notifiers_for(alert.rule):
            last = alert.sent.get(notifier.name)
            if last is None or now - last >= notifier.repeat_interval:
                alert.sent[notifier.name] = now
                out.append(Notification(notifier, FIRING, alert.to_json(), repeat=last is not None))
        return out

    def _step_inactive(self, alert: Alert) -> list[Notification]:
        if alert.state != FIRING:
            return []  # pending that never fired: nobody was told, nobody needs to be
        alert.state = RESOLVED
        alert.resolved_at = self.clock.wall()
        self._record(alert)
        snapshot = alert.to_json()
        return [
            Notification(n, RESOLVED, snapshot)
            for n in self.rules.notifiers_for(alert.rule)
            if n.send_resolved and n.name in alert.sent
        ]

    def _record(self, alert: Alert) -> None:
        event = alert.to_json()
        event["time"] = _iso(self.clock.wall())
        self._history.append(event)


def _alert_labels(rule: Rule, sample: Labels) -> Labels:
    labels = {"alertname": rule.name, "severity": rule.severity}
    labels.update(sample)
    labels.update(rule.labels)
    return tuple(sorted(labels.items()))


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
