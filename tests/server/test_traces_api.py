"""The trace API: Zipkin v2 and OTLP ingest, the Zipkin v2 query API, and the
official OpenTelemetry SDK exporting to a real server on loopback."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest

from crossway.server.api import traces
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.telemetry.traces.store import TraceStore
from crossway.testing.services import require

from .helpers import live_server

NOW_US = int(time.time() * 1_000_000)


def span(trace: str, span_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "traceId": trace,
        "id": span_id,
        "name": "get",
        "timestamp": NOW_US,
        "duration": 1000,
        "localEndpoint": {"serviceName": "front"},
    }
    body.update(fields)
    return body


@pytest.fixture
async def api(ctx: ServerContext) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(ctx)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_zipkin_ingest_is_202_and_the_trace_comes_back(api: httpx2.AsyncClient) -> None:
    sent = [span("a1", "1"), span("a1", "2", parentId="1", name="DB", kind="CLIENT")]
    response = await api.post("/api/v2/spans", json=sent)
    assert response.status_code == 202
    trace = (await api.get("/api/v2/trace/00000000000000A1")).json()
    assert [s["id"] for s in trace] == ["0000000000000001", "0000000000000002"]
    assert trace[1]["parentId"] == "0000000000000001"
    assert trace[1]["name"] == "db"  # lower-cased as Zipkin does


async def test_gzip_bodies_are_accepted(api: httpx2.AsyncClient) -> None:
    body = gzip.compress(json.dumps([span("b2", "1")]).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await api.post("/api/v2/spans", content=body, headers=headers)
    assert response.status_code == 202
    assert (await api.get("/api/v2/trace/b2")).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "$"),
        (b"{not json", "$"),
        (b'{"traceId": "1"}', "$"),
        (b'[{"traceId": "xyz", "id": "1"}]', "$[0].traceId"),
        (b'[{"traceId": "1", "id": 7}]', "$[0].id"),
        (b'[{"traceId": "1", "id": "1", "kind": "SIDEWAYS"}]', "$[0].kind"),
        (b'[{"traceId": "1", "id": "1", "timestamp": -4}]', "$[0].timestamp"),
        (b'[{"traceId": "1", "id": "1", "tags": {"a": 1}}]', "$[0].tags[...]"),
    ],
)
async def test_malformed_zipkin_is_a_400_naming_the_field(
    api: httpx2.AsyncClient, body: bytes, field: str
) -> None:
    response = await api.post(
        "/api/v2/spans", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_spans"
    assert error["field"] == field
    assert "Traceback" not in response.text


async def test_a_bad_span_stores_nothing_of_its_batch(
    api: httpx2.AsyncClient, ctx: ServerContext
) -> None:
    batch = [span("c3", "1"), span("c3", "2"), {"traceId": "c3", "id": "not hex"}]
    response = await api.post("/api/v2/spans", json=batch)
    assert response.status_code == 400
    assert ctx.service(TraceStore).span_count == 0
    assert (await api.get("/api/v2/trace/c3")).status_code == 404


async def test_unsupported_media_and_encoding_are_415(api: httpx2.AsyncClient) -> None:
    proto = {"Content-Type": "application/x-protobuf"}
    assert (await api.post("/api/v2/spans", content=b"\x0a", headers=proto)).status_code == 415
    headers = {"Content-Type": "application/json", "Content-Encoding": "br"}
    assert (await api.post("/api/v2/spans", content=b"[]", headers=headers)).status_code == 415
    xml = {"Content-Type": "application/xml"}
    assert (await api.post("/v1/traces", content=b"<a/>", headers=xml)).status_code == 415


async def test_bad_gzip_is_400(api: httpx2.AsyncClient) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await api.post("/api/v2/spans", content=b"not gzip at all", headers=headers)
    assert response.status_code == 400


async def test_gzip_bombs_are_refused(
    api: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for route in api._transport.app.routes:  # type: ignore[attr-defined]
        endpoint = getattr(route, "endpoint", None)
        owner = getattr(endpoint, "__self__", None)
        if isinstance(owner, traces.TracesApi):
            monkeypatch.setattr(owner, "max_body", 10_000)
    bomb = gzip.compress(b"[" + b" " * 1_000_000 + b"]")
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await api.post("/api/v2/spans", content=bomb, headers=headers)
    assert response.status_code == 413


async def test_services_span_names_and_remote_services(api: httpx2.AsyncClient) -> None:
    await api.post(
        "/api/v2/spans",
        json=[
            span("d4", "1", name="GET /orders"),
            span("d4", "2", parentId="1", name="query", remoteEndpoint={"serviceName": "PG"}),
            span("d5", "1", localEndpoint={"serviceName": "Billing"}, name="charge"),
        ],
    )
    assert (await api.get("/api/v2/services")).json() == ["billing", "front"]
    names = await api.get("/api/v2/spans", params={"serviceName": "FRONT"})
    assert names.json() == ["get /orders", "query"]
    remote = await api.get("/api/v2/remoteServices", params={"serviceName": "front"})
    assert remote.json() == ["pg"]
    assert (await api.get("/api/v2/spans")).status_code == 400


async def test_trace_query_filters(api: httpx2.AsyncClient) -> None:
    await api.post(
        "/api/v2/spans",
        json=[
            span("e1", "1", duration=500_000, tags={"http.method": "GET"}),
            span("e2", "1", duration=2_000, tags={"error": "timeout"}),
            span("e3", "1", duration=50, localEndpoint={"serviceName": "billing"}),
        ],
    )

    async def ids(**params: Any) -> list[str]:
        response = await api.get("/api/v2/traces", params=params)
        assert response.status_code == 200, response.text
        return sorted(trace[0]["traceId"] for trace in response.json())

    assert len(await ids()) == 3
    assert await ids(serviceName="front") == ["00000000000000e1", "00000000000000e2"]
    assert await ids(minDuration=100_000) == ["00000000000000e1"]
    assert await ids(minDuration=1_000, maxDuration=3_000) == ["00000000000000e2"]
    assert await ids(annotationQuery="error") == ["00000000000000e2"]
    assert await ids(annotationQuery="http.method=GET") == ["00000000000000e1"]
    assert await ids(annotationQuery="http.method=POST") == []
    assert len(await ids(limit=1)) == 1
    assert await ids(endTs=NOW_US // 1000 - 3_600_000, lookback=60_000) == []
    response = await api.get("/api/v2/traces", params={"maxDuration": 5})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "maxDuration"


async def test_unknown_trace_is_404_and_bad_id_is_400(api: httpx2.AsyncClient) -> None:
    assert (await api.get("/api/v2/trace/abcdef")).status_code == 404
    assert (await api.get("/api/v2/trace/nothex")).status_code == 400


async def test_trace_many_and_autocomplete(api: httpx2.AsyncClient) -> None:
    await api.post("/api/v2/spans", json=[span("f1", "1"), span("f2", "1")])
    response = await api.get("/api/v2/traceMany", params={"traceIds": "f1,f2,f3"})
    assert sorted(t[0]["traceId"][-2:] for t in response.json()) == ["f1", "f2"]
    assert (await api.get("/api/v2/traceMany")).status_code == 400
    assert (await api.get("/api/v2/autocompleteKeys")).json() == []
    assert (await api.get("/api/v2/autocompleteValues", params={"key": "x"})).json() == []


async def test_dependencies_link_caller_to_callee(api: httpx2.AsyncClient) -> None:
    await api.post(
        "/api/v2/spans",
        json=[
            span("a9", "1", kind="SERVER"),
            span("a9", "2", parentId="1", kind="CLIENT"),
            span(
                "a9",
                "3",
                parentId="2",
                kind="SERVER",
                localEndpoint={"serviceName": "billing"},
                tags={"error": ""},
            ),
        ],
    )
    response = await api.get("/api/v2/dependencies", params={"endTs": NOW_US // 1000 + 1000})
    assert response.json() == [
        {"parent": "front", "child": "billing", "callCount": 1, "errorCount": 1}
    ]


OTLP_JSON = {
    "resourceSpans": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
            "scopeSpans": [
                {
                    "scope": {"name": "manual"},
                    "spans": [
                        {
                            "traceId": "5b8efff798038103d269b633813fc60c",
                            "spanId": "eee19b7ec3c1b174",
                            "name": "checkout",
                            "kind": 2,
                            "startTimeUnixNano": str(NOW_US * 1000),
                            "endTimeUnixNano": str(NOW_US * 1000 + 3_000_000),
                            "status": {"code": 2, "message": "card declined"},
                        },
                        {
                            "traceId": "W47/95gDgQPSabYzgT/GDA==",
                            "spanId": "7u1bfz4cc2Q=",
                            "parentSpanId": "eee19b7ec3c1b174",
                            "name": "charge",
                            "kind": "SPAN_KIND_CLIENT",
                            "startTimeUnixNano": NOW_US * 1000 + 1000,
                            "endTimeUnixNano": NOW_US * 1000 + 2_000_000,
                            "attributes": [
                                {"key": "peer.service", "value": {"stringValue": "bank"}},
                                {"key": "retries", "value": {"intValue": "2"}},
                            ],
                        },
                    ],
                }
            ],
        }
    ]
}


async def test_otlp_json_ingest(api: httpx2.AsyncClient) -> None:
    response = await api.post("/v1/traces", json=OTLP_JSON)
    assert response.status_code == 200
    assert response.json() == {}
    trace = (await api.get("/api/v2/trace/5b8efff798038103d269b633813fc60c")).json()
    by_name = {s["name"]: s for s in trace}
    assert by_name["checkout"]["tags"]["error"] == "card declined"
    assert by_name["charge"]["parentId"] == "eee19b7ec3c1b174"
    assert by_name["charge"]["id"] == "eeed5b7f3e1c7364"
    assert by_name["charge"]["remoteEndpoint"] == {"serviceName": "bank"}
    assert by_name["charge"]["tags"]["retries"] == "2"


async def test_malformed_otlp_is_400(api: httpx2.AsyncClient) -> None:
    bad = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "12", "spanId": "x"}]}]}]}
    response = await api.post("/v1/traces", json=bad)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "$.resourceSpans[0].scopeSpans[0].spans[0].traceId"
    protobuf = {"Content-Type": "application/x-protobuf"}
    if importlib.util.find_spec("opentelemetry.proto") is not None:
        garbage = await api.post("/v1/traces", content=b"\xff\xff\xff", headers=protobuf)
        assert garbage.status_code == 400


async def test_metrics_report_the_store(api: httpx2.AsyncClient) -> None:
    await api.post("/api/v2/spans", json=[span("77", "1")])
    text = (await api.get("/metrics")).text
    assert "crossway_trace_store_spans 1.0" in text
    assert 'crossway_trace_spans_total{outcome="stored"} 1.0' in text


# The must-show: the official OpenTelemetry SDK, both exporters, a real server.


def _otel_available() -> bool:
    names = (
        "opentelemetry.sdk.trace",
        "opentelemetry.exporter.zipkin.json",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    )
    return all(_importable(name) for name in names)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _zipkin_exporter(base: str) -> Any:
    from opentelemetry.exporter.zipkin.json import ZipkinExporter

    return ZipkinExporter(endpoint=f"{base}/api/v2/spans")


def _otlp_exporter(base: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{base}/v1/traces")


def _export_parent_and_child(exporter: Any, service: str) -> tuple[str, str, str]:
    """Run the SDK synchronously: a parent with a child, exported and flushed.
    Returns (trace id, parent span id, child span id) in hex."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("crossway.tests")
    with (
        tracer.start_as_current_span("parent") as parent,
        tracer.start_as_current_span("child") as child,
    ):
        child.set_attribute("order.id", 42)
    provider.shutdown()
    parent_ctx, child_ctx = parent.get_span_context(), child.get_span_context()
    return (
        f"{parent_ctx.trace_id:032x}",
        f"{parent_ctx.span_id:016x}",
        f"{child_ctx.span_id:016x}",
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("make_exporter", "service"), [(_zipkin_exporter, "zipkin-sdk"), (_otlp_exporter, "otlp-sdk")]
)
async def test_the_official_otel_sdk_exports_and_zipkin_queries_return_the_tree(
    ctx: ServerContext, make_exporter: Callable[[str], Any], service: str
) -> None:
    require(
        _otel_available(), "the OpenTelemetry SDK and its Zipkin/OTLP exporters are not installed"
    )
    app = create_app(ctx)
    async with live_server(app) as base:
        exporter = make_exporter(base)
        trace_id, parent_id, child_id = await asyncio.to_thread(
            _export_parent_and_child, exporter, service
        )
        async with httpx2.AsyncClient(base_url=base) as client:
            trace = (await client.get(f"/api/v2/trace/{trace_id}")).json()
            found = await client.get("/api/v2/traces", params={"serviceName": service})
            services = (await client.get("/api/v2/services")).json()
    by_id = {s["id"]: s for s in trace}
    assert set(by_id) == {parent_id, child_id}
    assert by_id[child_id]["parentId"] == parent_id
    assert "parentId" not in by_id[parent_id]
    assert by_id[child_id]["localEndpoint"]["serviceName"] == service
    assert by_id[child_id]["tags"]["order.id"] == "42"
    assert [[s["traceId"] for s in t][:1] for t in found.json()] == [[trace_id]]
    assert service in services
