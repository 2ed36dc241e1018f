"""JSON logs with trace ids: the formatter, the one-line install, the ASGI
middleware, and the control plane's own log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.logs import configure_logging
from crossway.server.settings import ServerSettings
from crossway.store.memory import open_memory_store
from crossway.telemetry import logging as tlog

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    log = logging.getLogger("crossway.tests.json")
    log.propagate = False
    tlog.install("DEBUG", stream=stream, logger=log)
    yield log, stream
    log.handlers.clear()
    log.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def tracecontext() -> Any:
    return pytest.importorskip("crossway.telemetry.tracecontext")


def test_lines_carry_the_current_trace(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    tc = tracecontext()
    log.info("outside")
    with tc.use_trace(tc.TraceContext(TRACE, SPAN)):
        log.warning("inside %s", "a trace", extra={"order": 7})
    outside, inside = lines(stream)
    assert "trace_id" not in outside
    assert inside["trace_id"] == TRACE
    assert inside["span_id"] == SPAN
    assert (inside["msg"], inside["level"], inside["order"]) == ("inside a trace", "warning", 7)


def test_one_record_is_one_line_with_its_traceback(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    try:
        raise ValueError("multi\nline")
    except ValueError:
        log.exception("failed\nbadly")
    [line] = lines(stream)
    assert "ValueError" in line["exc"]
    assert line["msg"] == "failed\nbadly"


def test_opentelemetry_spans_are_used_too(logger: tuple[logging.Logger, io.StringIO]) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    log, stream = logger
    tracer = sdk.TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("work") as span:
        log.info("in otel")
    context = span.get_span_context()
    [line] = lines(stream)
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_install_replaces_its_own_handler(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, _ = logger
    again = io.StringIO()
    tlog.install("INFO", stream=again, logger=log, keep_handlers=True)
    ours = [h for h in log.handlers if isinstance(h.formatter, tlog.JsonFormatter)]
    assert len(ours) == 1
    log.info("once")
    assert len(lines(again)) == 1


def test_explicit_ids_are_kept(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    tc = tracecontext()
    with tc.use_trace(tc.TraceContext(TRACE, SPAN)):
        log.info("mine", extra={"trace_id": "custom"})
    assert lines(stream)[0]["trace_id"] == "custom"


async def test_the_middleware_binds_a_requests_traceparent() -> None:
    seen: list[tuple[str, str] | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(tlog.current_trace_ids())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx2.ASGITransport(app=tlog.TraceLogContext(app))
    async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/", headers={"traceparent": TRACEPARENT})
        await client.get("/", headers={"b3": f"{TRACE}-{SPAN}-1"})
        await client.get("/", headers={"traceparent": "garbage"})
        await client.get("/")
    assert seen == [(TRACE, SPAN), (TRACE, SPAN), None, None]
    assert tlog.current_trace_ids() is None


async def test_the_control_plane_logs_a_requests_trace_ids() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    store = open_memory_store()
    ctx = ServerContext(store=store, settings=ServerSettings(store="memory"))
    try:
        app = tlog.TraceLogContext(create_app(ctx))
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/v1/nothing-here", headers={"traceparent": TRACEPARENT})
            await client.get("/v1/nothing-here")
    finally:
        await store.close()
        logging.getLogger().handlers.clear()
    access = [line for line in lines(stream) if line.get("logger") == "crossway.access"]
    assert [line.get("trace_id") for line in access] == [TRACE, None]
    assert access[0]["span_id"] == SPAN
