"""Alert rules in YAML: parsing and checking, with errors that point at file, line and field.

The document (see docs/metrics-and-alerts.md for the full grammar):

    rules:
      - name: orders-success
        expr: success_rate{service="orders"} < 0.99
        for: 2m                  # optional; also accepted inline: "... < 0.99 for 2m"
        window: 1m               # optional: the period the signal is measured over
        severity: page           # optional, default "warning"
        labels: {team: shop}     # optional, added to the alert's labels
        annotations: {summary: "orders success below 99% ({{ $value }})"}
        notify: [ops]            # optional; default every notifier
    notifiers:
      - name: ops
        webhook: http://127.0.0.1:9000/hook    # or slack: URL, or email: {...}
        repeat_interval: 1h
        send_resolved: true

An expression is `metric{label op "value", …} comparison threshold [for D]`:
metrics are the golden signals `success_rate`, `error_rate`, `rps`,
`p50_latency`, `p95_latency`, `p99_latency` (labels `service`, `route`,
`method`, `caller`) and the registry's `healthy_instances`, `instances`
(label `service`); matchers are `=`, `!=`, `=~`, `!~` (regular expressions
match the whole value, as in PromQL); comparisons `<`, `<=`, `>`, `>=`, `==`,
`!=`. Latency thresholds need a unit (`500ms`), ratios may be written `99%`.

Parsing goes through the YAML node tree (`yaml.compose`) rather than plain
Python values, so every error can say where it is: `rules.yaml:7:11:
rules[1].expr: …`. Everything is checked before anything is used: a rule set
is either entirely valid or refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument
from crossway.telemetry.alerts.expr import Condition, ExprError, parse_expr

DEFAULT_WINDOW = 60.0
DEFAULT_REPEAT = 4 * 3600.0
MIN_WINDOW, MAX_WINDOW = 10.0, 86400.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RULE_FIELDS = ("name", "expr", "for", "window", "severity", "labels", "annotations", "notify")
_NOTIFIER_FIELDS = ("name", "webhook", "slack", "email", "repeat_interval", "send_resolved")
_EMAIL_FIELDS = ("to", "from", "smtp", "starttls", "ssl", "username", "password_env", "timeout")
_RESERVED_LABELS = frozenset({"alertname", "severity", "service", "route", "method", "caller"})


class RuleError(InvalidArgument):
    """A rule document that cannot be used; the message says where and why."""

    code = "invalid_rules"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    condition: Condition
    for_s: float = 0.0
    window_s: float = DEFAULT_WINDOW
    severity: str = "warning"
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    notify: tuple[str, ...] = ()
    """Notifier names; empty means every notifier."""


@dataclass(frozen=True, slots=True)
class EmailSettings:
    to: tuple[str, ...]
    sender: str
    host: str
    port: int = 25
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password_env: str | None = None
    """Name of the environment variable holding the SMTP password (never the password)."""
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    name: str
    kind: str
    """"webhook", "slack" or "email"."""
    url: str = ""
    email: EmailSettings | None = None
    repeat_interval: float = DEFAULT_REPEAT
    send_resolved: bool = True


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    notifiers: tuple[NotifierConfig, ...] = ()
    text: str = ""
    source: str = ""

    def notifiers_for(self, rule: Rule) -> tuple[NotifierConfig, ...]:
        if not rule.notify:
            return self.notifiers
        return tuple(n for n in self.notifiers if n.name in rule.notify)


EMPTY = RuleSet()


def load_rules_file(path: str | Path) -> RuleSet:
    """Parse the rule file at `path`; `RuleError` when unreadable or invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read the alert rules ({exc})") from None
    return parse_rules(text, source=str(path))


