"""Zipkin v2 JSON: a list of spans in, a list of spans out.

Theory of operation
- `decode_spans(body)` parses a whole `POST /api/v2/spans` body in one pass:
  msgspec checks the types (in C), then each span is normalised (ids, names;
  see model.py). Unknown fields are ignored, as Zipkin's own parser ignores
  them, so newer clients keep working; a field of the wrong type, a missing
  `traceId`/`id`, a bad id, a negative timestamp or an unknown `kind` is an
  error.
- `encode_spans(spans)` and `encode_traces(traces)` write the query API's
  answers; a stored span is already in the wire shape, so encoding is one
  msgspec call.

Invariant: decoding is all or nothing. Either every span of the body is
returned, normalised, or `SpanFormatError` is raised and nothing is; callers
store only what a successful decode returned, so a half-bad batch is never
half stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from crossway.core.errors import InvalidArgument
from crossway.telemetry.traces.model import (
    Endpoint,
    Span,
    normalize_parent_id,
    normalize_span_id,
    normalize_trace_id,
)

CONTENT_TYPE = "application/json"

_decoder = msgspec.json.Decoder(list[Span])
_encoder = msgspec.json.Encoder()
_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")


class SpanFormatError(InvalidArgument):
    """A span batch that cannot be accepted; `field` names the JSON path."""

    code = "invalid_spans"


def decode_spans(body: bytes) -> list[Span]:
    """Every span of a Zipkin v2 JSON array, normalised.

    Raises `SpanFormatError` (400) naming the first offending field; nothing
    is returned in that case (see the module's invariant).
    """
    if not body.strip():
        raise SpanFormatError("the body is empty; expected a JSON array of spans", field="$")
    try:
        spans = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _format_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise SpanFormatError(f"the body is not valid JSON: {exc}", field="$") from None
    for index, span in enumerate(spans):
        normalize_span(span, f"$[{index}]")
    return spans


def normalize_span(span: Span, where: str = "$") -> None:
    """Normalise `span` in place (ids, lower-case names, zero times dropped).

    Raises `SpanFormatError` naming `where` plus the field when an id is bad.
    """
    try:
        span.trace_id = normalize_trace_id(span.trace_id)
    except ValueError as exc:
        raise SpanFormatError(str(exc), field=f"{where}.traceId") from None
    try:
        span.id = normalize_span_id(span.id)
    except ValueError as exc:
        raise SpanFormatError(str(exc), field=f"{where}.id") from None
    try:
        span.parent_id = normalize_parent_id(span.parent_id)
    except ValueError as exc:
        raise SpanFormatError(str(exc), field=f"{where}.parentId") from None
    span.name = span.name.lower() if span.name else None
    span.timestamp = span.timestamp or None
    span.duration = span.duration or None
    span.local_endpoint = _endpoint(span.local_endpoint)
    span.remote_endpoint = _endpoint(span.remote_endpoint)


def _endpoint(endpoint: Endpoint | None) -> Endpoint | None:
    """Lower-case the service name; drop an endpoint that says nothing."""
    if endpoint is None:
        return None
    endpoint.service_name = endpoint.service_name.lower() if endpoint.service_name else None
    endpoint.ipv4 = endpoint.ipv4 or None
    endpoint.ipv6 = endpoint.ipv6 or None
    endpoint.port = endpoint.port or None
    if endpoint == _EMPTY_ENDPOINT:
        return None
    return endpoint


_EMPTY_ENDPOINT = Endpoint()


def encode_spans(spans: Sequence[Span]) -> bytes:
    """One trace (or any list of spans) as a Zipkin v2 JSON array."""
    return _encoder.encode(spans)


def encode_traces(traces: Sequence[Sequence[Span]]) -> bytes:
    """A list of traces, each a list of spans, as `GET /api/v2/traces` answers."""
    return _encoder.encode(traces)


def _format_error(message: str) -> SpanFormatError:
    at = _AT_PATH.search(message)
    field = at.group(1) if at else "$"
    text = message[: at.start()] if at else message
    return SpanFormatError(f"{text} at {field}", field=field)
