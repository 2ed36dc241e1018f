"""The trace store's and the forwarder's settings, from `CROSSWAY_TRACES_*` variables.

    CROSSWAY_TRACES_FORWARD      zipkin+http://host:9411/api/v2/spans | otlp+http://host:4318/v1/traces
    CROSSWAY_TRACES_MAX_SPANS    spans kept in memory (default 200000)
    CROSSWAY_TRACES_MAX_MEMORY   estimated bytes kept, e.g. 256MB (default 256MB)
    CROSSWAY_TRACES_QUIET        quiet time after which a trace is complete (default 10s)
    CROSSWAY_TRACES_SLOW         root duration that makes a trace slow (default: p99 of recent)
    CROSSWAY_TRACES_KEEP         share of ordinary traces kept, 0..1 (default 1)
    CROSSWAY_TRACES_MAX_BODY     largest ingest body, before and after gzip (default 16MB)

`TraceSettings.from_env` reads a mapping (normally `os.environ`) and raises
`InvalidArgument` naming the variable for a value it cannot use, so a bad
setting stops the server at start-up with one line rather than later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument
from crossway.telemetry.traces.forward import ForwardTarget, parse_target
from crossway.telemetry.traces.store import TracePolicy

PREFIX = "CROSSWAY_TRACES_"
DEFAULT_MAX_BODY = 16 * 1024 * 1024
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


@dataclass(frozen=True, kw_only=True, slots=True)
class TraceSettings:
    policy: TracePolicy = field(default_factory=TracePolicy)
    forward: ForwardTarget | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TraceSettings:
        """Settings from `CROSSWAY_TRACES_*`; unset variables keep the defaults."""
        default = TracePolicy()
        slow = _get(env, "SLOW")
        try:
            policy = TracePolicy(
                max_spans=_int(env, "MAX_SPANS", default.max_spans),
                max_bytes=_size(env, "MAX_MEMORY", default.max_bytes),
                quiet_period=_duration(env, "QUIET", default.quiet_period),
                slow_threshold=_duration(env, "SLOW", 0.0) if slow else None,
                keep_fraction=_fraction(env, "KEEP", default.keep_fraction),
            )
        except ValueError as exc:
            raise InvalidArgument(f"trace store settings: {exc}") from None
        target = _get(env, "FORWARD")
        return cls(
            policy=policy,
            forward=parse_target(target) if target else None,
            max_body_bytes=_size(env, "MAX_BODY", DEFAULT_MAX_BODY),
        )


def _get(env: Mapping[str, str], name: str) -> str:
    return env.get(PREFIX + name, "").strip()


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = _get(env, name)
    if not text:
        return default
    if not text.isdigit():
        raise _bad(name, text, "a whole number")
    return int(text)


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    text = _get(env, name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise _bad(name, text, "a fraction between 0 and 1")
    return value


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    text = _get(env, name)
    try:
        return parse_duration(text) if text else default
    except ValueError:
        raise _bad(name, text, "a duration such as 10s or 500ms") from None


def _size(env: Mapping[str, str], name: str, default: int) -> int:
    """`1048576`, `512KB`, `256MB`, `1GiB` (binary multiples all)."""
    text = _get(env, name)
    if not text:
        return default
    match = _SIZE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise _bad(name, text, "a size such as 256MB")
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _UNITS[unit]


def _bad(name: str, text: str, expected: str) -> InvalidArgument:
    return InvalidArgument(f"{PREFIX}{name} must be {expected}, got {text!r}", field=PREFIX + name)
