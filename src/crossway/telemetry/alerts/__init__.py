"""Alerts over golden signals and instance health.

Rules are YAML (`parse_rules`, `load_rules_file`); the `Engine` evaluates them
purely (pending → firing → resolved, deduplicated, repeat intervals) against
a `Source` such as `SignalSource`; the `Dispatcher` sends notifications to
webhooks, Slack-compatible webhooks and SMTP; `AlertLoop` drives it all;
`export` writes equivalent Prometheus rules and a Grafana dashboard.
"""

from crossway.telemetry.alerts.engine import Alert, Engine, Notification, Sample, Source
from crossway.telemetry.alerts.expr import Condition, ExprError, Matcher, parse_expr
from crossway.telemetry.alerts.loop import AlertLoop
from crossway.telemetry.alerts.notifiers import Dispatcher, NotifyError
from crossway.telemetry.alerts.rules import (
    EmailSettings,
    NotifierConfig,
    Rule,
    RuleError,
    RuleSet,
    load_rules_file,
    parse_rules,
)
from crossway.telemetry.alerts.source import SignalSource

__all__ = [
    "Alert",
    "AlertLoop",
    "Condition",
    "Dispatcher",
    "EmailSettings",
    "Engine",
    "ExprError",
    "Matcher",
    "Notification",
    "NotifierConfig",
    "NotifyError",
    "Rule",
    "RuleError",
    "RuleSet",
    "Sample",
    "SignalSource",
    "Source",
    "load_rules_file",
    "parse_expr",
    "parse_rules",
]
