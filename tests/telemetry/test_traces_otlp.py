"""OTLP → Zipkin-shaped spans: the JSON mapping, protobuf giving the same spans,
the encoder for forwarding, and fuzzing."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.telemetry.traces import _otlp_proto, otlp
from crossway.telemetry.traces.model import Span
from crossway.telemetry.traces.zipkin import SpanFormatError

TRACE = "5b8efff798038103d269b633813fc60c"
START = 1_700_000_000_000_000_000


def attr(key: str, **value: Any) -> dict[str, Any]:
    return {"key": key, "value": value}


def request(*spans: dict[str, Any], resource: list[dict[str, Any]] | None = None) -> bytes:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": resource or [attr("service.name", stringValue="Shop")]},
                "scopeSpans": [{"scope": {"name": "lib", "version": "1.2"}, "spans": list(spans)}],
                "schemaUrl": "ignored",
            }
        ]
    }
    return json.dumps(body).encode()


def otlp_span(**fields: Any) -> dict[str, Any]:
    span = {
        "traceId": TRACE,
        "spanId": "eee19b7ec3c1b174",
        "name": "checkout",
        "kind": 2,
        "startTimeUnixNano": str(START),
        "endTimeUnixNano": str(START + 1_500_000),
    }
    span.update(fields)
    return span


def test_the_basic_mapping() -> None:
    [span] = otlp.decode_json(request(otlp_span()))
    assert span.trace_id == TRACE
    assert span.id == "eee19b7ec3c1b174"
    assert span.parent_id is None
    assert span.kind == "SERVER"
    assert span.timestamp == START // 1000
    assert span.duration == 1500
    assert span.service == "shop"
    assert span.tags["otel.scope.name"] == "lib"
    assert span.tags["otel.scope.version"] == "1.2"
    assert span.tags["service.name"] == "Shop"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (0, None),
        (1, None),
        (2, "SERVER"),
        (3, "CLIENT"),
        (4, "PRODUCER"),
        (5, "CONSUMER"),
        ("SPAN_KIND_CONSUMER", "CONSUMER"),
        ("SPAN_KIND_INTERNAL", None),
    ],
)
def test_kinds(kind: int | str, expected: str | None) -> None:
    [span] = otlp.decode_json(request(otlp_span(kind=kind)))
    assert span.kind == expected


def test_status_becomes_the_error_tag() -> None:
    [failed] = otlp.decode_json(request(otlp_span(status={"code": 2, "message": "boom"})))
    assert failed.tags["error"] == "boom"
    assert failed.tags["otel.status_code"] == "ERROR"
    assert failed.is_error
    [ok] = otlp.decode_json(request(otlp_span(status={"code": "STATUS_CODE_OK"})))
    assert ok.tags["otel.status_code"] == "OK"
    assert not ok.is_error
    [unset] = otlp.decode_json(request(otlp_span(status={})))
    assert "otel.status_code" not in unset.tags


def test_attribute_values_flatten_to_strings() -> None:
    attributes = [
        attr("s", stringValue="text"),
        attr("b", boolValue=True),
        attr("i", intValue="42"),
        attr("n", intValue=7),
        attr("d", doubleValue=1.5),
        attr("a", arrayValue={"values": [{"stringValue": "x"}, {"intValue": "1"}]}),
        attr("m", kvlistValue={"values": [attr("k", boolValue=False)]}),
        attr("bytes", bytesValue="AQI="),
        {"key": "empty"},
    ]
    [span] = otlp.decode_json(request(otlp_span(attributes=attributes)))
    tags = span.tags
    assert (tags["s"], tags["b"], tags["i"], tags["n"], tags["d"]) == (
        "text",
        "true",
        "42",
        "7",
        "1.5",
    )
    assert json.loads(tags["a"]) == ["x", "1"]
    assert json.loads(tags["m"]) == {"k": "false"}
    assert tags["bytes"] == "AQI="
    assert tags["empty"] == ""


def test_span_attributes_win_over_resource_attributes() -> None:
    resource = [attr("service.name", stringValue="shop"), attr("zone", stringValue="a")]
    [span] = otlp.decode_json(
        request(otlp_span(attributes=[attr("zone", stringValue="b")]), resource=resource)
    )
    assert span.tags["zone"] == "b"


def test_missing_service_name() -> None:
    [span] = otlp.decode_json(request(otlp_span(), resource=[attr("host", stringValue="h")]))
    assert span.service == "unknown_service"


def test_events_become_annotations() -> None:
    events = [
        {"timeUnixNano": str(START + 2000), "name": "retry"},
        {"timeUnixNano": START + 4000, "name": "exception", "attributes": [attr("x", intValue=1)]},
    ]
    [span] = otlp.decode_json(request(otlp_span(events=events)))
    assert [(a.timestamp, a.value) for a in span.annotations] == [
        (START // 1000 + 2, "retry"),
        (START // 1000 + 4, '{"exception":{"x":"1"}}'),
    ]


def test_remote_endpoint_of_client_spans() -> None:
    attributes = [attr("server.address", stringValue="bank"), attr("server.port", intValue=443)]
    [client] = otlp.decode_json(request(otlp_span(kind=3, attributes=attributes)))
    assert client.remote_service == "bank"
    assert client.remote_endpoint is not None
    assert client.remote_endpoint.port == 443
    [server] = otlp.decode_json(request(otlp_span(kind=2, attributes=attributes)))
    assert server.remote_endpoint is None


def test_base64_ids_from_the_protobuf_json_mapping() -> None:
    [span] = otlp.decode_json(
        request(otlp_span(traceId="W47/95gDgQPSabYzgT/GDA==", spanId="7uGbfsPBsXQ=",
                          parentSpanId="7u1bfz4cc2Q="))
    )  # fmt: skip
    assert span.trace_id == TRACE
    assert span.id == "eee19b7ec3c1b174"
    assert span.parent_id == "eeed5b7f3e1c7364"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"traceId": "abc"}, "traceId"),
        ({"traceId": "0" * 32}, "traceId"),
        ({"spanId": ""}, "spanId"),
        ({"parentSpanId": "zz"}, "parentSpanId"),
        ({"startTimeUnixNano": "soon"}, "startTimeUnixNano"),
        ({"kind": "SPAN_KIND_WEIRD"}, "kind"),
    ],
)
def test_bad_spans_name_their_field(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(SpanFormatError) as caught:
        otlp.decode_json(request(otlp_span(), otlp_span(**fields)))
    assert caught.value.details["field"] == f"$.resourceSpans[0].scopeSpans[0].spans[1].{where}"


def test_unknown_fields_are_ignored_and_empty_requests_are_fine() -> None:
    assert otlp.decode_json(b'{"resourceSpans": [], "future": 1}') == []
    assert otlp.decode_json(b"{}") == []
    with pytest.raises(SpanFormatError):
        otlp.decode_json(b"")
    with pytest.raises(SpanFormatError):
        otlp.decode_json(b'{"resourceSpans": 3}')


def test_encode_json_round_trips_what_zipkin_can_carry() -> None:
    original = otlp.decode_json(
        request(
            otlp_span(
                status={"code": 2, "message": "boom"}, attributes=[attr("k", stringValue="v")]
            ),
            otlp_span(spanId="00000000000000aa", parentSpanId="eee19b7ec3c1b174", kind=3,
                      events=[{"timeUnixNano": START, "name": "sent"}]),
        )
    )  # fmt: skip
    again = otlp.decode_json(otlp.encode_json(original))
    for before, after in zip(original, again, strict=True):
        assert (after.trace_id, after.id, after.parent_id) == (
            before.trace_id,
            before.id,
            before.parent_id,
        )
        assert (after.name, after.kind, after.timestamp, after.duration) == (
            before.name,
            before.kind,
            before.timestamp,
            before.duration,
        )
        assert after.is_error == before.is_error
        assert after.service == before.service
        assert after.tags.get("k") == before.tags.get("k")
        assert [a.value for a in after.annotations] == [a.value for a in before.annotations]


def test_encode_json_pads_64_bit_trace_ids() -> None:
    span = Span(trace_id="00000000000000ab", id="00000000000000cd")
    body = json.loads(otlp.encode_json([span]))
    assert body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == "0" * 30 + "ab"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_spans_or_a_400(body: bytes) -> None:
    try:
        result = otlp.decode_json(body)
    except SpanFormatError:
        return
    assert isinstance(result, list)


# Protobuf: the same request as protobuf gives the same spans.

needs_proto = pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry") is None or not _otlp_proto.available(),
    reason="opentelemetry-proto is not installed",
)


@needs_proto
def test_protobuf_and_json_give_the_same_spans() -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    body = request(
        otlp_span(
            status={"code": 2, "message": "boom"},
            attributes=[
                attr("i", intValue="42"),
                attr("a", arrayValue={"values": [{"stringValue": "x"}, {"boolValue": True}]}),
                attr("m", kvlistValue={"values": [attr("k", doubleValue=2.5)]}),
            ],
            events=[
                {"timeUnixNano": str(START), "name": "e", "attributes": [attr("x", boolValue=True)]}
            ],
        ),
        otlp_span(spanId="00000000000000aa", parentSpanId="eee19b7ec3c1b174", kind=3),
    )
    # The protobuf JSON mapping wants base64 ids: convert the hex ones.
    parsed = json.loads(body)
    for span in parsed["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                import base64

                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    message = json_format.ParseDict(parsed, trace_service_pb2.ExportTraceServiceRequest())
    from_proto = _otlp_proto.decode(message.SerializeToString())
    assert from_proto == otlp.decode_json(body)


@needs_proto
def test_bad_protobuf_is_a_400() -> None:
    with pytest.raises(SpanFormatError):
        _otlp_proto.decode(b"\xff\xff\xff\xff")
    assert _otlp_proto.decode(b"") == []
    assert _otlp_proto.response_body() == b""
