"""`crossway trace ID` (a waterfall in the terminal) and `crossway traces` (search).

Both read the control plane's Zipkin v2 query API (`/api/v2/trace/{id}`,
`/api/v2/traces`), so they work against any Zipkin-compatible server too.

The waterfall is computed by pure functions (`waterfall`, `bar`) and printed
with rich: one row per span, depth-first from the root with children in start
order, each bar placed and scaled on the trace's own time line. Spans whose
parent was never received are shown as extra roots rather than hidden, and a
parent cycle in bad data cannot loop (each span is shown once).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from crossway.cli._http import (
    DEFAULT_URL,
    CliFailure,
    ControlPlane,
    Json,
    Token,
    Url,
    echo_json,
    run,
)
from crossway.core.durations import parse_duration
from crossway.telemetry.traces.model import Span

BAR_WIDTH = 40
_spans_decoder = msgspec.json.Decoder(list[Span])
_traces_decoder = msgspec.json.Decoder(list[list[Span]])


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
    app.command("traces")(traces)


@dataclass(frozen=True, slots=True)
class Row:
    span: Span
    depth: int
    offset: int
    """Microseconds from the trace's start to this span's."""


def waterfall(spans: Sequence[Span]) -> list[Row]:
    """The rows of a waterfall: depth-first, children by start time."""
    start = min((s.timestamp for s in spans if s.timestamp), default=0)
    ids = {s.id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids and span.parent_id != span.id else None
        children.setdefault(parent, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.timestamp or 0, s.kind != "CLIENT"))
    rows: list[Row] = []
    shown: set[int] = set()

    def visit(span: Span, depth: int) -> None:
        if id(span) in shown:
            return
        shown.add(id(span))
        rows.append(Row(span, depth, (span.timestamp or start) - start))
        for child in children.get(span.id, ()):
            visit(child, depth + 1)

    for root in children.get(None, ()):
        visit(root, 0)
    for span in spans:  # a cycle has no root: still show its spans
        visit(span, 0)
    return rows


def total_duration(spans: Sequence[Span]) -> int:
    """Microseconds from the first start to the last end."""
    starts = [s.timestamp for s in spans if s.timestamp]
    ends = [s.end for s in spans if s.end]
    return max(ends) - min(starts) if starts and ends else 0


def bar(offset: int, duration: int, total: int, width: int = BAR_WIDTH) -> str:
    """A `width`-character bar for a span at `offset` lasting `duration` (µs)."""
    if total <= 0:
        return "█".ljust(width)
    begin = min(width - 1, round(offset / total * width))
    length = max(1, min(width - begin, round(duration / total * width)))
    return (" " * begin + "█" * length).ljust(width)


def format_micros(micros: int | None) -> str:
    if micros is None:
        return "-"
    if micros < 1000:
        return f"{micros}µs"
    if micros < 1_000_000:
        return f"{micros / 1000:.3g}ms"
    return f"{micros / 1_000_000:.3g}s"


def trace(
    trace_id: Annotated[str, typer.Argument(metavar="ID", help="The trace id (hex).")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Show one trace as a waterfall: services, spans, timing and errors."""

    def action() -> None:
        wanted = trace_id.strip().lower()  # ids pasted from a terminal bring their newline
        if not (1 <= len(wanted) <= 32 and all(c in "0123456789abcdef" for c in wanted)):
            raise CliFailure(f"{trace_id.strip()!r} is not a trace id (1 to 32 hex digits)")
        with ControlPlane(url, token) as cp:
            response = cp.call("GET", f"/api/v2/trace/{wanted}")
        spans = _decode(_spans_decoder, response.content)
        if json:
            echo_json(msgspec.to_builtins(spans))
            return
        Console().print(render_waterfall(spans))

    run("crossway trace", action)


