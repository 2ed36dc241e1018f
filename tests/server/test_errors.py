"""The error boundary: every failure is JSON, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx2
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from crossway.core.errors import Conflict
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.errors import INTERNAL_MESSAGE

from .helpers import live_server


def failing_routes(ctx: ServerContext) -> list[BaseRoute]:
    async def crash(request: Request) -> Response:
        raise RuntimeError("secret detail /etc/shadow")

    async def conflict(request: Request) -> Response:
        raise Conflict("the name is taken", name="orders")

    async def teapot(request: Request) -> Response:
        raise HTTPException(418)

    async def half(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("mid-stream")

        return StreamingResponse(body())

    return [
        Route("/v1/test/crash", crash),
        Route("/v1/test/conflict", conflict, methods=["PUT"]),
        Route("/v1/test/teapot", teapot),
        Route("/v1/test/half", half),
    ]


@pytest.fixture
async def api(ctx: ServerContext) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=create_app(ctx, extra=[failing_routes]))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_unknown_path_is_a_json_404(api: httpx2.AsyncClient) -> None:
    r = await api.get("/no/such/thing")
    assert r.status_code == 404
    assert r.json() == {
        "error": {"code": "not_found", "message": "nothing is served at /no/such/thing"}
    }


async def test_wrong_method_is_a_json_405_with_allow(api: httpx2.AsyncClient) -> None:
    r = await api.post("/healthz", content=b"{not json")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["allow"]


async def test_an_unexpected_exception_is_a_500_without_details(
    api: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="crossway.server"):
        r = await api.get("/v1/test/crash")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": INTERNAL_MESSAGE}}
    assert "secret" not in r.text
    assert "RuntimeError" not in r.text
    logged = [rec.exc_info[1] for rec in caplog.records if rec.exc_info]
    assert [str(exc) for exc in logged] == ["secret detail /etc/shadow"]


async def test_a_crossway_error_keeps_its_status_code_and_details(api: httpx2.AsyncClient) -> None:
    r = await api.put("/v1/test/conflict")
    assert r.status_code == 409
    assert r.json() == {
        "error": {"code": "conflict", "message": "the name is taken", "name": "orders"}
    }


async def test_other_http_exceptions_get_the_json_shape(api: httpx2.AsyncClient) -> None:
    r = await api.get("/v1/test/teapot")
    assert r.status_code == 418
    assert r.json()["error"]["code"] == "i_m_a_teapot"


async def test_a_failure_after_the_response_started_is_logged_not_rewritten(
    ctx: ServerContext, caplog: pytest.LogCaptureFixture
) -> None:
    # A real server: the client sees a truncated body, never a second status.
    app = create_app(ctx, extra=[failing_routes])
    with caplog.at_level(logging.ERROR, logger="crossway.server"):
        async with live_server(app) as url, httpx2.AsyncClient(base_url=url) as client:
            with pytest.raises(httpx2.RemoteProtocolError):
                await client.get("/v1/test/half")
    assert any("abandoned" in rec.getMessage() for rec in caplog.records)
