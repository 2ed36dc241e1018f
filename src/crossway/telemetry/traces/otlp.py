"""OTLP/HTTP traces: `ExportTraceServiceRequest` (JSON or protobuf) → Zipkin-shaped spans.

Theory of operation
- OTLP nests spans as resourceSpans[] → scopeSpans[] → spans[]. Each span is
  flattened into one `Span` (model.py) the way OpenTelemetry's own Zipkin
  exporter maps them, so a span looks the same whichever exporter sent it:
  * `localEndpoint.serviceName` ← the resource's `service.name`
    (`unknown_service` without one);
  * kind SERVER/CLIENT/PRODUCER/CONSUMER ← the same; INTERNAL → no kind;
  * timestamps: nanoseconds → microseconds (rounded); duration at least 1 µs;
  * tags ← resource attributes, then the span's own attributes (which win),
    every value flattened to a string (arrays and maps as compact JSON);
    `otel.scope.name`/`otel.scope.version` from the instrumentation scope;
  * status ERROR → tags `otel.status_code=ERROR` and `error=<message>`; OK →
    `otel.status_code=OK`;
  * events → annotations: the event name, or `{"name": {attributes}}` as JSON
    when it has attributes;
  * remoteEndpoint ← `peer.service` (or the next attribute in the
    specification's precedence list) for CLIENT and PRODUCER spans.
- JSON follows the OTLP spec's JSON mapping: ids are hex strings. The plain
  protobuf JSON mapping encodes bytes in base64, so both are accepted (the
  lengths never collide: 32 hex or 24 base64 characters for a trace id, 16 or
  12 for a span id). 64-bit integers may be numbers or decimal strings and
  enums numbers or names. Unknown fields are ignored, as the spec requires.
- Protobuf (`application/x-protobuf`) needs the `opentelemetry-proto` package
  (see _otlp_proto.py); it is decoded into the same intermediate values.
- `encode_json(spans)` goes the other way, for forwarding to an OTLP endpoint.

Invariant: as in zipkin.py, a request is converted completely or rejected
with `SpanFormatError`; no span of a bad request is returned.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from crossway.telemetry.traces.model import ERROR_TAG, Annotation, Endpoint, Kind, Span
from crossway.telemetry.traces.zipkin import SpanFormatError, normalize_span

JSON_CONTENT_TYPE = "application/json"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
UNKNOWN_SERVICE = "unknown_service"

KIND_NAMES: dict[int, Kind] = {2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
KIND_NUMBERS: dict[str, int] = {name: number for number, name in KIND_NAMES.items()}
STATUS_OK, STATUS_ERROR = 1, 2
STATUS_TAG = "otel.status_code"
SCOPE_NAME_TAG, SCOPE_VERSION_TAG = "otel.scope.name", "otel.scope.version"
# OpenTelemetry's Zipkin mapping: where a CLIENT/PRODUCER span's remote
# service name comes from, most specific first.
REMOTE_SERVICE_KEYS = (
    "peer.service",
    "server.address",
    "net.peer.name",
    "network.peer.address",
    "net.sock.peer.name",
    "net.sock.peer.addr",
    "peer.hostname",
    "peer.address",
    "db.name",
)
REMOTE_PORT_KEYS = ("server.port", "net.peer.port", "network.peer.port")


# The JSON request, field names as in the .proto (msgspec maps them to camelCase).


class AnyValue(msgspec.Struct, rename="camel", gc=False):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | str | None = None
    double_value: float | str | None = None
    array_value: ArrayValue | None = None
    kvlist_value: KeyValueList | None = None
    bytes_value: str | None = None


class ArrayValue(msgspec.Struct, gc=False):
    values: list[AnyValue] = msgspec.field(default_factory=list)


class KeyValue(msgspec.Struct, gc=False):
    key: str
    value: AnyValue | None = None


class KeyValueList(msgspec.Struct, gc=False):
    values: list[KeyValue] = msgspec.field(default_factory=list)


class Status(msgspec.Struct, gc=False):
    code: int | str = 0
    message: str = ""


class Event(msgspec.Struct, rename="camel", gc=False):
    time_unix_nano: int | str = 0
    name: str = ""
    attributes: list[KeyValue] = msgspec.field(default_factory=list)


class OtlpSpan(msgspec.Struct, rename="camel", gc=False):
    trace_id: str
    span_id: str
    parent_span_id: str = ""
    name: str = ""
    kind: int | str = 0
    start_time_unix_nano: int | str = 0
    end_time_unix_nano: int | str = 0
    attributes: list[KeyValue] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)
    status: Status | None = None


class Scope(msgspec.Struct, gc=False):
    name: str = ""
    version: str = ""


class ScopeSpans(msgspec.Struct, rename="camel", gc=False):
    scope: Scope | None = None
    spans: list[OtlpSpan] = msgspec.field(default_factory=list)


class Resource(msgspec.Struct, gc=False):
    attributes: list[KeyValue] = msgspec.field(default_factory=list)


class ResourceSpans(msgspec.Struct, rename="camel", gc=False):
    resource: Resource | None = None
    scope_spans: list[ScopeSpans] = msgspec.field(default_factory=list)


class ExportRequest(msgspec.Struct, rename="camel", gc=False):
    resource_spans: list[ResourceSpans] = msgspec.field(default_factory=list)


_decoder = msgspec.json.Decoder(ExportRequest)


# The format-neutral values both decoders produce.


@dataclass(slots=True)
class RawEvent:
    time_ns: int
    name: str
    attributes: dict[str, str]


@dataclass(slots=True, kw_only=True)
class RawSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, str]
    events: list[RawEvent] = field(default_factory=list)
    status_code: int = 0
    status_message: str = ""


def decode_json(body: bytes) -> list[Span]:
    """The spans of an OTLP/HTTP JSON `ExportTraceServiceRequest`.

    Raises `SpanFormatError` (400) naming the offending field; nothing is
    returned for a request with any bad span.
    """
    if not body.strip():
        raise SpanFormatError("the body is empty; expected an OTLP JSON object", field="$")
    try:
        request = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise SpanFormatError(f"not an OTLP trace request: {exc}", field="$") from None
    except msgspec.DecodeError as exc:
        raise SpanFormatError(f"the body is not valid JSON: {exc}", field="$") from None
    spans: list[Span] = []
    for r, resource_spans in enumerate(request.resource_spans):
        resource = resource_spans.resource
        resource_tags = flatten_attributes(resource.attributes if resource else [])
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope_tags = _scope_tags(scope_spans.scope)
            for i, otlp_span in enumerate(scope_spans.spans):
                where = f"$.resourceSpans[{r}].scopeSpans[{s}].spans[{i}]"
                raw = _raw_from_json(otlp_span, where)
                spans.append(to_span(raw, resource_tags, scope_tags, where))
    return spans


def _scope_tags(scope: Scope | None) -> dict[str, str]:
    if scope is None or not scope.name:
        return {}
    tags = {SCOPE_NAME_TAG: scope.name}
    if scope.version:
        tags[SCOPE_VERSION_TAG] = scope.version
    return tags


def _raw_from_json(span: OtlpSpan, where: str) -> RawSpan:
    status = span.status or Status()
    return RawSpan(
        trace_id=json_id(span.trace_id, 16, f"{where}.traceId"),
        span_id=json_id(span.span_id, 8, f"{where}.spanId"),
        parent_id=json_id(span.parent_span_id, 8, f"{where}.parentSpanId") or None,
        name=span.name,
        kind=_enum(span.kind, "SPAN_KIND_", KIND_NUMBERS | {"INTERNAL": 1}, f"{where}.kind"),
        start_ns=_int64(span.start_time_unix_nano, f"{where}.startTimeUnixNano"),
        end_ns=_int64(span.end_time_unix_nano, f"{where}.endTimeUnixNano"),
        attributes=flatten_attributes(span.attributes),
        events=[_raw_event(event, f"{where}.events[{n}]") for n, event in enumerate(span.events)],
        status_code=_enum(status.code, "STATUS_CODE_", {"OK": 1, "ERROR": 2}, f"{where}.status"),
        status_message=status.message,
    )


def _raw_event(event: Event, where: str) -> RawEvent:
    time_ns = _int64(event.time_unix_nano, f"{where}.timeUnixNano")
    return RawEvent(time_ns, event.name, flatten_attributes(event.attributes))


def json_id(text: str, size: int, where: str) -> str:
    """A hex id from its OTLP JSON (hex) or protobuf JSON (base64) spelling;
    "" for an empty one. `size` is the id's length in bytes."""
    if not text:
        return ""
    if len(text) == 2 * size:
        try:
            bytes.fromhex(text)
        except ValueError:
            pass
        else:
            return text.lower()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise SpanFormatError(
            f"expected {2 * size} hex characters (or {size} bytes in base64), got {text!r}",
            field=where,
        )
    return raw.hex()


