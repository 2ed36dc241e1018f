"""Structured logs: one JSON object per line, through stdlib logging.

Theory of operation
- `configure_logging` installs a single handler on the root logger. Every
  logger in the process (ours, uvicorn's, the store's) propagates to it, so
  every line has the same shape whatever library wrote it.
- A record's `extra={...}` fields become top-level keys of its JSON line;
  `ts`, `level`, `logger` and `msg` are always present, `exc` carries the
  traceback when there is one. Tracebacks go to the log, never to a client.
- `text` format is for people at a terminal: the same fields as `key=value`.
- The handler's `TraceIdFilter` adds `trace_id`/`span_id` to every record
  logged while a trace context is current (for a request that carried a
  `traceparent` or B3 headers, once `TraceLogContext` is in the middleware
  stack; see crossway.telemetry.logging).

Invariant (json format): one record is exactly one line. Newlines inside
messages and tracebacks are escaped by the JSON encoder, so a log shipper can
split on "\\n" safely.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import msgspec

from crossway.telemetry.logging import TraceIdFilter

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# uvicorn attaches an ANSI-coloured copy of each message; it is noise in a log.
_DROPPED = frozenset({"color_message"})
_encoder = msgspec.json.Encoder(enc_hook=repr)


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of one log line, in a stable order."""
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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exc"] = record.exc_text
        return _encoder.encode(fields).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        head = f"{fields.pop('ts')} {fields.pop('level'):<7} {fields.pop('logger')}: "
        head += str(fields.pop("msg"))
        tail = "".join(f" {k}={v}" for k, v in fields.items())
        line = head + tail
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    level: str = "info", fmt: str = "json", *, stream: TextIO | None = None
) -> None:
    """Route every logger in the process to one handler on `stream` (stderr).

    Replaces handlers installed earlier (uvicorn's included), so calling it
    twice is harmless.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(TraceIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def default_log_format(stream: TextIO | None = None) -> str:
    """`text` at an interactive terminal, `json` everywhere else."""
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"
