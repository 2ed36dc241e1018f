"""The span model every trace path shares: Zipkin v2's, field for field.

Theory of operation
- Crossway stores, queries and forwards spans in the Zipkin v2 shape
  (`traceId`, `id`, `parentId`, `name`, `kind`, `timestamp` and `duration` in
  microseconds, `localEndpoint`, `remoteEndpoint`, `annotations`, `tags`).
  Zipkin's query API answers in exactly this shape, so a stored span is
  encoded back to JSON with no translation; OTLP input is converted into it
  once, on ingest (see otlp.py).
- Identifiers are normalised the way Zipkin's own span builder does it, so a
  trace looked up by any spelling of its id is found: lower-case hex, a trace
  id left-padded with zeros to 16 or 32 characters, a span id to 16. An
  all-zero parent id means "no parent".
- Service and span names are lower-cased on ingest, as Zipkin does, so that
  `Checkout` and `checkout` are one service in the indexes and in queries.

Invariants of a `Span` that left a codec (zipkin.py, otlp.py):
- `trace_id` is 16 or 32 lower-hex characters, `id` 16, `parent_id` 16 or None,
  none of them all zeros;
- `timestamp` and `duration` are positive or None; tag keys and values are
  strings.

Spans are msgspec Structs without garbage-collector tracking (`gc=False`): they
hold only strings, numbers and containers of those, never a cycle, and a store
of 200,000 of them should cost the collector nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Kind = Literal["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]
KINDS: frozenset[str] = frozenset({"CLIENT", "SERVER", "PRODUCER", "CONSUMER"})
Micros = Annotated[int, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]

ERROR_TAG = "error"

_HEX = frozenset("0123456789abcdef")
# What one span costs beyond its strings: the Struct, two endpoints, a dict and
# a list, measured roughly with sys.getsizeof on CPython 3.11.
_SPAN_OVERHEAD = 480
_ENTRY_OVERHEAD = 120


class Endpoint(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    service_name: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    port: Port | None = None


class Annotation(msgspec.Struct, gc=False):
    timestamp: Micros
    value: str


class Span(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    trace_id: str
    id: str
    parent_id: str | None = None
    name: str | None = None
    kind: Kind | None = None
    timestamp: Micros | None = None
    duration: Micros | None = None
    debug: bool | None = None
    shared: bool | None = None
    local_endpoint: Endpoint | None = None
    remote_endpoint: Endpoint | None = None
    annotations: list[Annotation] = msgspec.field(default_factory=list)
    tags: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def service(self) -> str | None:
        """The local service name, which is what Zipkin indexes a span by."""
        endpoint = self.local_endpoint
        return endpoint.service_name if endpoint is not None else None

    @property
    def remote_service(self) -> str | None:
        endpoint = self.remote_endpoint
        return endpoint.service_name if endpoint is not None else None

    @property
    def is_error(self) -> bool:
        """Zipkin's convention: a span failed when it carries an `error` tag."""
        return ERROR_TAG in self.tags

    @property
    def end(self) -> int | None:
        """Microseconds since the epoch when the span finished, if known."""
        if self.timestamp is None:
            return None
        return self.timestamp + (self.duration or 0)


def is_hex(text: str) -> bool:
    return bool(text) and set(text.lower()) <= _HEX


def normalize_trace_id(text: str) -> str:
    """`text` as Zipkin spells a trace id; `ValueError` when it cannot be one."""
    value = text.lower()
    if not 0 < len(value) <= 32 or not set(value) <= _HEX:
        raise ValueError(f"a trace id is 1 to 32 hex characters, got {text!r}")
    if value.count("0") == len(value):
        raise ValueError("a trace id cannot be all zeros")
    return value.rjust(16 if len(value) <= 16 else 32, "0")


def normalize_span_id(text: str) -> str:
    """`text` as a 16-character span id; `ValueError` when it cannot be one."""
    value = text.lower()
    if not 0 < len(value) <= 16 or not set(value) <= _HEX:
        raise ValueError(f"a span id is 1 to 16 hex characters, got {text!r}")
    if value.count("0") == len(value):
        raise ValueError("a span id cannot be all zeros")
    return value.rjust(16, "0")


def normalize_parent_id(text: str | None) -> str | None:
    """A parent id, or None for a missing or all-zero one (both mean "root")."""
    if text is None or (text and text.count("0") == len(text)):
        return None
    return normalize_span_id(text)


def estimated_bytes(span: Span) -> int:
    """A cheap estimate of the memory `span` holds, for the store's budget.

    Counts the strings a client controls (name, tags, annotations) and a fixed
    overhead for the rest; never less than the overhead, so even empty spans
    use up budget.
    """
    size = _SPAN_OVERHEAD + len(span.name or "")
    for key, value in span.tags.items():
        size += _ENTRY_OVERHEAD + len(key) + len(value)
    for annotation in span.annotations:
        size += _ENTRY_OVERHEAD + len(annotation.value)
    return size
