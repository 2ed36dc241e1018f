"""The trace store on a virtual clock: completion, tail sampling, the budget,
late spans, indexes; and its invariants under random operation sequences."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.telemetry.traces.model import Endpoint, Span
from crossway.telemetry.traces.store import TracePolicy, TraceStore, Verdict, keeps

BASE_US = 1_700_000_000_000_000


def make_span(
    trace: int,
    span: int = 1,
    *,
    parent: int | None = None,
    error: bool = False,
    duration: int = 1000,
    service: str = "front",
    name: str = "get",
    remote: str | None = None,
) -> Span:
    return Span(
        trace_id=f"{trace:016x}",
        id=f"{span:016x}",
        parent_id=f"{parent:016x}" if parent else None,
        name=name,
        timestamp=BASE_US + trace,
        duration=duration,
        local_endpoint=Endpoint(service_name=service),
        remote_endpoint=Endpoint(service_name=remote) if remote else None,
        tags={"error": "boom"} if error else {},
    )


def new_store(**policy: object) -> tuple[TraceStore, VirtualClock]:
    clock = VirtualClock()
    return TraceStore(clock=clock, policy=TracePolicy(**policy)), clock  # type: ignore[arg-type]


def test_a_trace_completes_after_the_quiet_period() -> None:
    store, clock = new_store(quiet_period=10)
    store.add([make_span(1)])
    clock.advance(9)
    store.add([make_span(1, 2, parent=1)])
    clock.advance(9.9)
    store.sweep()
    assert store.verdict(f"{1:016x}") is Verdict.PENDING
    clock.advance(0.1)
    store.sweep()
    assert store.verdict(f"{1:016x}") is Verdict.ORDINARY
    assert store.stats.traces_completed == 1


def test_errors_and_slow_traces_are_important_and_others_sampled() -> None:
    store, clock = new_store(quiet_period=1, keep_fraction=0, slow_threshold=0.5)
    store.add([make_span(1), make_span(2, error=True), make_span(3, duration=600_000)])
    clock.advance(1)
    store.sweep()
    assert store.verdict(f"{1:016x}") is None  # ordinary, and none are kept
    assert store.verdict(f"{2:016x}") is Verdict.IMPORTANT
    assert store.verdict(f"{3:016x}") is Verdict.IMPORTANT
    assert store.stats.traces_sampled_out == 1


def test_the_slow_threshold_defaults_to_the_p99_of_recent_traces() -> None:
    store, clock = new_store(quiet_period=1, keep_fraction=0, slow_min_samples=100)
    store.add([make_span(t, duration=1000) for t in range(1, 201)])
    clock.advance(1)
    store.sweep()
    assert store.trace_count == 0  # too few samples at first, then none above the p99
    store.add([make_span(500, duration=1000), make_span(501, duration=50_000)])
    clock.advance(1)
    store.sweep()
    assert store.verdict(f"{501:016x}") is Verdict.IMPORTANT
    assert store.verdict(f"{500:016x}") is None


def test_late_spans_of_dropped_traces_are_discarded() -> None:
    store, clock = new_store(quiet_period=1, keep_fraction=0)
    store.add([make_span(1)])
    clock.advance(1)
    store.add([make_span(1, 2, parent=1)])
    assert store.get(f"{1:016x}") is None
    assert store.stats.spans_dropped == 1


def test_a_late_error_promotes_an_ordinary_trace() -> None:
    store, clock = new_store(quiet_period=1)
    store.add([make_span(1)])
    clock.advance(1)
    store.sweep()
    store.add([make_span(1, 2, parent=1, error=True)])
    assert store.verdict(f"{1:016x}") is Verdict.IMPORTANT
    spans = store.get(f"{1:016x}")
    assert spans is not None
    assert len(spans) == 2


def test_over_budget_ordinary_traces_go_first_oldest_first() -> None:
    store, clock = new_store(quiet_period=1, max_spans=4)
    store.add([make_span(1, error=True), make_span(2), make_span(3)])
    clock.advance(1)
    store.sweep()
    store.add([make_span(4), make_span(5)])
    assert store.span_count == 4
    assert store.get(f"{2:016x}") is None  # the oldest ordinary one
    assert store.get(f"{1:016x}") is not None  # the error outlives it
    assert store.stats.traces_evicted == 1


def test_important_traces_cannot_crowd_out_everything() -> None:
    store, clock = new_store(quiet_period=1, max_spans=4, important_share=0.5)
    store.add([make_span(t, error=True) for t in (1, 2, 3)] + [make_span(4)])
    clock.advance(1)
    store.sweep()
    store.add([make_span(5)])
    assert store.get(f"{1:016x}") is None  # 3 of 4 spans were errors: the oldest error goes
    assert store.get(f"{4:016x}") is not None


def test_pending_traces_are_evicted_last() -> None:
    store, clock = new_store(quiet_period=10, max_spans=2)
    store.add([make_span(1)])
    clock.advance(10)
    store.sweep()
    store.add([make_span(2), make_span(3)])
    assert store.get(f"{1:016x}") is None
    assert store.class_sizes()[Verdict.PENDING] == 2


def test_the_byte_budget_is_kept() -> None:
    store, _ = new_store(max_bytes=10_000)
    for trace in range(1, 50):
        store.add([make_span(trace)])
        assert store.byte_count <= 10_000
    assert 0 < store.trace_count < 49


def test_a_trace_is_capped() -> None:
    store, _ = new_store(max_spans_per_trace=3)
    store.add([make_span(1, s) for s in range(1, 6)])
    spans = store.get(f"{1:016x}")
    assert spans is not None
    assert len(spans) == 3
    assert store.stats.spans_dropped == 2


def test_indexes_follow_eviction() -> None:
    store, _ = new_store(max_spans=1)
    store.add([make_span(1, service="a", name="x", remote="db")])
    assert store.services() == ["a"]
    assert store.span_names("a") == ["x"]
    assert store.remote_services("a") == ["db"]
    store.add([make_span(2, service="b", name="y")])
    assert store.services() == ["b"]
    assert store.span_names("a") == []
    assert store.remote_services("a") == []


def test_keeping_is_decided_by_the_trace_id() -> None:
    ids = [f"{n * 2654435761 % 2**64:016x}" for n in range(1, 4001)]
    kept = sum(keeps(trace_id, 0.25) for trace_id in ids)
    assert 800 < kept < 1200
    assert all(keeps(i, 0.25) == keeps(i, 0.25) for i in ids[:50])
    assert keeps(ids[0], 1.0)
    assert not keeps(ids[0], 0.0)


def test_policies_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        TracePolicy(max_spans=0)
    with pytest.raises(ValueError, match="keep_fraction"):
        TracePolicy(keep_fraction=1.5)


# Invariants under random sequences of arrivals and clock ticks.

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.integers(1, 12),  # trace
            st.integers(1, 4),  # span
            st.booleans(),  # error
            st.integers(1, 3_000_000),  # duration µs
            st.sampled_from(["a", "b", "c"]),
        ),
        st.tuples(st.just("tick"), st.floats(0, 8)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    operations,
    st.integers(1, 12),
    st.sampled_from([0.0, 0.5, 1.0]),
    st.sampled_from([None, 1.0]),
)
def test_invariants_hold_after_every_operation(
    ops: list[tuple[object, ...]], max_spans: int, keep: float, slow: float | None
) -> None:
    store, clock = new_store(
        quiet_period=5,
        max_spans=max_spans,
        keep_fraction=keep,
        slow_threshold=slow,
        slow_min_samples=3,
        max_spans_per_trace=3,
    )
    for op in ops:
        if op[0] == "add":
            _, trace, span, error, duration, service = op
            store.add([make_span(trace, span, error=error, duration=duration, service=service)])  # type: ignore[arg-type]
        else:
            clock.advance(op[1])  # type: ignore[arg-type]
            store.sweep()
        check_invariants(store)


def check_invariants(store: TraceStore) -> None:
    traces = list(store.traces())
    assert store.span_count <= store.policy.max_spans
    assert store.byte_count <= store.policy.max_bytes
    assert store.span_count == sum(len(t.spans) for t in traces)
    sizes = store.class_sizes()
    assert sum(sizes.values()) == len(traces) == store.trace_count
    assert Counter(t.verdict for t in traces) == Counter(
        {verdict: count for verdict, count in sizes.items() if count}
    )
    assert all(len(t.spans) <= store.policy.max_spans_per_trace for t in traces)
    assert all(t.verdict is not Verdict.ORDINARY or not t.error for t in traces)
    services = {s.service for t in traces for s in t.spans if s.service}
    assert store.services() == sorted(services)
    for service in services:
        names = {s.name for t in traces for s in t.spans if s.service == service and s.name}
        assert store.span_names(service) == sorted(names)