def render_waterfall(spans: Sequence[Span]) -> Table:
    total = total_duration(spans)
    services = sorted({s.service for s in spans if s.service})
    errors = sum(s.is_error for s in spans)
    title = f"trace {spans[0].trace_id if spans else '?'} · {len(spans)} spans · "
    title += f"{len(services)} services · {format_micros(total)}"
    if errors:
        title += f" · [red]{errors} error{'s' if errors > 1 else ''}[/]"
    table = Table("SERVICE", "SPAN", "TIMELINE", "DURATION", "", title=title, box=None)
    for row in waterfall(spans):
        span = row.span
        colour = "red" if span.is_error else "cyan"
        name = "  " * row.depth + (span.name or "?")
        if span.kind:
            name += f" [{span.kind.lower()}]"
        table.add_row(
            span.service or "?",
            Text(name),
            Text(bar(row.offset, span.duration or 0, total), style=colour),
            format_micros(span.duration),
            Text("✗ " + span.tags["error"], style="red") if span.is_error else "",
        )
    return table


def traces(
    service: Annotated[str | None, typer.Option(help="Only traces through this service.")] = None,
    span: Annotated[str | None, typer.Option(help="Only traces with this span name.")] = None,
    min_duration: Annotated[
        str | None, typer.Option(help="Only spans at least this long, e.g. 100ms.")
    ] = None,
    error: Annotated[bool, typer.Option("--error", help="Only traces with an error.")] = False,
    lookback: Annotated[str, typer.Option(help="How far back to look.")] = "1h",
    limit: Annotated[int, typer.Option(min=1, help="At most this many traces.")] = 20,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Search recent traces (newest first), as the Zipkin query API does."""

    def action() -> None:
        params = search_params(
            service=service, span=span, min_duration=min_duration, error=error,
            lookback=lookback, limit=limit,
        )  # fmt: skip
        with ControlPlane(url, token) as cp:
            response = cp.call("GET", "/api/v2/traces", params=params)
        found = _decode(_traces_decoder, response.content)
        if json:
            echo_json(msgspec.to_builtins(found))
        elif not found:
            typer.echo("no traces match")
        else:
            Console().print(render_list(found))

    run("crossway traces", action)


def search_params(
    *,
    service: str | None,
    span: str | None,
    min_duration: str | None,
    error: bool,
    lookback: str,
    limit: int,
) -> dict[str, str]:
    """The query string for `/api/v2/traces`; `CliFailure` for a bad duration."""
    params = {"limit": str(limit), "lookback": str(_millis("--lookback", lookback))}
    if service:
        params["serviceName"] = service
    if span:
        params["spanName"] = span
    if min_duration:
        params["minDuration"] = str(max(1, _millis("--min-duration", min_duration) * 1000))
    if error:
        params["annotationQuery"] = "error"
    return params


def _millis(flag: str, text: str) -> int:
    try:
        return max(1, round(parse_duration(text) * 1000))
    except ValueError as exc:
        raise CliFailure(f"{flag}: {exc}") from None


def render_list(found: Sequence[Sequence[Span]]) -> Table:
    table = Table("TRACE", "ROOT", "START", "DURATION", "SPANS", "ERRORS", box=None)
    # The id is what users copy into `crossway trace ID`: never cut it short,
    # let the root's name wrap instead.
    table.columns[0].no_wrap = True
    table.columns[0].min_width = 32
    table.columns[2].no_wrap = True
    for spans in found:
        root = _root(spans)
        errors = sum(s.is_error for s in spans)
        table.add_row(
            root.trace_id,
            f"{root.service or '?'}: {root.name or '?'}",
            _clock(root.timestamp),
            format_micros(total_duration(spans)),
            str(len(spans)),
            f"[red]{errors}[/]" if errors else "0",
        )
    return table


def _root(spans: Sequence[Span]) -> Span:
    roots = [s for s in spans if s.parent_id is None]
    return min(roots or spans, key=lambda s: s.timestamp or 0)


def _clock(micros: int | None) -> str:
    if not micros:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(micros / 1_000_000))


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError:
        raise CliFailure("the control plane answered with something that is not spans") from None