def parse_rules(text: str, *, source: str = "rules") -> RuleSet:
    """Parse and check a rule document; `RuleError` names file:line:col and field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise RuleError(f"{where}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{source}: not valid YAML: {exc}") from None
    if root is None:
        return RuleSet(text=text, source=source)
    return _Parser(source).document(root, text)


Node = yaml.Node


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: Node, path: str, message: str) -> RuleError:
        mark = node.start_mark
        return RuleError(
            f"{self.source}:{mark.line + 1}:{mark.column + 1}: {path}: {message}",
            field=path,
            line=mark.line + 1,
        )

    # Document structure.

    def document(self, root: Node, text: str) -> RuleSet:
        top = self.mapping(root, "$", ("rules", "notifiers"))
        notifiers = self.each(top.get("notifiers"), "notifiers", self.notifier)
        self.unique([n.name for n in notifiers], top.get("notifiers"), "notifiers", "notifier")
        rules = self.each(top.get("rules"), "rules", self.rule)
        self.unique([r.name for r in rules], top.get("rules"), "rules", "rule")
        known = {n.name for n in notifiers}
        for i, rule in enumerate(rules):
            for name in rule.notify:
                if name not in known:
                    node = top["rules"]
                    raise self.fail(node, f"rules[{i}].notify", f"no notifier is named {name!r}")
        return RuleSet(tuple(rules), tuple(notifiers), text, self.source)

    def each(self, node: Node | None, path: str, parse: Callable[[Node, str], Any]) -> list[Any]:
        if node is None or _is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, path, "must be a list")
        return [parse(item, f"{path}[{i}]") for i, item in enumerate(node.value)]

    def unique(self, names: list[str], node: Node | None, path: str, what: str) -> None:
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen and node is not None:
                raise self.fail(
                    node.value[i], f"{path}[{i}].name", f"two {what}s are named {name!r}"
                )
            seen.add(name)

    # Rules.

    def rule(self, node: Node, path: str) -> Rule:
        fields = self.mapping(node, path, _RULE_FIELDS)
        name = self.name(self.required(fields, node, path, "name"), f"{path}.name")
        expr_node = self.required(fields, node, path, "expr")
        try:
            condition, inline_for = parse_expr(self.string(expr_node, f"{path}.expr"))
        except ExprError as exc:
            raise self.fail(expr_node, f"{path}.expr", str(exc)) from None
        for_s = self.rule_for(fields, path, inline_for)
        window = self.duration(fields.get("window"), f"{path}.window", DEFAULT_WINDOW)
        if not MIN_WINDOW <= window <= MAX_WINDOW:
            raise self.fail(fields["window"], f"{path}.window", "must be between 10s and 24h")
        return Rule(
            name=name,
            condition=condition,
            for_s=for_s,
            window_s=window,
            severity=self.optional_string(fields.get("severity"), f"{path}.severity", "warning"),
            labels=self.labels(fields.get("labels"), f"{path}.labels"),
            annotations=self.string_map(fields.get("annotations"), f"{path}.annotations"),
            notify=tuple(self.string_list(fields.get("notify"), f"{path}.notify")),
        )

    def rule_for(self, fields: dict[str, Node], path: str, inline: float | None) -> float:
        if "for" in fields and inline is not None:
            raise self.fail(fields["for"], f"{path}.for", "given twice (in expr and as a field)")
        if inline is not None:
            return inline
        return self.duration(fields.get("for"), f"{path}.for", 0.0)

    def labels(self, node: Node | None, path: str) -> tuple[tuple[str, str], ...]:
        pairs = self.string_map(node, path)
        for key, _ in pairs:
            if not _LABEL.match(key):
                raise self.fail(node or _NULL, f"{path}.{key}", "is not a valid label name")
            if key in _RESERVED_LABELS:
                raise self.fail(node or _NULL, f"{path}.{key}", "is set by the alert itself")
        return pairs

    # Notifiers.

    def notifier(self, node: Node, path: str) -> NotifierConfig:
        fields = self.mapping(node, path, _NOTIFIER_FIELDS)
        name = self.name(self.required(fields, node, path, "name"), f"{path}.name")
        kinds = [k for k in ("webhook", "slack", "email") if k in fields]
        if len(kinds) != 1:
            raise self.fail(node, path, "needs exactly one of webhook, slack or email")
        kind = kinds[0]
        repeat_node = fields.get("repeat_interval")
        repeat = self.duration(repeat_node, f"{path}.repeat_interval", DEFAULT_REPEAT)
        if repeat <= 0 and repeat_node is not None:
            raise self.fail(repeat_node, f"{path}.repeat_interval", "must be longer than zero")
        send_resolved = self.boolean(fields.get("send_resolved"), f"{path}.send_resolved", True)
        common: dict[str, Any] = {"repeat_interval": repeat, "send_resolved": send_resolved}
        if kind == "email":
            email = self.email(fields["email"], f"{path}.email")
            return NotifierConfig(name, kind, email=email, **common)
        url = self.url(fields[kind], f"{path}.{kind}")
        return NotifierConfig(name, kind, url=url, **common)

    def email(self, node: Node, path: str) -> EmailSettings:
        fields = self.mapping(node, path, _EMAIL_FIELDS)
        to_node = self.required(fields, node, path, "to")
        to = self.string_list(to_node, f"{path}.to", allow_scalar=True)
        if not to or not all("@" in a for a in to):
            raise self.fail(to_node, f"{path}.to", "must list e-mail addresses")
        sender = self.string(self.required(fields, node, path, "from"), f"{path}.from")
        smtp_node = self.required(fields, node, path, "smtp")
        host, port = self.host_port(smtp_node, f"{path}.smtp")
        timeout = self.duration(fields.get("timeout"), f"{path}.timeout", 10.0)
        return EmailSettings(
            to=tuple(to),
            sender=sender,
            host=host,
            port=port,
            starttls=self.boolean(fields.get("starttls"), f"{path}.starttls", False),
            ssl=self.boolean(fields.get("ssl"), f"{path}.ssl", False),
            username=self.optional_string(fields.get("username"), f"{path}.username", None),
            password_env=self.optional_string(
                fields.get("password_env"), f"{path}.password_env", None
            ),
            timeout=timeout,
        )

    def host_port(self, node: Node, path: str) -> tuple[str, int]:
        text = self.string(node, path)
        host, sep, port = text.rpartition(":")
        if not sep:
            return text, 25
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.fail(node, path, "must be host or host:port")
        return host, int(port)

    # Scalars and maps.

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> dict[str, Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, "must be a mapping")
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in allowed:
                expected = ", ".join(allowed)
                raise self.fail(key_node, f"{path}.{key}", f"unknown field (expected {expected})")
            if key in out:
                raise self.fail(key_node, f"{path}.{key}", "given twice")
            out[key] = value_node
        return out

    def required(self, fields: dict[str, Node], node: Node, path: str, key: str) -> Node:
        if key not in fields or _is_null(fields[key]):
            raise self.fail(node, f"{path}.{key}", "is required")
        return fields[key]

    def string(self, node: Node, path: str) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.fail(node, path, "must be text")
        text = str(value).strip()
        if not text:
            raise self.fail(node, path, "must not be empty")
        return text

    def optional_string(self, node: Node | None, path: str, default: Any) -> Any:
        return default if node is None or _is_null(node) else self.string(node, path)

    def name(self, node: Node, path: str) -> str:
        text = self.string(node, path)
        if not _NAME.match(text):
            raise self.fail(node, path, "must start with a letter and use letters, digits, _ . : -")
        return text

    def url(self, node: Node, path: str) -> str:
        text = self.string(node, path)
        if not re.match(r"^https?://[^\s/]+", text):
            raise self.fail(node, path, "must be an http:// or https:// URL")
        return text

    def duration(self, node: Node | None, path: str, default: float) -> float:
        if node is None or _is_null(node):
            return default
        value = self.scalar(node, path)
        try:
            return parse_duration(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(node, path, str(exc)) from None

    def boolean(self, node: Node | None, path: str, default: bool) -> bool:
        if node is None or _is_null(node):
            return default
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            raise self.fail(node, path, "must be true or false")
        return value

    def string_map(self, node: Node | None, path: str) -> tuple[tuple[str, str], ...]:
        if node is None or _is_null(node):
            return ()
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, "must be a mapping of names to text")
        pairs = []
        for key_node, value_node in node.value:
            key = self.string(key_node, path)
            pairs.append((key, self.string(value_node, f"{path}.{key}")))
        return tuple(pairs)

    def string_list(self, node: Node | None, path: str, *, allow_scalar: bool = False) -> list[str]:
        if node is None or _is_null(node):
            return []
        if allow_scalar and isinstance(node, yaml.ScalarNode):
            return [self.string(node, path)]
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, path, "must be a list")
        return [self.string(item, f"{path}[{i}]") for i, item in enumerate(node.value)]

    def scalar(self, node: Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, path, "must be a single value")
        return yaml.SafeLoader("").construct_object(node)


_NULL = yaml.ScalarNode("tag:yaml.org,2002:null", "")


def _is_null(node: Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"
