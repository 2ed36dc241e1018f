"""`crossway trace ID` and `crossway traces`: the waterfall's arithmetic, and the
commands against a control plane on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from crossway.cli import trace as trace_cli
from crossway.cli.trace import bar, format_micros, search_params, total_duration, waterfall
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.memory import open_memory_store
from crossway.telemetry.traces.model import Endpoint, Span
from crossway.testing.services import free_port

T0 = int(time.time() * 1_000_000)


def make_span(span_id: int, parent: int | None, offset: int, duration: int, **kw: object) -> Span:
    return Span(
        trace_id="00000000000000aa",
        id=f"{span_id:016x}",
        parent_id=f"{parent:016x}" if parent else None,
        name=f"op{span_id}",
        timestamp=T0 + offset,
        duration=duration,
        local_endpoint=Endpoint(service_name=str(kw.get("service", "front"))),
        tags={"error": "boom"} if kw.get("error") else {},
    )


TRACE = [
    make_span(3, 1, 600, 300, service="billing", error=True),
    make_span(2, 1, 100, 400),
    make_span(1, None, 0, 1000),
    make_span(4, 2, 150, 100),
    make_span(9, 77, 950, 50),  # its parent never arrived
]


def test_waterfall_is_depth_first_in_start_order() -> None:
    rows = waterfall(TRACE)
    assert [(int(r.span.id, 16), r.depth, r.offset) for r in rows] == [
        (1, 0, 0),
        (2, 1, 100),
        (4, 2, 150),
        (3, 1, 600),
        (9, 0, 950),
    ]
    assert total_duration(TRACE) == 1000


def test_a_parent_cycle_still_shows_every_span_once() -> None:
    looped = [make_span(1, 2, 0, 10), make_span(2, 1, 5, 10)]
    assert sorted(int(r.span.id, 16) for r in waterfall(looped)) == [1, 2]


def test_bars_are_scaled_to_the_trace() -> None:
    assert bar(0, 1000, 1000, 10) == "█" * 10
    assert bar(500, 300, 1000, 10) == "     ███  "
    assert bar(999, 0, 1000, 10).strip() == "█"  # never invisible
    assert len(bar(0, 5, 0, 10)) == 10


def test_durations_read_well() -> None:
    assert [format_micros(v) for v in (None, 850, 12_300, 1_520_000)] == [
        "-",
        "850µs",
        "12.3ms",
        "1.52s",
    ]


def test_search_params() -> None:
    params = search_params(
        service="front", span=None, min_duration="100ms", error=True, lookback="1h", limit=5
    )
    assert params == {
        "limit": "5",
        "lookback": "3600000",
        "serviceName": "front",
        "minDuration": "100000",
        "annotationQuery": "error",
    }


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A control plane with the trace routes, in a thread with its own loop."""
    port = free_port()
    servers: list[uvicorn.Server] = []

    async def serve() -> None:
        ctx = ServerContext(store=open_memory_store(), settings=ServerSettings(store="memory"))
        app = create_app(ctx)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None)
        servers.append(uvicorn.Server(config))
        await servers[0].serve()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (servers and servers[0].started) and time.monotonic() < deadline:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    body = json.dumps([json.loads(_span_json(s)) for s in TRACE])
    response = httpx2.post(
        f"{url}/api/v2/spans", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202
    yield url
    servers[0].should_exit = True
    thread.join(10)


def _span_json(span: Span) -> str:
    import msgspec

    return msgspec.json.encode(span).decode()


def cli() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    trace_cli.register(app)
    return app


def test_crossway_trace_prints_a_waterfall(server_url: str) -> None:
    result = CliRunner().invoke(cli(), ["trace", "aa", "--url", server_url], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "5 spans" in out
    assert "2 services" in out
    assert "1 error" in out
    for name in ("op1", "op2", "op3", "op4", "op9"):
        assert name in out
    assert "✗ boom" in out
    assert out.index("op2") < out.index("op4") < out.index("op3")


def test_crossway_trace_json_and_unknown_ids(server_url: str) -> None:
    result = CliRunner().invoke(cli(), ["trace", "aa", "--url", server_url, "--json"])
    assert len(json.loads(result.output)) == 5
    missing = CliRunner().invoke(cli(), ["trace", "abc123", "--url", server_url])
    assert missing.exit_code == 1
    assert "not stored" in missing.output


def test_crossway_traces_lists_matches(server_url: str) -> None:
    runner = CliRunner()
    found = runner.invoke(
        cli(), ["traces", "--service", "billing", "--error", "--url", server_url],
        env={"COLUMNS": "160"},
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    assert "00000000000000aa" in found.output
    assert "front: op1" in found.output
    none = runner.invoke(cli(), ["traces", "--min-duration", "10s", "--url", server_url])
    assert "no traces match" in none.output
    bad = runner.invoke(cli(), ["traces", "--min-duration", "soon", "--url", server_url])
    assert bad.exit_code == 1
    assert "--min-duration" in bad.output


def test_pasted_ids_and_narrow_terminals(server_url: str) -> None:
    runner = CliRunner()
    pasted = runner.invoke(cli(), ["trace", "AA\n", "--url", server_url, "--json"])
    assert pasted.exit_code == 0, pasted.output
    assert len(json.loads(pasted.output)) == 5
    bad = runner.invoke(cli(), ["trace", "not-an-id", "--url", server_url])
    assert bad.exit_code == 1
    assert "not a trace id" in bad.output
    assert "Traceback" not in bad.output
    # At 80 columns the id stays whole, so it can be copied into `crossway trace`.
    narrow = runner.invoke(
        cli(), ["traces", "--service", "billing", "--url", server_url], env={"COLUMNS": "80"}
    )
    assert narrow.exit_code == 0, narrow.output
    assert "00000000000000aa" in narrow.output
