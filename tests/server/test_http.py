"""json_response / read_json, through a tiny echo route added only here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.errors import InvalidArgument
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.http import (
    INDEX_HEADER,
    MalformedJSON,
    decode_json,
    json_response,
    read_json,
)
from crossway.server.settings import ServerSettings
from crossway.store.local import LocalStore


class Instance(msgspec.Struct, forbid_unknown_fields=True):
    host: str
    port: int
    tags: list[str] = []


class Lenient(msgspec.Struct):
    host: str


def echo_routes(ctx: ServerContext) -> list[BaseRoute]:
    async def echo(request: Request) -> Response:
        instance = await read_json(request, Instance)
        return json_response(instance, 201, index=await ctx.store.revision())

    async def lenient(request: Request) -> Response:
        return json_response(await read_json(request, Lenient))

    return [
        Route("/v1/test/echo", echo, methods=["POST", "PUT"]),
        Route("/v1/test/lenient", lenient, methods=["POST"]),
    ]


@pytest.fixture
async def echo(store: LocalStore) -> AsyncIterator[httpx2.AsyncClient]:
    ctx = ServerContext(store=store, settings=ServerSettings(store="memory", max_body_bytes=64))
    transport = httpx2.ASGITransport(app=create_app(ctx, extra=[echo_routes]))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_a_valid_body_round_trips_with_the_index(
    echo: httpx2.AsyncClient, store: LocalStore
) -> None:
    await store.put("/a", b"1")
    r = await echo.put("/v1/test/echo", json={"host": "10.0.0.1", "port": 80})
    assert r.status_code == 201
    assert r.headers["content-type"] == "application/json"
    assert r.headers[INDEX_HEADER] == "1"
    assert r.json() == {"host": "10.0.0.1", "port": 80, "tags": []}


@pytest.mark.parametrize(
    ("body", "code", "field", "message"),
    [
        (b'{"host": "h", "port": "80"}', "invalid_argument", "$.port", "Expected `int`, got `str`"),
        (b'{"host": "h", "port": 1, "zone": "a"}', "invalid_argument", "$.zone", "unknown field"),
        (b'{"host": "h"}', "invalid_argument", "$.port", "missing required field `port`"),
        (b'{"host": "h", "port": 1, "tags": [1]}', "invalid_argument", "$.tags[0]", "Expected"),
        (b"[1, 2]", "invalid_argument", "$", "Expected `object`, got `array`"),
        (b'{"host": "h", "port": ', "malformed_json", None, "not valid JSON"),
        (b"{bad", "malformed_json", None, "not valid JSON"),
        (b"", "malformed_json", None, "empty"),
    ],
)
async def test_bad_bodies_answer_400_naming_the_field(
    echo: httpx2.AsyncClient, body: bytes, code: str, field: str | None, message: str
) -> None:
    r = await echo.post("/v1/test/echo", content=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == code
    assert message in error["message"]
    assert error.get("field") == field
    assert "Traceback" not in r.text


async def test_a_body_over_the_limit_is_413(echo: httpx2.AsyncClient) -> None:
    r = await echo.post("/v1/test/echo", json={"host": "h" * 100, "port": 1})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_a_streamed_body_over_the_limit_is_413_too(echo: httpx2.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b'{"host": "hhhhhhhhhhhhh'

    r = await echo.post("/v1/test/echo", content=chunks())
    assert r.status_code == 413


async def test_a_struct_that_ignores_unknown_fields_is_a_programming_error(
    echo: httpx2.AsyncClient,
) -> None:
    r = await echo.post("/v1/test/lenient", json={"host": "h"})
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": r.json()["error"]["message"]}}
    with pytest.raises(TypeError, match="forbid_unknown_fields"):
        decode_json(b"{}", Lenient)


def test_json_response_without_index_has_no_index_header() -> None:
    r = json_response({"a": 1})
    assert INDEX_HEADER.lower() not in r.headers
    assert r.body == b'{"a":1}'


@settings(max_examples=300)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_bytes_decode_or_fail_with_a_400(body: bytes) -> None:
    error: InvalidArgument | None = None
    try:
        value = decode_json(body, Instance)
    except InvalidArgument as exc:  # MalformedJSON is an InvalidArgument too
        error = exc
    if error is None:
        assert isinstance(value, Instance)
    else:
        assert error.status == 400
        assert "field" in error.details or isinstance(error, MalformedJSON)


@given(
    st.fixed_dictionaries(
        {"host": st.text(), "port": st.integers()},
        optional={"tags": st.lists(st.text()), "extra": st.integers()},
    )
)
def test_unknown_fields_are_always_refused(payload: dict[str, object]) -> None:
    body = msgspec.json.encode(payload)
    if "extra" in payload:
        with pytest.raises(InvalidArgument) as caught:
            decode_json(body, Instance)
        assert caught.value.details["field"] == "$.extra"
    else:
        assert decode_json(body, Instance).host == payload["host"]
