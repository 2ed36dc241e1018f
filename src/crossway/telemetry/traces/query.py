"""The Zipkin v2 query API's semantics, as pure functions over stored traces.

Theory of operation
- `parse_query(params, now_ms=…)` turns the query string of
  `GET /api/v2/traces` into a `TraceQuery`, with Zipkin's defaults (`endTs`
  now, `lookback` one day, `limit` 10) and its rules (names are compared in
  lower case, the name `all` means "any", `maxDuration` only with
  `minDuration`, durations in microseconds, times in milliseconds). A bad
  parameter is an `InvalidArgument` naming it.
- `matches(query, trace)` follows Zipkin's `QueryRequest.test`: the trace's
  timestamp (its root's start, else its earliest span's) must fall inside
  [endTs - lookback, endTs]; then, among the spans of `serviceName` (every
  span when no service is asked for), some span must carry the span name,
  some the remote service, some a duration in range, and every term of the
  annotation query must be met by an annotation value (`key`) or a tag
  (`key` or `key=value`). Different conditions may be met by different spans
  of the trace.
- `find_traces` answers with the newest matching traces first, at most
  `limit` of them.
- `dependency_links` derives the service graph (`GET /api/v2/dependencies`)
  from the stored spans: a SERVER/CONSUMER span is called by the service of
  its parent (or of the CLIENT span sharing its id); a CLIENT/PRODUCER span
  that nobody answered links to its remote service.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crossway.core.errors import InvalidArgument
from crossway.telemetry.traces.model import Span
from crossway.telemetry.traces.store import StoredTrace

DEFAULT_LOOKBACK_MS = 86_400_000
DEFAULT_LIMIT = 10
_AND = re.compile(r"\s+and\s+")
_CALLEES = ("SERVER", "CONSUMER")
_CALLERS = ("CLIENT", "PRODUCER")


@dataclass(frozen=True, kw_only=True, slots=True)
class TraceQuery:
    end_ts: int
    """Milliseconds since the epoch."""
    lookback: int = DEFAULT_LOOKBACK_MS
    service_name: str | None = None
    remote_service_name: str | None = None
    span_name: str | None = None
    annotation_query: Mapping[str, str] = field(default_factory=dict)
    min_duration: int | None = None
    """Microseconds."""
    max_duration: int | None = None
    limit: int = DEFAULT_LIMIT


def parse_query(params: Mapping[str, str], *, now_ms: int) -> TraceQuery:
    """A `TraceQuery` from Zipkin's query parameters.

    Raises `InvalidArgument` (field = the parameter's name) for a value that is
    not a positive integer where one is needed, or for `maxDuration` without
    `minDuration` or below it.
    """
    min_duration = _positive(params, "minDuration")
    max_duration = _positive(params, "maxDuration")
    if max_duration is not None and (min_duration is None or max_duration < min_duration):
        raise InvalidArgument(
            "maxDuration needs a minDuration no greater than it", field="maxDuration"
        )
    return TraceQuery(
        end_ts=_positive(params, "endTs") or now_ms,
        lookback=_positive(params, "lookback") or DEFAULT_LOOKBACK_MS,
        service_name=name_param(params, "serviceName"),
        remote_service_name=name_param(params, "remoteServiceName"),
        span_name=name_param(params, "spanName"),
        annotation_query=parse_annotation_query(params.get("annotationQuery", "")),
        min_duration=min_duration,
        max_duration=max_duration,
        limit=_positive(params, "limit") or DEFAULT_LIMIT,
    )


def name_param(params: Mapping[str, str], name: str) -> str | None:
    """A service, span or remote service name as Zipkin compares it; `all` is none."""
    value = params.get(name, "").strip().lower()
    return value if value and value != "all" else None


def _positive(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) == 0:
        raise InvalidArgument(f"{name} must be a positive integer, got {text!r}", field=name)
    return int(text)


def parse_annotation_query(text: str) -> dict[str, str]:
    """`"error and http.method=GET"` → `{"error": "", "http.method": "GET"}`."""
    terms: dict[str, str] = {}
    for term in _AND.split(text.strip()):
        key, _, value = term.partition("=")
        if key.strip():
            terms[key.strip()] = value.strip()
    return terms


def matches(query: TraceQuery, trace: StoredTrace) -> bool:
    """Whether `trace` answers `query` (see the module header)."""
    timestamp = trace.timestamp
    if (
        not timestamp
        or not (query.end_ts - query.lookback) * 1000 <= timestamp <= query.end_ts * 1000
    ):
        return False
    return _spans_match(query, trace.spans)


def _spans_match(query: TraceQuery, spans: Sequence[Span]) -> bool:
    service_seen = query.service_name is None
    span_name_seen = query.span_name is None
    remote_seen = query.remote_service_name is None
    duration_seen = query.min_duration is None
    remaining = dict(query.annotation_query)
    for span in spans:
        if query.service_name is not None and span.service != query.service_name:
            continue
        service_seen = True
        span_name_seen = span_name_seen or span.name == query.span_name
        remote_seen = remote_seen or span.remote_service == query.remote_service_name
        duration_seen = duration_seen or _duration_in_range(query, span.duration)
        if remaining:
            _strike_annotations(remaining, span)
    return service_seen and span_name_seen and remote_seen and duration_seen and not remaining


def _duration_in_range(query: TraceQuery, duration: int | None) -> bool:
    if duration is None or query.min_duration is None:
        return False
    if duration < query.min_duration:
        return False
    return query.max_duration is None or duration <= query.max_duration


def _strike_annotations(remaining: dict[str, str], span: Span) -> None:
    """Remove from `remaining` the annotation-query terms `span` satisfies."""
    for annotation in span.annotations:
        if remaining.get(annotation.value) == "":
            del remaining[annotation.value]
    for key, value in span.tags.items():
        wanted = remaining.get(key)
        if wanted is not None and (wanted == "" or wanted == value):
            del remaining[key]


def find_traces(traces: Iterable[StoredTrace], query: TraceQuery) -> list[list[Span]]:
    """The newest `query.limit` traces matching `query`, newest first."""
    found = [trace for trace in traces if matches(query, trace)]
    found.sort(key=lambda trace: trace.timestamp, reverse=True)
    return [list(trace.spans) for trace in found[: query.limit]]


def in_window(trace: StoredTrace, *, end_ts: int, lookback: int) -> bool:
    """Whether the trace started within [end_ts - lookback, end_ts] (milliseconds)."""
    return bool(trace.timestamp) and (end_ts - lookback) * 1000 <= trace.timestamp <= end_ts * 1000


@dataclass(slots=True)
class _Link:
    calls: int = 0
    errors: int = 0


def dependency_links(traces: Iterable[Sequence[Span]]) -> list[dict[str, object]]:
    """Zipkin `DependencyLink`s (`parent`, `child`, `callCount`, `errorCount`)."""
    links: dict[tuple[str, str], _Link] = {}
    for spans in traces:
        for parent, child, error in _calls(spans):
            link = links.setdefault((parent, child), _Link())
            link.calls += 1
            link.errors += error
    return [_link_json(parent, child, link) for (parent, child), link in sorted(links.items())]


def _link_json(parent: str, child: str, link: _Link) -> dict[str, object]:
    body: dict[str, object] = {"parent": parent, "child": child, "callCount": link.calls}
    if link.errors:
        body["errorCount"] = link.errors
    return body


def _calls(spans: Sequence[Span]) -> Iterable[tuple[str, str, bool]]:
    """(caller service, callee service, failed) for each call seen in one trace."""
    by_id: dict[str, list[Span]] = {}
    answered: set[str] = set()
    for span in spans:
        by_id.setdefault(span.id, []).append(span)
        if span.kind in _CALLEES:
            answered.add(span.id)  # a shared server span answers its client span
            if span.parent_id is not None:
                answered.add(span.parent_id)
    for span in spans:
        service = span.service
        if service is None:
            continue
        if span.kind in _CALLEES:
            caller = _caller(span, by_id)
            if caller is not None and caller != service:
                yield caller, service, span.is_error
        elif span.kind in _CALLERS and span.remote_service and span.id not in answered:
            yield service, span.remote_service, span.is_error


def _caller(span: Span, by_id: Mapping[str, list[Span]]) -> str | None:
    """The service that called `span`: a shared client span's, else the parent's."""
    for other in by_id.get(span.id, ()):
        if other.kind in _CALLERS and other.service:
            return other.service
    for parent in by_id.get(span.parent_id or "", ()):
        if parent.service:
            return parent.service
    return None
