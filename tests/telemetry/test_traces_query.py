"""Zipkin query semantics: parameters, matching, ordering, dependency links."""

from __future__ import annotations

from typing import Any

import pytest

from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument
from crossway.telemetry.traces.model import Annotation, Endpoint, Span
from crossway.telemetry.traces.query import (
    DEFAULT_LOOKBACK_MS,
    TraceQuery,
    dependency_links,
    find_traces,
    matches,
    parse_annotation_query,
    parse_query,
)
from crossway.telemetry.traces.store import StoredTrace, TraceStore

NOW_MS = 1_700_000_000_000
NOW_US = NOW_MS * 1000


def make_span(span_id: int, service: str, **fields: Any) -> Span:
    remote = fields.pop("remote", None)
    values: dict[str, Any] = {
        "trace_id": "00000000000000aa",
        "id": f"{span_id:016x}",
        "name": "op",
        "timestamp": NOW_US - 1000,
        "duration": 100,
        "local_endpoint": Endpoint(service_name=service),
        "remote_endpoint": Endpoint(service_name=remote) if remote else None,
    }
    values.update(fields)
    return Span(**values)


def trace_of(*spans: Span) -> StoredTrace:
    trace = StoredTrace(spans[0].trace_id, 0.0)
    for span in spans:
        trace.add(span, 0)
    return trace


def query(**fields: Any) -> TraceQuery:
    return TraceQuery(**{"end_ts": NOW_MS, **fields})


def test_defaults_are_zipkins() -> None:
    parsed = parse_query({}, now_ms=NOW_MS)
    assert parsed == TraceQuery(end_ts=NOW_MS, lookback=DEFAULT_LOOKBACK_MS, limit=10)


def test_names_are_lower_cased_and_all_means_any() -> None:
    parsed = parse_query(
        {"serviceName": "Front", "spanName": "all", "remoteServiceName": "DB"}, now_ms=NOW_MS
    )
    assert (parsed.service_name, parsed.span_name, parsed.remote_service_name) == (
        "front",
        None,
        "db",
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"endTs": "-5"}, "endTs"),
        ({"minDuration": "1.5"}, "minDuration"),
        ({"maxDuration": "10"}, "maxDuration"),
        ({"minDuration": "10", "maxDuration": "5"}, "maxDuration"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_query(params, now_ms=NOW_MS)
    assert caught.value.details["field"] == field


def test_annotation_queries() -> None:
    assert parse_annotation_query("error and http.method=GET and  cache.miss") == {
        "error": "",
        "http.method": "GET",
        "cache.miss": "",
    }
    assert parse_annotation_query("") == {}
    assert parse_annotation_query("path=/a=b") == {"path": "/a=b"}


def test_the_time_window() -> None:
    trace = trace_of(make_span(1, "front"))
    assert matches(query(), trace)
    assert not matches(query(end_ts=NOW_MS - 10), trace)
    assert not matches(TraceQuery(end_ts=NOW_MS + 100_000, lookback=10), trace)


def test_conditions_may_be_met_by_different_spans_of_the_service() -> None:
    trace = trace_of(
        make_span(1, "front", name="a", tags={"http.method": "GET"}),
        make_span(2, "front", name="b", duration=5000, remote="db"),
        make_span(3, "back", name="c", annotations=[Annotation(NOW_US, "cache.miss")]),
    )
    assert matches(query(service_name="front", span_name="a", min_duration=4000), trace)
    assert matches(query(service_name="front", remote_service_name="db"), trace)
    assert matches(query(annotation_query={"http.method": "GET", "cache.miss": ""}), trace)
    # The service constrains the other conditions to its own spans.
    assert not matches(query(service_name="front", span_name="c"), trace)
    assert not matches(query(service_name="front", annotation_query={"cache.miss": ""}), trace)
    assert not matches(query(service_name="nobody"), trace)
    assert not matches(query(min_duration=4000, max_duration=4500), trace)
    assert not matches(query(annotation_query={"http.method": "POST"}), trace)


def test_newest_first_and_limited() -> None:
    store = TraceStore(clock=VirtualClock())
    for n in range(1, 6):
        store.add([make_span(1, "front", trace_id=f"{n:016x}", timestamp=NOW_US - 10_000 + n)])
    found = find_traces(store.traces(), query(limit=3))
    assert [t[0].trace_id[-1] for t in found] == ["5", "4", "3"]


def test_dependency_links() -> None:
    otel_style = [
        make_span(1, "front", kind="SERVER"),
        make_span(2, "front", kind="CLIENT", parent_id=f"{1:016x}", remote="billing"),
        make_span(3, "billing", kind="SERVER", parent_id=f"{2:016x}", tags={"error": ""}),
        make_span(4, "billing", kind="CLIENT", parent_id=f"{3:016x}", remote="postgres"),
    ]
    shared_b3 = [
        make_span(7, "front", kind="CLIENT"),
        make_span(7, "billing", kind="SERVER", shared=True),
    ]
    links = dependency_links([otel_style, shared_b3])
    assert links == [
        {"parent": "billing", "child": "postgres", "callCount": 1},
        {"parent": "front", "child": "billing", "callCount": 2, "errorCount": 1},
    ]