def _int64(value: int | str, where: str) -> int:
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    raise SpanFormatError(f"expected an integer, got {value!r}", field=where)


def _enum(value: int | str, prefix: str, names: Mapping[str, int], where: str) -> int:
    if isinstance(value, int):
        return value
    found = names.get(value.removeprefix(prefix))
    if found is None and value.removeprefix(prefix) not in ("UNSPECIFIED", "UNSET"):
        raise SpanFormatError(f"unknown value {value!r}", field=where)
    return found or 0


def flatten_attributes(attributes: Iterable[KeyValue]) -> dict[str, str]:
    """OTLP attributes as Zipkin tags: every value a string."""
    return {kv.key: _flatten(kv.value) for kv in attributes if kv.key}


def _flatten(value: AnyValue | None) -> str:
    scalar = _scalar(value)
    return scalar if isinstance(scalar, str) else json.dumps(scalar, separators=(",", ":"))


JsonValue = str | bool | int | float | list["JsonValue"] | dict[str, "JsonValue"] | None


def _scalar(value: AnyValue | None) -> JsonValue:
    """The value a tag shows: strings as they are, the rest as JSON would."""
    if value is None:
        return ""
    if value.string_value is not None:
        return value.string_value
    if value.bool_value is not None:
        return "true" if value.bool_value else "false"
    if value.int_value is not None:
        return str(value.int_value)
    if value.double_value is not None:
        return str(value.double_value)
    if value.array_value is not None:
        return [_scalar(item) for item in value.array_value.values]
    if value.kvlist_value is not None:
        return {kv.key: _scalar(kv.value) for kv in value.kvlist_value.values}
    return value.bytes_value or ""


