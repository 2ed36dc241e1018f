"""Alert expressions: `metric{label="value", …} < threshold [for 2m]`.

Grammar (whitespace is free between tokens):

    expr       := metric [ "{" [ matcher { "," matcher } ] "}" ] comparison threshold
                  [ "for" duration ]
    matcher    := label ( "=" | "!=" | "=~" | "!~" ) '"' text '"'
    comparison := "<" | "<=" | ">" | ">=" | "==" | "!="

A condition selects a vector of samples — one per service, per route or per
edge, depending on which labels its matchers name (`route`/`method`: per
route; `caller`: per caller→callee edge; otherwise per service) — and holds
for each sample whose value compares true against the threshold. Thresholds
are stored in the metric's base unit: seconds for latencies, a ratio in
[0, 1] for success and error rates. Regular-expression matchers match the
whole label value, as PromQL's do.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from crossway.core.durations import format_duration, parse_duration

LATENCY_QUANTILES = {"p50_latency": 0.5, "p95_latency": 0.95, "p99_latency": 0.99}
RATIOS = frozenset({"success_rate", "error_rate"})
GOLDEN = frozenset({"rps", *RATIOS, *LATENCY_QUANTILES})
REGISTRY = frozenset({"healthy_instances", "instances"})
METRICS = GOLDEN | REGISTRY
GOLDEN_LABELS = ("service", "route", "method", "caller")
REGISTRY_LABELS = ("service",)

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}

_HEAD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_TAIL = re.compile(r"\s*(<=|>=|==|!=|<|>)\s*(\S+)(?:\s+for\s+(\S+))?\s*$")


class ExprError(ValueError):
    """An expression that cannot be parsed; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = _regex(self.value).fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'


@dataclass(frozen=True, slots=True)
class Condition:
    metric: str
    matchers: tuple[Matcher, ...]
    op: str
    threshold: float
    text: str

    @property
    def dimension(self) -> str:
        """What one sample is about: "service", "route", "edge" or "instances"."""
        if self.metric in REGISTRY:
            return "instances"
        labels = {m.label for m in self.matchers}
        if "caller" in labels:
            return "edge"
        if labels & {"route", "method"}:
            return "route"
        return "service"

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels.get(m.label, "")) for m in self.matchers)

    def holds(self, value: float) -> bool:
        return COMPARISONS[self.op](value, self.threshold)

    def selector(self) -> str:
        inside = ", ".join(str(m) for m in self.matchers)
        return f"{self.metric}{{{inside}}}" if inside else self.metric

    def format_value(self, value: float) -> str:
        """`value` as people read this metric: 612ms, 98.5%, 12.3 rps, 2."""
        return format_value(self.metric, value)


def format_value(metric: str, value: float) -> str:
    if metric in LATENCY_QUANTILES:
        return format_duration(round(value, 6))
    if metric in RATIOS:
        return f"{value * 100:.4g}%"
    if metric == "rps":
        return f"{value:.4g} rps"
    return f"{value:g}"


def parse_expr(text: str) -> tuple[Condition, float | None]:
    """The condition in `text` and its inline `for` duration (None when absent)."""
    head = _HEAD.match(text)
    if head is None:
        raise ExprError("expected a metric name, e.g. success_rate")
    metric = head.group(1)
    if metric not in METRICS:
        raise ExprError(f"unknown metric {metric!r} (known: {', '.join(sorted(METRICS))})")
    matchers, pos = _matchers(text, head.end())
    _check_labels(metric, matchers)
    tail = _TAIL.match(text, pos)
    if tail is None:
        raise ExprError(f"expected a comparison and a threshold after {text[:pos].strip()!r}")
    op, raw_threshold, raw_for = tail.groups()
    threshold = parse_threshold(metric, raw_threshold)
    for_s = _duration(raw_for, "for") if raw_for is not None else None
    condition = Condition(metric, tuple(matchers), op, threshold, " ".join(text.split()))
    return condition, for_s


def _matchers(text: str, pos: int) -> tuple[list[Matcher], int]:
    if pos >= len(text) or text[pos] != "{":
        return [], pos
    pos += 1
    found: list[Matcher] = []
    while True:
        if text[pos:].lstrip().startswith("}"):
            return found, text.index("}", pos) + 1
        m = _MATCHER.match(text, pos)
        if m is None:
            raise ExprError(f'expected label="value" at column {pos + 1}')
        label, op, raw = m.groups()
        value = re.sub(r"\\(.)", r"\1", raw)
        if op in ("=~", "!~"):
            _check_regex(value)
        found.append(Matcher(label, op, value))
        pos = m.end()
        if text[pos : pos + 1] == ",":
            pos += 1
        elif text[pos : pos + 1] != "}":
            raise ExprError(f"expected , or }} at column {pos + 1}")


def _check_labels(metric: str, matchers: list[Matcher]) -> None:
    allowed = REGISTRY_LABELS if metric in REGISTRY else GOLDEN_LABELS
    labels = [m.label for m in matchers]
    for label in labels:
        if label not in allowed:
            raise ExprError(f"{metric} has no label {label!r} (labels: {', '.join(allowed)})")
    if "caller" in labels and ({"route", "method"} & set(labels)):
        raise ExprError("caller (an edge) cannot be combined with route or method")


def parse_threshold(metric: str, raw: str) -> float:
    """The threshold in the metric's base unit; `ExprError` when it does not fit."""
    if metric in LATENCY_QUANTILES:
        if _is_number(raw):
            raise ExprError(f"a latency threshold needs a unit, e.g. {raw}ms or {raw}s")
        return _duration(raw, "threshold")
    if metric in RATIOS:
        value = float(raw[:-1]) / 100 if raw.endswith("%") and _is_number(raw[:-1]) else None
        value = value if value is not None else _number(raw)
        if not 0.0 <= value <= 1.0:
            raise ExprError(f"{metric} is a ratio between 0 and 1 (or 0% and 100%), got {raw}")
        return value
    value = _number(raw)
    if value < 0:
        raise ExprError(f"{metric} is never negative, got {raw}")
    return value


def _number(raw: str) -> float:
    if not _is_number(raw):
        raise ExprError(f"expected a number as threshold, got {raw!r}")
    return float(raw)


def _is_number(raw: str) -> bool:
    return re.fullmatch(r"\d+(\.\d*)?|\.\d+", raw) is not None


def _duration(raw: str, what: str) -> float:
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ExprError(f"{what}: {exc}") from None


def _check_regex(pattern: str) -> None:
    try:
        _regex(pattern)
    except re.error as exc:
        raise ExprError(f"bad regular expression {pattern!r}: {exc}") from None


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
