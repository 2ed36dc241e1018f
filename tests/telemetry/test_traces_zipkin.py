"""Zipkin v2 JSON codec: normalisation, strict all-or-nothing decoding, fuzzing."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.telemetry.traces.model import (
    Span,
    estimated_bytes,
    normalize_parent_id,
    normalize_span_id,
    normalize_trace_id,
)
from crossway.telemetry.traces.zipkin import SpanFormatError, decode_spans, encode_spans


def decode(value: Any) -> list[Span]:
    return decode_spans(json.dumps(value).encode())


def test_ids_are_normalised_as_zipkin_does() -> None:
    assert normalize_trace_id("ABC") == "0000000000000abc"
    assert normalize_trace_id("1" * 17) == "0" * 15 + "1" * 17
    assert normalize_span_id("F") == "000000000000000f"
    assert normalize_parent_id("0000000000000000") is None
    assert normalize_parent_id(None) is None
    for bad in ("", "xyz", "0" * 16, "1" * 33):
        with pytest.raises(ValueError, match="trace id"):
            normalize_trace_id(bad)
    with pytest.raises(ValueError, match="span id"):
        normalize_span_id("1" * 17)


def test_decode_normalises_names_ids_and_empty_values() -> None:
    [span] = decode(
        [
            {
                "traceId": "ABCDEF",
                "id": "A",
                "parentId": "0",
                "name": "GET /Orders",
                "timestamp": 0,
                "duration": 0,
                "localEndpoint": {"serviceName": "Front", "port": 0},
                "remoteEndpoint": {},
                "unknownField": {"ignored": True},
            }
        ]
    )
    assert span.trace_id == "0000000000abcdef"
    assert span.id == "000000000000000a"
    assert span.parent_id is None
    assert span.name == "get /orders"
    assert span.timestamp is None
    assert span.duration is None
    assert span.service == "front"
    assert span.local_endpoint is not None
    assert span.local_endpoint.port is None
    assert span.remote_endpoint is None


def test_encoding_omits_what_is_absent() -> None:
    [span] = decode([{"traceId": "1", "id": "2"}])
    assert json.loads(encode_spans([span])) == [
        {"traceId": "0000000000000001", "id": "0000000000000002"}
    ]


def test_errors_name_the_span_and_field() -> None:
    with pytest.raises(SpanFormatError) as caught:
        decode([{"traceId": "1", "id": "1"}, {"traceId": "1", "id": "1", "parentId": "zz"}])
    assert caught.value.details["field"] == "$[1].parentId"
    assert caught.value.status == 400
    with pytest.raises(SpanFormatError) as caught:
        decode([{"traceId": "1", "id": "1", "localEndpoint": {"port": 70000}}])
    assert caught.value.details["field"] == "$[0].localEndpoint.port"
    with pytest.raises(SpanFormatError):
        decode([{"id": "1"}])
    with pytest.raises(SpanFormatError):
        decode({"traceId": "1", "id": "1"})


def test_the_byte_estimate_grows_with_what_clients_control() -> None:
    [small] = decode([{"traceId": "1", "id": "1"}])
    [large] = decode([{"traceId": "1", "id": "1", "tags": {"k": "v" * 1000}}])
    assert estimated_bytes(large) >= estimated_bytes(small) + 1000


hex_ids = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=16).filter(
    lambda s: s.strip("0") != ""
)
names = st.text(max_size=20)
endpoints = st.fixed_dictionaries(
    {},
    optional={"serviceName": names, "port": st.integers(0, 65535), "ipv4": st.just("10.0.0.1")},
)
spans = st.fixed_dictionaries(
    {"traceId": hex_ids, "id": hex_ids},
    optional={
        "parentId": hex_ids,
        "name": names,
        "kind": st.sampled_from(["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]),
        "timestamp": st.integers(0, 2**53),
        "duration": st.integers(0, 2**40),
        "localEndpoint": endpoints,
        "remoteEndpoint": endpoints,
        "tags": st.dictionaries(names, names, max_size=3),
        "annotations": st.lists(
            st.fixed_dictionaries({"timestamp": st.integers(0, 2**53), "value": names}),
            max_size=2,
        ),
        "debug": st.booleans(),
    },
)


@given(st.lists(spans, max_size=5))
def test_valid_spans_round_trip_and_normalising_is_idempotent(batch: list[dict[str, Any]]) -> None:
    decoded = decode(batch)
    assert len(decoded) == len(batch)
    again = decode_spans(encode_spans(decoded))
    assert again == decoded
    for span in decoded:
        assert len(span.id) == 16
        assert len(span.trace_id) in (16, 32)
        assert span.parent_id is None or len(span.parent_id) == 16


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(json_values)
def test_arbitrary_json_is_spans_or_a_400(value: Any) -> None:
    try:
        result = decode(value)
    except SpanFormatError:
        return
    assert isinstance(result, list)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_spans_or_a_400(body: bytes) -> None:
    try:
        result = decode_spans(body)
    except SpanFormatError:
        return
    assert isinstance(result, list)


def test_spans_are_plain_msgspec_structs() -> None:
    [span] = decode([{"traceId": "1", "id": "1", "tags": {"a": "b"}}])
    assert msgspec.to_builtins(span)["tags"] == {"a": "b"}
