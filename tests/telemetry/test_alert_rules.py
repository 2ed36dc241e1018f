"""Alert rule documents and expressions: what parses, and where errors point."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.telemetry.alerts.expr import ExprError, Matcher, format_value, parse_expr
from crossway.telemetry.alerts.rules import (
    DEFAULT_REPEAT,
    RuleError,
    load_rules_file,
    parse_rules,
)

EXAMPLE = """\
rules:
  - name: orders-success
    expr: success_rate{service="orders"} < 0.99
    for: 2m
    severity: page
    annotations: {summary: "orders success rate below 99%"}
  - name: slow
    expr: p99_latency > 500ms for 5m
    notify: [ops]
  - name: few
    expr: healthy_instances{service="x"} < 2
    labels: {team: shop}
notifiers:
  - name: ops
    webhook: http://127.0.0.1:9000/hook
    repeat_interval: 1h
  - name: chat
    slack: https://hooks.example.com/T0/B0/x
    send_resolved: false
  - name: mail
    email:
      to: [oncall@example.com]
      from: crossway@example.com
      smtp: mail.example.com:587
      starttls: true
      username: crossway
      password_env: SMTP_PASSWORD
"""


def test_the_documented_example_parses() -> None:
    rs = parse_rules(EXAMPLE, source="alerts.yaml")
    success, slow, few = rs.rules
    assert success.name == "orders-success"
    assert success.condition.metric == "success_rate"
    assert success.condition.matchers == (Matcher("service", "=", "orders"),)
    assert (success.condition.op, success.condition.threshold) == ("<", 0.99)
    assert (success.for_s, success.window_s, success.severity) == (120, 60, "page")
    assert dict(success.annotations)["summary"] == "orders success rate below 99%"
    assert (slow.condition.threshold, slow.for_s, slow.severity) == (0.5, 300, "warning")
    assert few.condition.dimension == "instances"
    assert few.labels == (("team", "shop"),)
    ops, chat, mail = rs.notifiers
    assert (ops.kind, ops.url, ops.repeat_interval) == (
        "webhook",
        "http://127.0.0.1:9000/hook",
        3600,
    )
    assert (chat.kind, chat.send_resolved, chat.repeat_interval) == ("slack", False, DEFAULT_REPEAT)
    assert mail.email is not None
    assert (mail.email.host, mail.email.port, mail.email.starttls) == (
        "mail.example.com",
        587,
        True,
    )
    assert mail.email.password_env == "SMTP_PASSWORD"
    assert rs.notifiers_for(slow) == (ops,)
    assert rs.notifiers_for(success) == rs.notifiers


def test_empty_documents_are_empty_rule_sets() -> None:
    assert parse_rules("").rules == ()
    assert parse_rules("rules: []\nnotifiers:\n").notifiers == ()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("rules:\n  - name: a\n    expr: p99_latency > 500\n", "f.yaml:3:11: rules[0].expr"),
        ("rules:\n  - name: a\n    expr: latency > 1\n", "f.yaml:3:11: rules[0].expr"),
        ("rules:\n  - name: a\n    expr: rps > 1\n    fro: 2m\n", "f.yaml:4:5: rules[0].fro"),
        ("rules:\n  - expr: rps > 1\n", "f.yaml:2:5: rules[0].name"),
        ("rules:\n  - name: a\n    expr: rps > 1\n    for: soon\n", "f.yaml:4:10: rules[0].for"),
        ("rules:\n  - name: a\n    expr: rps > 1 for 1m\n    for: 1m\n", "rules[0].for"),
        ("rules:\n  - name: a\n    expr: rps > 1\n    window: 1s\n", "rules[0].window"),
        ("rules:\n  - {name: a, expr: rps > 1}\n  - {name: a, expr: rps > 2}\n", "rules[1].name"),
        ("rules:\n  - {name: a, expr: rps > 1, notify: [x]}\n", "rules[0].notify"),
        ("rules:\n  - {name: a, expr: rps > 1, labels: {service: x}}\n", "rules[0].labels.service"),
        ("rules: {name: a}\n", "f.yaml:1:8: rules: must be a list"),
        ("rules: [\n", "f.yaml:2:1: not valid YAML"),
        ("notifiers:\n  - {name: n, webhook: ftp://x}\n", "notifiers[0].webhook"),
        ("notifiers:\n  - {name: n}\n", "notifiers[0]: needs exactly one"),
        ("notifiers:\n  - {name: n, webhook: 'http://a', slack: 'http://b'}\n", "exactly one"),
        ("notifiers:\n  - {name: n, webhook: 'http://a', send_resolved: maybe}\n", "send_resolved"),
        (
            "notifiers:\n  - {name: n, webhook: 'http://a', repeat_interval: 0s}\n",
            "repeat_interval",
        ),
        ("notifiers:\n  - name: n\n    email: {to: x, from: a@b, smtp: h}\n", "email.to"),
        ("notifiers:\n  - name: n\n    email: {to: a@b, from: a@b, smtp: 'h:x'}\n", "email.smtp"),
        ("other: 1\n", "$.other: unknown field"),
    ],
)
def test_errors_name_file_line_and_field(text: str, where: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(text, source="f.yaml")
    assert where in caught.value.message
    assert caught.value.status == 400


def test_a_rule_file_is_read_from_disk(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "rules.yaml"  # type: ignore[operator]
    path.write_text(EXAMPLE)
    assert len(load_rules_file(path).rules) == 3
    with pytest.raises(RuleError, match="cannot read"):
        load_rules_file(tmp_path / "missing.yaml")  # type: ignore[operator]


# Expressions.


@pytest.mark.parametrize(
    ("text", "metric", "threshold", "for_s", "dimension"),
    [
        ('success_rate{service="orders"} < 0.99 for 2m', "success_rate", 0.99, 120, "service"),
        ("success_rate < 99.5%", "success_rate", 0.995, None, "service"),
        ("error_rate{caller='x'} > 1", "error_rate", 1.0, None, None),
        ("p99_latency > 500ms", "p99_latency", 0.5, None, "service"),
        ('p95_latency{route="/a", method="GET"} >= 1.5s', "p95_latency", 1.5, None, "route"),
        ('rps{caller="gw",service!="x",} == 0', "rps", 0.0, None, "edge"),
        ('healthy_instances{service=~"pay.*"} < 2', "healthy_instances", 2.0, None, "instances"),
        ("instances != 3", "instances", 3.0, None, "instances"),
        ('  rps { service = "a" }   >   10   for   30s ', "rps", 10.0, 30, "service"),
    ],
)
def test_expressions(
    text: str, metric: str, threshold: float, for_s: float | None, dimension: str | None
) -> None:
    if dimension is None:
        with pytest.raises(ExprError):
            parse_expr(text)
        return
    condition, parsed_for = parse_expr(text)
    assert condition.metric == metric
    assert condition.threshold == pytest.approx(threshold)
    assert parsed_for == for_s
    assert condition.dimension == dimension


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "metric name"),
        ("rps", "comparison"),
        ("rps >", "comparison"),
        ("rps > x", "number"),
        ("rps > -1", "number"),
        ("success_rate > 2", "ratio"),
        ("success_rate > 120%", "ratio"),
        ('rps{zone="a"} > 1', "no label 'zone'"),
        ('healthy_instances{route="/"} < 1', "no label 'route'"),
        ('rps{caller="a", route="/"} > 1', "cannot be combined"),
        ('rps{service="a" route="b"} > 1', "expected , or }"),
        ('rps{service=~"("} > 1', "bad regular expression"),
        ("rps{service=a} > 1", 'label="value"'),
        ("rps > 1 for ever", "for"),
        ("rps > 1 when 2m", "comparison"),
    ],
)
def test_bad_expressions_say_what_was_expected(text: str, problem: str) -> None:
    with pytest.raises(ExprError, match=problem):
        parse_expr(text)


def test_matchers_follow_promql() -> None:
    condition, _ = parse_expr(r'rps{service=~"pay.*", route!~"/health.*", method!="GET"} > 1')
    assert condition.selects({"service": "payments", "route": "/orders", "method": "POST"})
    assert not condition.selects({"service": "xpay", "route": "/orders", "method": "POST"})
    assert not condition.selects({"service": "pay", "route": "/healthz", "method": "POST"})
    assert not condition.selects({"service": "pay", "route": "/x", "method": "GET"})
    quoted, _ = parse_expr(r'rps{service="a\"b"} > 1')
    assert quoted.matchers[0].value == 'a"b'
    assert str(quoted.matchers[0]) == r'service="a\"b"'
    assert quoted.selector() == r'rps{service="a\"b"}'


def test_values_are_formatted_in_the_metrics_unit() -> None:
    assert format_value("p99_latency", 0.612) == "612ms"
    assert format_value("success_rate", 0.985) == "98.5%"
    assert format_value("rps", 12.345) == "12.35 rps"
    assert format_value("healthy_instances", 2.0) == "2"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_raises_expr_error(text: str) -> None:
    try:
        condition, _ = parse_expr(text)
    except ExprError as exc:
        message = str(exc)
    else:
        message = condition.metric
    assert message


def outcome(text: str) -> str:
    """ "ok", or the message of the `RuleError` (anything else propagates)."""
    try:
        parse_rules(text, source="fuzz.yaml")
    except RuleError as exc:
        return exc.message
    return "ok"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_document_parses_or_raises_rule_error(text: str) -> None:
    result = outcome(text)
    assert result == "ok" or result.startswith("fuzz.yaml")


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=12),
    st.sampled_from(
        ["rps > 1", "success_rate < 0.9 for 1m", "p99_latency > 1s", "2m", "http://h/x"]
    ),
)
fields = st.sampled_from(
    [
        "name",
        "expr",
        "for",
        "window",
        "severity",
        "labels",
        "annotations",
        "notify",
        "webhook",
        "slack",
        "email",
        "repeat_interval",
        "send_resolved",
        "to",
        "smtp",
        "x",
    ]
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(fields, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["rules", "notifiers", "x"]), values, max_size=2))
def test_structured_documents_parse_or_point_at_a_line(document: dict[str, object]) -> None:
    result = outcome(yaml.safe_dump(document))
    assert result == "ok" or result.startswith("fuzz.yaml")
