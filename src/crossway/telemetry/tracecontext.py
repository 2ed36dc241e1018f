"""Trace context: which trace a request belongs to, and how that crosses a hop.

Theory of operation
-------------------
A trace is a tree of spans. What travels with a request is only the position
in that tree: the trace id (16 bytes), the id of the span that sent the
request (8 bytes), a flags byte (bit 0: sampled; bit 1: random trace id, as
in Trace Context Level 2) and an opaque vendor list, `tracestate`.

- `TraceContext` is that position, an immutable value. `root()` starts a new
  trace; `child()` is the next hop's context: same trace, fresh span id, the
  current span as its parent.
- Wire formats are pure parse/format pairs: W3C `traceparent`/`tracestate`
  (https://www.w3.org/TR/trace-context/), Zipkin's B3 single header (`b3`) and
  B3 multi headers (`X-B3-*`). `extract(headers)` reads whichever is present,
  W3C first; `inject(headers, ctx)` writes W3C (and B3 on request).
- The context of the running code lives in a context variable, so it follows
  `await`s and tasks spawned from it: `current_trace()`, `use_trace(ctx)`.

Parsing rules (W3C): a `traceparent` that breaks the grammar — wrong length,
upper-case hex, version ff, all-zero ids — is ignored as if absent (the
receiver starts a new trace), and its `tracestate` with it. A version above
00 is read for its first four fields, as the spec asks, so a newer sender is
still joined. A `tracestate` that breaks the grammar (bad key or value, more
than 32 members, a duplicate key) is dropped whole rather than repaired.

Invariants
----------
- Every `TraceContext` has 32 lower-case hex digits of trace id and 16 of span
  id, neither all zeros; `format_traceparent(parse_traceparent(x))` is `x`
  for every valid version-00 `x`.
- Ids come from the `random` module's shared generator, which Python reseeds
  in a forked child, so pre-fork workers never repeat each other's ids.

Nothing here does I/O; parse functions never raise on bad input (they return
None), and nothing blocks, so there is nothing to cancel or time out.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace

SAMPLED = 0x01
RANDOM_TRACE_ID = 0x02
# Flags a child passes on: the ones this version of the spec defines.
_KNOWN_FLAGS = SAMPLED | RANDOM_TRACE_ID
MAX_TRACESTATE_MEMBERS = 32

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
B3 = "b3"
B3_TRACE_ID = "x-b3-traceid"
B3_SPAN_ID = "x-b3-spanid"
B3_PARENT_SPAN_ID = "x-b3-parentspanid"
B3_SAMPLED = "x-b3-sampled"
B3_FLAGS = "x-b3-flags"

_HEX = re.compile(r"[0-9a-f]+")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# Keys: a simple key, or tenant@system (the Recommendation's grammar);
# values: printable ASCII except ',' and '=', not ending in a space.
_TS_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}"
    r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

TraceState = tuple[tuple[str, str], ...]


def new_trace_id() -> str:
    """32 random lower-case hex digits, never all zeros."""
    while True:
        value = random.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    """16 random lower-case hex digits, never all zeros."""
    while True:
        value = random.getrandbits(64)
        if value:
            return f"{value:016x}"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace; see the module header. Build with `root()`,
    `child()` or a parse function rather than by hand."""

    trace_id: str
    span_id: str
    flags: int = SAMPLED
    tracestate: TraceState = ()
    parent_id: str | None = None
    """The span this one is a child of, when known (B3 sends it; W3C does not)."""

    @classmethod
    def root(cls, *, sampled: bool = True) -> TraceContext:
        """The first span of a new trace (its trace id is random: flag 0x02 set)."""
        flags = RANDOM_TRACE_ID | (SAMPLED if sampled else 0)
        return cls(new_trace_id(), new_span_id(), flags)

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def child(self) -> TraceContext:
        """The context of a span started under this one (a request it sends)."""
        return TraceContext(
            self.trace_id, new_span_id(), self.flags & _KNOWN_FLAGS, self.tracestate, self.span_id
        )

    def with_sampled(self, sampled: bool) -> TraceContext:
        flags = self.flags | SAMPLED if sampled else self.flags & ~SAMPLED
        return replace(self, flags=flags)

    def with_state(self, key: str, value: str) -> TraceContext:
        """Put `key=value` first in tracestate (as the spec asks of an updated
        entry), dropping older entries beyond 32. ValueError on a bad pair."""
        if not _TS_KEY.fullmatch(key) or not _TS_VALUE.fullmatch(value):
            raise ValueError(f"not a valid tracestate entry: {key}={value}")
        rest = tuple((k, v) for k, v in self.tracestate if k != key)
        state = ((key, value), *rest)[:MAX_TRACESTATE_MEMBERS]
        return replace(self, tracestate=state)

    def traceparent(self) -> str:
        return format_traceparent(self)


