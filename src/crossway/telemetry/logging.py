"""Structured JSON logs that carry the current trace: `trace_id` and `span_id` on every line.

One line in a service:

    crossway.telemetry.logging.install()          # JSON on stderr, level INFO

or, with a handler of your own: `handler.setFormatter(JsonFormatter())` and
`handler.addFilter(TraceIdFilter())`.

Theory of operation
- Where the ids come from, first found wins:
  1. `crossway.telemetry.tracecontext`'s current trace (set by Crossway's SDK
     middleware and client, or by `TraceLogContext` below);
  2. the ids bound by `TraceLogContext` when that module is not installed;
  3. OpenTelemetry's current span, when `opentelemetry-api` is importable, so
     services instrumented with OpenTelemetry get the same correlation.
  Both optional modules are imported lazily, once.
- `TraceIdFilter` stamps `trace_id`/`span_id` on each record *when it is
  logged* (in the caller's context), so the ids are right even when the
  record is formatted later by a queue handler on another thread. A record
  that already carries the fields (`extra={"trace_id": …}`) keeps them.
- `JsonFormatter` writes one JSON object per line: `ts`, `level`, `logger`,
  `msg`, `trace_id`/`span_id` when known, every `extra` field, and `exc` with
  the traceback. Newlines inside values are escaped, so one record is one line.
- `TraceLogContext` is a pure ASGI middleware that makes the trace context
  of an incoming request (W3C `traceparent`, else B3) current while the
  request is served, so every log line written for it carries its ids.

Nothing here raises into the caller: a value that cannot be encoded is
written as its repr, and a failing lookup of the current span just leaves
the ids out.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import msgspec

TRACE_ID, SPAN_ID = "trace_id", "span_id"
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_DROPPED = frozenset({"color_message"})
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_encoder = msgspec.json.Encoder(enc_hook=repr)
_bound: ContextVar[tuple[str, str] | None] = ContextVar("crossway_log_trace", default=None)

Ids = tuple[str, str]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@functools.cache
def _tracecontext() -> Any:
    try:
        return importlib.import_module("crossway.telemetry.tracecontext")
    except ImportError:
        return None


@functools.cache
def _otel_trace() -> Any:
    try:
        return importlib.import_module("opentelemetry.trace")
    except ImportError:
        return None


def current_trace_ids() -> Ids | None:
    """(trace_id, span_id) of the running code, in hex, or None outside a trace."""
    module = _tracecontext()
    if module is not None:
        found = module.current_trace()
        if found is not None:
            return str(found.trace_id), str(found.span_id)
    bound = _bound.get()
    if bound is not None:
        return bound
    return _otel_ids()


def _otel_ids() -> Ids | None:
    otel = _otel_trace()
    if otel is None:
        return None
    try:
        context = otel.get_current_span().get_span_context()
    except Exception:  # a broken tracer must never break logging
        return None
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


class TraceIdFilter(logging.Filter):
    """Adds `trace_id` and `span_id` to records logged inside a trace; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, TRACE_ID):
            ids = current_trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


_FILTER = TraceIdFilter()


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of one JSON line, in a stable order."""
    fields: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and key not in _DROPPED and key not in fields:
            fields[key] = value
    return fields


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module header)."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, TRACE_ID):
            _FILTER.filter(record)  # no filter installed: look up now
        fields = record_fields(record)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return _encoder.encode(fields).decode()


def install(
    level: int | str = "INFO",
    *,
    stream: TextIO | None = None,
    logger: logging.Logger | None = None,
    keep_handlers: bool = False,
) -> logging.Handler:
    """Send `logger`'s records (the root logger's by default, so every
    library's) to `stream` (stderr) as JSON lines with trace ids.

    Replaces the logger's existing handlers unless `keep_handlers`; calling it
    again replaces the handler it installed before. Returns the new handler.
    """
    target = logger if logger is not None else logging.getLogger()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceIdFilter())
    for old in list(target.handlers):
        if not keep_handlers or getattr(old, "_crossway_json", False):
            target.removeHandler(old)
    handler._crossway_json = True  # type: ignore[attr-defined]  # marks ours for a later call
    target.addHandler(handler)
    target.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


@contextlib.contextmanager
def bind_request_trace(headers: MutableMapping[str, str]) -> Iterator[Ids | None]:
    """Make the trace context in `headers` (lower-case names) current for a block.

    Uses `crossway.telemetry.tracecontext` (W3C, then B3) when it is
    installed, else reads `traceparent` alone. Yields the ids, or None (and
    changes nothing) when the headers carry no valid context.
    """
    module = _tracecontext()
    if module is not None:
        found = module.extract(headers)
        if found is None:
            yield None
            return
        with module.use_trace(found):
            yield str(found.trace_id), str(found.span_id)
        return
    match = _TRACEPARENT.fullmatch(headers.get("traceparent", "").strip())
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        yield None
        return
    token = _bound.set((match.group(1), match.group(2)))
    try:
        yield match.group(1), match.group(2)
    finally:
        _bound.reset(token)


_CONTEXT_HEADERS = frozenset(
    {"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}
    | {"x-b3-parentspanid", "x-b3-flags"}
)


class TraceLogContext:
    """Pure ASGI middleware: the request's trace context is current while it is served.

    Place it outermost, so the access log written after the response still
    sees the ids. Requests without a trace context pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _context_headers(scope)
        if not headers:
            await self.app(scope, receive, send)
            return
        with bind_request_trace(headers):
            await self.app(scope, receive, send)


def _context_headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name in _CONTEXT_HEADERS:
            found[name] = raw_value.decode("latin-1")
    return found