def to_span(
    raw: RawSpan, resource_tags: Mapping[str, str], scope_tags: Mapping[str, str], where: str
) -> Span:
    """One OTLP span as a normalised `Span` (see the module header for the mapping).

    Raises `SpanFormatError` for ids that Zipkin cannot carry (all zeros).
    """
    tags = {**resource_tags, **raw.attributes, **scope_tags}
    _add_status(tags, raw.status_code, raw.status_message)
    kind = KIND_NAMES.get(raw.kind)
    start_us = (raw.start_ns + 500) // 1000
    span = Span(
        trace_id=raw.trace_id,
        id=raw.span_id,
        parent_id=raw.parent_id,
        name=raw.name or None,
        kind=kind,
        timestamp=start_us or None,
        duration=_duration_us(raw.start_ns, raw.end_ns),
        local_endpoint=Endpoint(service_name=resource_tags.get("service.name", UNKNOWN_SERVICE)),
        remote_endpoint=_remote(kind, raw.attributes),
        annotations=[_annotation(event) for event in raw.events],
        tags=tags,
    )
    if not raw.trace_id:
        raise SpanFormatError("a span needs a traceId", field=f"{where}.traceId")
    if not raw.span_id:
        raise SpanFormatError("a span needs a spanId", field=f"{where}.spanId")
    normalize_span(span, where)
    return span


def _add_status(tags: dict[str, str], code: int, message: str) -> None:
    if code == STATUS_ERROR:
        tags[STATUS_TAG] = "ERROR"
        tags[ERROR_TAG] = message
    elif code == STATUS_OK:
        tags[STATUS_TAG] = "OK"


def _duration_us(start_ns: int, end_ns: int) -> int | None:
    if not start_ns or end_ns < start_ns:
        return None
    return max(1, (end_ns - start_ns + 500) // 1000)


def _annotation(event: RawEvent) -> Annotation:
    value = event.name
    if event.attributes:
        value = json.dumps({event.name: event.attributes}, sort_keys=True, separators=(",", ":"))
    return Annotation(timestamp=(event.time_ns + 500) // 1000, value=value)


def _remote(kind: str | None, attributes: Mapping[str, str]) -> Endpoint | None:
    if kind not in ("CLIENT", "PRODUCER"):
        return None
    service = next((attributes[k] for k in REMOTE_SERVICE_KEYS if attributes.get(k)), None)
    port_text = next((attributes[k] for k in REMOTE_PORT_KEYS if attributes.get(k)), "")
    port = int(port_text) if port_text.isdigit() and int(port_text) <= 65535 else None
    if service is None and port is None:
        return None
    return Endpoint(service_name=service, port=port)


def encode_json(spans: Sequence[Span]) -> bytes:
    """`spans` as an OTLP/HTTP JSON export request, one resource per service.

    The inverse of `decode_json` for what Zipkin can carry: tags become string
    attributes (the status tags become the span status), annotations become
    events, a 64-bit trace id is left-padded to OTLP's 128 bits.
    """
    by_service: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        by_service.setdefault(span.service or UNKNOWN_SERVICE, []).append(_otlp_span(span))
    resource_spans = [
        {
            "resource": {"attributes": [_string_attribute("service.name", service)]},
            "scopeSpans": [{"scope": {"name": "crossway"}, "spans": otlp_spans}],
        }
        for service, otlp_spans in by_service.items()
    ]
    return msgspec.json.encode({"resourceSpans": resource_spans})


def _otlp_span(span: Span) -> dict[str, object]:
    start_ns = (span.timestamp or 0) * 1000
    encoded: dict[str, object] = {
        "traceId": span.trace_id.rjust(32, "0"),
        "spanId": span.id,
        "name": span.name or "",
        "kind": KIND_NUMBERS.get(span.kind or "", 1),
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(start_ns + (span.duration or 0) * 1000),
        "attributes": [
            _string_attribute(key, value)
            for key, value in span.tags.items()
            if key not in (ERROR_TAG, STATUS_TAG)
        ],
        "events": [
            {"timeUnixNano": str(a.timestamp * 1000), "name": a.value} for a in span.annotations
        ],
    }
    if span.parent_id:
        encoded["parentSpanId"] = span.parent_id
    if span.is_error:
        encoded["status"] = {"code": STATUS_ERROR, "message": span.tags[ERROR_TAG]}
    elif span.tags.get(STATUS_TAG) == "OK":
        encoded["status"] = {"code": STATUS_OK}
    return encoded


def _string_attribute(key: str, value: str) -> dict[str, object]:
    return {"key": key, "value": {"stringValue": value}}
