"""OTLP/HTTP protobuf (`application/x-protobuf`), when `opentelemetry-proto` is installed.

The OpenTelemetry SDKs' OTLP/HTTP exporters send protobuf by default, so this
is the common case in practice. The generated message classes are imported
lazily (the package is optional) and handled as `Any`: each message is read
field by field into the same `RawSpan` values the JSON decoder produces, and
`otlp.to_span` does the rest, so both encodings map to identical spans.

Invariant: as for JSON, a request converts completely or raises
`SpanFormatError`; a body that is not a valid `ExportTraceServiceRequest`
never yields spans.
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
from typing import Any

from crossway.telemetry.traces.model import Span
from crossway.telemetry.traces.otlp import (
    SCOPE_NAME_TAG,
    SCOPE_VERSION_TAG,
    RawEvent,
    RawSpan,
    to_span,
)
from crossway.telemetry.traces.zipkin import SpanFormatError

_SERVICE_MODULE = "opentelemetry.proto.collector.trace.v1.trace_service_pb2"


@functools.cache
def _messages() -> Any:
    return importlib.import_module(_SERVICE_MODULE)


def available() -> bool:
    """True when protobuf requests can be decoded here."""
    try:
        _messages()
    except ImportError:
        return False
    return True


def decode(body: bytes) -> list[Span]:
    """The spans of a protobuf `ExportTraceServiceRequest`.

    Raises `SpanFormatError` (400) for a body that does not parse, and
    `ImportError` when `opentelemetry-proto` is not installed (check
    `available()` first).
    """
    request = _messages().ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception:  # google.protobuf.message.DecodeError, and nothing else is raised
        raise SpanFormatError("the body is not an OTLP protobuf trace request", field="$") from None
    spans: list[Span] = []
    for r, resource_spans in enumerate(request.resource_spans):
        resource_tags = flatten(resource_spans.resource.attributes)
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope_tags = _scope_tags(scope_spans.scope)
            for i, pb_span in enumerate(scope_spans.spans):
                where = f"$.resourceSpans[{r}].scopeSpans[{s}].spans[{i}]"
                spans.append(to_span(_raw(pb_span, where), resource_tags, scope_tags, where))
    return spans


def response_body() -> bytes:
    """An empty `ExportTraceServiceResponse`: everything was accepted."""
    body: bytes = _messages().ExportTraceServiceResponse().SerializeToString()
    return body


def _scope_tags(scope: Any) -> dict[str, str]:
    if not scope.name:
        return {}
    tags = {SCOPE_NAME_TAG: str(scope.name)}
    if scope.version:
        tags[SCOPE_VERSION_TAG] = str(scope.version)
    return tags


def _raw(span: Any, where: str) -> RawSpan:
    return RawSpan(
        trace_id=_id(span.trace_id, 16, f"{where}.traceId"),
        span_id=_id(span.span_id, 8, f"{where}.spanId"),
        parent_id=_id(span.parent_span_id, 8, f"{where}.parentSpanId") or None,
        name=str(span.name),
        kind=int(span.kind),
        start_ns=int(span.start_time_unix_nano),
        end_ns=int(span.end_time_unix_nano),
        attributes=flatten(span.attributes),
        events=[
            RawEvent(int(e.time_unix_nano), str(e.name), flatten(e.attributes)) for e in span.events
        ],
        status_code=int(span.status.code),
        status_message=str(span.status.message),
    )


def _id(raw: bytes, size: int, where: str) -> str:
    if raw and len(raw) != size:
        raise SpanFormatError(f"expected {size} bytes, got {len(raw)}", field=where)
    return raw.hex()


def flatten(attributes: Any) -> dict[str, str]:
    return {kv.key: _text(kv.value) for kv in attributes if kv.key}


def _text(value: Any) -> str:
    scalar = _scalar(value)
    return scalar if isinstance(scalar, str) else json.dumps(scalar, separators=(",", ":"))


def _scalar(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return ""
    if which == "string_value":
        return str(value.string_value)
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which in ("int_value", "double_value"):
        return str(getattr(value, which))
    if which == "array_value":
        return [_scalar(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _scalar(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return ""
