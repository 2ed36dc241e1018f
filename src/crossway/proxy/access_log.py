# The gateway's access log: one JSON line per logged request.
#
# Theory of operation
# -------------------
# `GatewayTelemetry.finish_request` (proxy/telemetry.py) asks `AccessLog.wants`
# whether a request is logged, and only then builds its line with
# `access_entry` and hands it to `AccessLog.write`: with the log off, or a
# request the sample leaves out, nothing is formatted. Lines go to stdout
# (see docs/gateway.md for the fields) and are flushed once a second by the
# telemetry's flusher task, not per line.
#
# Modes: `off`, `full`, or `sample:R` — every 5xx or unanswered request, and
# a share R of the others.
#
# Invariants
# ----------
# - Writing never raises into the request path: a closed or broken stdout
#   loses lines, not requests.
from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING

import msgspec

from crossway.core.errors import InvalidArgument
from crossway.proxy.headers import Headers
from crossway.proxy.stream import Stream

if TYPE_CHECKING:
    from crossway.proxy.telemetry import RequestTelemetry


@dataclass(frozen=True, slots=True)
class AccessLogMode:
    """`off`, `full` or `sample:R` (0 < R ≤ 1)."""

    rate: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0.0


def parse_access_log(text: str) -> AccessLogMode:
    """`off` | `full` | `sample:0.1`; `InvalidArgument` naming `access_log` otherwise."""
    value = text.strip().lower()
    if value in ("off", "none", ""):
        return AccessLogMode(0.0)
    if value in ("full", "on", "all"):
        return AccessLogMode(1.0)
    kind, _, rate = value.partition(":")
    try:
        share = float(rate)
    except ValueError:
        share = -1.0
    if kind != "sample" or not 0.0 < share <= 1.0:
        raise InvalidArgument(
            f"access_log: {text!r} must be off, full or sample:R with 0 < R <= 1",
            field="access_log",
        )
    return AccessLogMode(share)


class AccessLog:
    """JSON lines, one per logged request, written to a binary stream."""

    def __init__(
        self,
        mode: AccessLogMode,
        *,
        sink: IO[bytes] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.mode = mode
        self.lines = 0
        self._sink = sink if sink is not None else sys.stdout.buffer
        self._rand = rand
        self._encode = msgspec.json.Encoder().encode

    def wants(self, status: int) -> bool:
        rate = self.mode.rate
        return rate >= 1.0 or status >= 500 or status == 0 or self._rand() < rate

    def write(self, entry: dict[str, object]) -> None:
        try:
            self._sink.write(self._encode(entry) + b"\n")
            self.lines += 1
        except (OSError, ValueError):
            pass  # a closed or broken stdout must not fail requests

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._sink.flush()


def access_entry(
    stream: Stream,
    request: RequestTelemetry,
    method: str,
    route: str,
    status: int,
    wall_started: float,
    seconds: float,
    upstream: str | None,
) -> dict[str, object]:
    """The access log line of one request (`wall_started`: epoch seconds;
    `upstream`: the chosen endpoint as `host:port`)."""
    head = stream.head
    when = datetime.fromtimestamp(wall_started, UTC)
    return {
        "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "client": stream.peer.address,
        "method": method,
        "host": head.host.decode("latin-1") if head.host else None,
        "path": head.target.decode("latin-1"),
        "route": route or None,
        "service": request.service or None,
        "upstream": upstream,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "trace_id": request.trace_id or None,
        "span_id": request.span_id or None,
        "user_agent": _header(head.headers, b"user-agent"),
    }


def _header(headers: Headers, name: bytes) -> str | None:
    for field_name, value in headers:
        if field_name == name:
            return value.decode("latin-1")
    return None
