"""W3C Trace Context and B3: parse/format round trips, the spec's edge cases,
fuzzed input that must never crash, and the current-context variable."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.telemetry.tracecontext import (
    RANDOM_TRACE_ID,
    SAMPLED,
    TraceContext,
    child_traceparent_parts,
    current_trace,
    extract,
    format_b3,
    format_b3_multi,
    format_traceparent,
    format_tracestate,
    inject,
    new_span_id,
    parse_b3,
    parse_b3_multi,
    parse_traceparent,
    parse_tracestate,
    use_trace,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
HEADER = f"00-{TRACE}-{SPAN}-01"
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

hex32 = st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
hex16 = st.text("0123456789abcdef", min_size=16, max_size=16).filter(lambda s: s != "0" * 16)
ts_keys = st.from_regex(r"[a-z][a-z0-9_\-*/]{0,20}", fullmatch=True)
ts_values = st.from_regex(r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]{1,20}", fullmatch=True)


def test_parse_the_spec_example() -> None:
    ctx = parse_traceparent(HEADER, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE, SPAN, True)
    assert ctx.tracestate == (("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7"))
    assert format_traceparent(ctx) == HEADER


@pytest.mark.parametrize(
    "value",
    [
        "",
        HEADER.upper(),  # upper-case hex is invalid
        f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 is exactly 55 characters
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-1",
        f"0-{TRACE}-{SPAN}-01",
        f"01-{TRACE}-{SPAN}-01x",  # a future version still needs '-' after 55
    ],
)
def test_invalid_traceparents_are_ignored(value: str) -> None:
    assert parse_traceparent(value) is None


def test_future_versions_are_read_for_their_first_fields() -> None:
    ctx = parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-holds")
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (TRACE, SPAN)
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01") is not None


def test_unsampled_flags_survive() -> None:
    ctx = parse_traceparent(f"00-{TRACE}-{SPAN}-00")
    assert ctx is not None
    assert not ctx.sampled
    assert not ctx.child().sampled


@given(hex32, hex16, st.integers(0, 255))
def test_traceparent_round_trip(trace_id: str, span_id: str, flags: int) -> None:
    header = f"00-{trace_id}-{span_id}-{flags:02x}"
    ctx = parse_traceparent(header)
    assert ctx is not None
    assert format_traceparent(ctx) == header


@given(st.text(max_size=80))
def test_fuzzed_traceparent_never_crashes(value: str) -> None:
    ctx = parse_traceparent(value)
    if ctx is not None:
        assert TRACEPARENT.fullmatch(format_traceparent(ctx))


def test_child_keeps_the_trace_and_points_at_its_parent() -> None:
    parent = TraceContext(TRACE, SPAN, SAMPLED | 0x80, (("a", "1"),))
    child = parent.child()
    assert child.trace_id == TRACE
    assert child.span_id != SPAN
    assert child.parent_id == SPAN
    assert child.tracestate == parent.tracestate
    assert child.flags == SAMPLED  # unknown flag bits are not passed on


def test_root_starts_a_random_sampled_trace() -> None:
    a, b = TraceContext.root(), TraceContext.root()
    assert a.trace_id != b.trace_id
    assert a.flags == SAMPLED | RANDOM_TRACE_ID
    assert not TraceContext.root(sampled=False).sampled
    assert TRACEPARENT.fullmatch(a.traceparent())


def test_child_parts_build_children() -> None:
    parent = TraceContext(TRACE, SPAN, SAMPLED)
    prefix, suffix = child_traceparent_parts(parent)
    header = prefix + new_span_id() + suffix
    child = parse_traceparent(header)
    assert child is not None
    assert child.trace_id == TRACE
    assert child.sampled
    assert child.span_id != SPAN
    prefix, suffix = child_traceparent_parts(None)
    assert TRACEPARENT.fullmatch(prefix + new_span_id() + suffix)
    assert suffix == "-03"


@given(st.lists(st.tuples(ts_keys, ts_values), max_size=32, unique_by=lambda kv: kv[0]))
def test_tracestate_round_trip(members: list[tuple[str, str]]) -> None:
    state = tuple(members)
    assert parse_tracestate(format_tracestate(state)) == state


@pytest.mark.parametrize(
    "value",
    [
        "a=1,a=2",  # duplicate key
        "A=1",  # upper-case key
        "a=1,b",  # no '='
        "a=x,y",
        "a= ",  # value may not end in a space
        "a=b=c",
        ",".join(f"k{i}=v" for i in range(33)),  # more than 32 members
    ],
)
def test_invalid_tracestate_is_dropped_whole(value: str) -> None:
    assert parse_tracestate(value) is None


def test_tracestate_tolerates_spaces_empty_members_and_tenants() -> None:
    assert parse_tracestate(" a=1 ,, t@sys=2 ,") == (("a", "1"), ("t@sys", "2"))
    assert parse_tracestate(["a=1", "b=2"]) == (("a", "1"), ("b", "2"))
    assert parse_tracestate("") == ()


def test_with_state_moves_the_key_first_and_caps_the_list() -> None:
    ctx = TraceContext(TRACE, SPAN, tracestate=tuple((f"k{i}", "v") for i in range(32)))
    updated = ctx.with_state("k5", "new").with_state("cw", "x")
    assert updated.tracestate[0] == ("cw", "x")
    assert updated.tracestate[1] == ("k5", "new")
    assert len(updated.tracestate) == 32
    with pytest.raises(ValueError, match="tracestate"):
        ctx.with_state("Bad", "v")


def test_b3_single_round_trip_and_padding() -> None:
    ctx = parse_b3(f"{TRACE}-{SPAN}-1-{'c' * 16}")
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.parent_id, ctx.sampled) == (TRACE, SPAN, "c" * 16, True)
    assert format_b3(ctx) == f"{TRACE}-{SPAN}-1-{'c' * 16}"
    short = parse_b3(f"{'a' * 16}-{SPAN}-0")
    assert short is not None
    assert short.trace_id == "0" * 16 + "a" * 16
    assert not short.sampled
    debug = parse_b3(f"{TRACE}-{SPAN}-d")
    assert debug is not None
    assert debug.sampled


def test_b3_sampling_only_header_starts_a_trace_with_that_decision() -> None:
    denied = parse_b3("0")
    assert denied is not None
    assert not denied.sampled
    assert parse_b3("x") is None
    assert parse_b3(f"{TRACE}-{SPAN}-2") is None
    assert parse_b3(f"{TRACE}-{SPAN}-1-nothex") is None


def test_b3_multi_round_trip() -> None:
    ctx = TraceContext(TRACE, SPAN, 0, (), "c" * 16)
    headers = format_b3_multi(ctx)
    assert headers["x-b3-sampled"] == "0"
    back = parse_b3_multi(headers)
    assert back is not None
    assert (back.trace_id, back.span_id, back.parent_id, back.sampled) == (
        TRACE,
        SPAN,
        "c" * 16,
        False,
    )
    flagged = parse_b3_multi({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-flags": "1"})
    assert flagged is not None
    assert flagged.sampled
    assert parse_b3_multi({"x-b3-traceid": TRACE}) is None


@given(st.text(max_size=80))
def test_fuzzed_b3_never_crashes(value: str) -> None:
    ctx = parse_b3(value)
    if ctx is not None:
        assert len(ctx.trace_id) == 32
        assert len(ctx.span_id) == 16


def test_extract_prefers_w3c_then_b3() -> None:
    b3 = f"{'e' * 32}-{SPAN}-1"
    found = extract({"traceparent": HEADER, "b3": b3})
    assert found is not None
    assert found.trace_id == TRACE
    found = extract({"traceparent": "garbage", "b3": b3})
    assert found is not None
    assert found.trace_id == "e" * 32
    found = extract({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN})
    assert found is not None
    assert found.trace_id == TRACE
    assert extract({}) is None


def test_inject_writes_w3c_and_optionally_b3() -> None:
    ctx = TraceContext(TRACE, SPAN, SAMPLED, (("a", "1"),))
    headers: dict[str, str] = {}
    inject(headers, ctx, b3=True)
    assert headers == {"traceparent": HEADER, "tracestate": "a=1", "b3": f"{TRACE}-{SPAN}-1"}


async def test_current_trace_follows_tasks_and_is_restored() -> None:
    ctx = TraceContext.root()
    assert current_trace() is None
    with use_trace(ctx):
        assert current_trace() is ctx
        seen = await asyncio.create_task(_read_current())
        assert seen is ctx
        with use_trace(None):
            assert current_trace() is None
        assert current_trace() is ctx
    assert current_trace() is None


async def _read_current() -> TraceContext | None:
    await asyncio.sleep(0)
    return current_trace()
