"""Durations as people write them: "10s", "500ms", "1m30s", "2h", "1.5s".

The same grammar as Go's time.ParseDuration (what Consul, etcd and Kubernetes
users type), minus negative values, which no Crossway setting accepts.
"""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in `text`; a bare number is taken as seconds.

    Raises ValueError with a readable message for anything else.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return float(text)
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if value < 0 or value != value or value == float("inf"):
            raise ValueError(f"not a valid duration: {text!r}")
        return value
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 10s, 1m30s)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable form: 0.5 -> "500ms", 90 -> "1m30s"."""
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{rest:g}s" if rest else f"{int(minutes)}m"
    hours, minutes = divmod(minutes, 60)
    out = f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if rest:
        out += f"{rest:g}s"
    return out