# -- W3C ---------------------------------------------------------------------------


def child_traceparent_parts(parent: TraceContext | None) -> tuple[str, str]:
    """(prefix, suffix) such that `prefix + new_span_id() + suffix` is the
    `traceparent` of a child of `parent` (of a new trace's root when None).

    The cheap form for a client that stamps many requests or attempts: no
    object per child, one random draw per header.
    """
    if parent is None:
        return f"00-{new_trace_id()}-", f"-{RANDOM_TRACE_ID | SAMPLED:02x}"
    return f"00-{parent.trace_id}-", f"-{parent.flags & _KNOWN_FLAGS:02x}"


def format_traceparent(ctx: TraceContext) -> str:
    """The version-00 `traceparent` value of `ctx`."""
    return f"00-{ctx.trace_id}-{ctx.span_id}-{ctx.flags & 0xFF:02x}"


def parse_traceparent(value: str, tracestate: str | None = None) -> TraceContext | None:
    """The context in a `traceparent` value (and its `tracestate`), or None
    when the value breaks the grammar (see the module header)."""
    text = value.strip(" \t")
    m = _TRACEPARENT.match(text)
    if m is None:
        return None
    version, trace_id, span_id, flags = m.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if len(text) != 55 and (version == "00" or text[55:56] != "-"):
        return None
    state = parse_tracestate(tracestate) if tracestate else ()
    return TraceContext(trace_id, span_id, int(flags, 16), state or ())


def parse_tracestate(value: str | Iterable[str]) -> TraceState | None:
    """The (key, value) members of a `tracestate` (several header lines are
    joined with commas); () when empty; None when it breaks the grammar."""
    text = value if isinstance(value, str) else ",".join(value)
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in text.split(","):
        member = raw.strip(" \t")
        if not member:
            continue  # empty members are allowed and mean nothing
        key, eq, val = member.partition("=")
        if not eq or key in seen or not _TS_KEY.fullmatch(key) or not _TS_VALUE.fullmatch(val):
            return None
        seen.add(key)
        members.append((key, val))
    if len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return tuple(members)


def format_tracestate(state: TraceState) -> str:
    return ",".join(f"{k}={v}" for k, v in state)


# -- B3 ----------------------------------------------------------------------------


def _b3_trace_id(value: str) -> str | None:
    # B3 allows 64-bit trace ids; W3C wants 128: left-pad with zeros, as Zipkin does.
    if len(value) not in (16, 32) or not _HEX.fullmatch(value):
        return None
    padded = value.rjust(32, "0")
    return None if padded == _ZERO_TRACE else padded


def _b3_span_id(value: str) -> str | None:
    if len(value) != 16 or not _HEX.fullmatch(value) or value == _ZERO_SPAN:
        return None
    return value


def _b3_sampling(value: str) -> bool | None:
    """B3's sampling state: "1"/"d" (debug) sample, "0" does not; None if unknown."""
    return {"1": True, "d": True, "true": True, "0": False, "false": False}.get(value.lower())


def parse_b3(value: str) -> TraceContext | None:
    """The context in a B3 single header `{trace}-{span}[-{sampling}[-{parent}]]`.

    A sampling-only header ("0", "1", "d") carries a decision and no ids: it
    yields a new root context with that decision. None for anything malformed.
    """
    parts = value.strip().split("-")
    if len(parts) == 1:
        decision = _b3_sampling(parts[0])
        return None if decision is None else TraceContext.root(sampled=decision)
    if len(parts) > 4:
        return None
    trace_id, span_id = _b3_trace_id(parts[0]), _b3_span_id(parts[1])
    if trace_id is None or span_id is None:
        return None
    sampled = _b3_sampling(parts[2]) if len(parts) > 2 else True
    parent = _b3_span_id(parts[3]) if len(parts) > 3 else None
    if sampled is None or (len(parts) > 3 and parent is None):
        return None
    return TraceContext(trace_id, span_id, SAMPLED if sampled else 0, (), parent)


def format_b3(ctx: TraceContext) -> str:
    """The B3 single header for `ctx` (its parent span appended when known)."""
    head = f"{ctx.trace_id}-{ctx.span_id}-{1 if ctx.sampled else 0}"
    return head if ctx.parent_id is None else f"{head}-{ctx.parent_id}"


def parse_b3_multi(headers: Mapping[str, str]) -> TraceContext | None:
    """The context in `X-B3-*` headers (looked up by lower-case name), or None."""
    raw_trace, raw_span = headers.get(B3_TRACE_ID), headers.get(B3_SPAN_ID)
    if raw_trace is None or raw_span is None:
        return None
    trace_id, span_id = _b3_trace_id(raw_trace.strip()), _b3_span_id(raw_span.strip())
    if trace_id is None or span_id is None:
        return None
    raw_parent = headers.get(B3_PARENT_SPAN_ID)
    parent = _b3_span_id(raw_parent.strip()) if raw_parent else None
    sampled = _b3_sampling(headers.get(B3_SAMPLED, "1").strip())
    if headers.get(B3_FLAGS, "").strip() == "1":
        sampled = True  # debug implies sampled
    flags = SAMPLED if sampled is not False else 0
    return TraceContext(trace_id, span_id, flags, (), parent)


def format_b3_multi(ctx: TraceContext) -> dict[str, str]:
    out = {
        B3_TRACE_ID: ctx.trace_id,
        B3_SPAN_ID: ctx.span_id,
        B3_SAMPLED: "1" if ctx.sampled else "0",
    }
    if ctx.parent_id is not None:
        out[B3_PARENT_SPAN_ID] = ctx.parent_id
    return out


# -- headers -------------------------------------------------------------------------


def extract(headers: Mapping[str, str]) -> TraceContext | None:
    """The incoming context: W3C first, then B3 single, then B3 multi.

    `headers` is looked up by lower-case name (Starlette's and httpx's header
    objects are case-insensitive). None when no valid context is present.
    """
    parent = headers.get(TRACEPARENT)
    if parent is not None:
        found = parse_traceparent(parent, headers.get(TRACESTATE))
        if found is not None:
            return found
    single = headers.get(B3)
    if single is not None:
        found = parse_b3(single)
        if found is not None:
            return found
    return parse_b3_multi(headers)


def inject(headers: MutableMapping[str, str], ctx: TraceContext, *, b3: bool = False) -> None:
    """Write `ctx` as `traceparent` (+ `tracestate` when non-empty), and as a
    B3 single header too when `b3` is true."""
    headers[TRACEPARENT] = format_traceparent(ctx)
    if ctx.tracestate:
        headers[TRACESTATE] = format_tracestate(ctx.tracestate)
    if b3:
        headers[B3] = format_b3(ctx)


# -- the current context ---------------------------------------------------------------

_CURRENT: ContextVar[TraceContext | None] = ContextVar("crossway_trace", default=None)


def current_trace() -> TraceContext | None:
    """The trace context of the running code, if any was set."""
    return _CURRENT.get()


def set_current_trace(ctx: TraceContext | None) -> Token[TraceContext | None]:
    """Make `ctx` current; undo with `reset_current_trace(token)` (for middleware
    whose start and end are separate calls)."""
    return _CURRENT.set(ctx)


def reset_current_trace(token: Token[TraceContext | None]) -> None:
    _CURRENT.reset(token)


@contextmanager
def use_trace(ctx: TraceContext | None) -> Iterator[TraceContext | None]:
    """Make `ctx` current for a block (sync or async code); the previous one
    is restored on leaving, however the block ends."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)
