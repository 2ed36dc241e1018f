"""Declarative typed clients: requests built from signatures, answers decoded
into pydantic models and msgspec Structs, errors mapped by status; async and
blocking, over plain httpx2 and over the Crossway transport."""

# Declared methods have `...` bodies on purpose (they are never run).
# mypy: disable-error-code="empty-body"

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Annotated, Any

import httpx2
import msgspec
import pytest
from pydantic import BaseModel, Field

from crossway.core.errors import CrosswayError
from crossway.registry.model import Instance
from crossway.sdk.declarative import (
    Api,
    ApiError,
    Body,
    ClientError,
    Header,
    HttpError,
    NotFoundError,
    Query,
    ResponseDecodeError,
    ServerError,
    ServiceUnavailableError,
    TransportFailure,
    delete,
    error_for,
    get,
    patch,
    post,
    put,
)
from crossway.sdk.transport import CrosswayTransport


class Color(enum.Enum):
    RED = "red"


class Orders(Api):
    base_url = "http://orders/v1/"

    @get("/items/{item_id}")
    async def item(self, item_id: int) -> Item: ...

    @get("/items", headers={"Accept": "application/json"})
    async def search(
        self,
        q: str,
        tags: list[str] | None = None,
        page_size: Annotated[int, Query("page-size")] = 10,
        color: Color | None = None,
        fresh: bool = False,
        request_id: Annotated[str | None, Header("X-Request-Id")] = None,
    ) -> list[Item]: ...

    @post("/items")
    async def create(self, body: NewItem) -> Item: ...

    @put("/items/{item_id}")
    async def replace(self, item_id: str, item: Annotated[Stock, Body()]) -> Stock: ...

    @patch("/items/{item_id}")
    async def touch(self, item_id: int, body: dict[str, Any]) -> dict[str, Any]: ...

    @delete("/items/{item_id}")
    async def remove(self, item_id: int) -> None: ...

    @get("/raw")
    async def raw(self) -> bytes: ...

    @get("/text")
    async def text(self) -> str: ...

    @get("/response")
    async def response(self) -> httpx2.Response: ...

    @get("/stocks")
    async def stocks(self) -> list[Stock]: ...

    @get("/items/{item_id}")
    def item_sync(self, item_id: int) -> Item: ...


class Item(BaseModel):
    id: int
    name: str
    unit_price: float = Field(alias="unitPrice", default=0.0)


class NewItem(BaseModel):
    name: str
    unit_price: float = Field(alias="unitPrice")


class Stock(msgspec.Struct):
    sku: str
    count: int


Handler = Callable[[httpx2.Request], httpx2.Response]


def recording(answer: Handler) -> tuple[list[httpx2.Request], Handler]:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answer(request)

    return seen, handler


def answer_json(body: Any, status: int = 200) -> Handler:
    return lambda request: httpx2.Response(status, json=body)


def orders(handler: Handler) -> Orders:
    return Orders(httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))


# -- requests ----------------------------------------------------------------------------------


async def test_path_parameters_fill_the_template_and_the_answer_is_decoded() -> None:
    seen, handler = recording(answer_json({"id": 7, "name": "cup", "unitPrice": 2.5}))
    item = await orders(handler).item(7)
    assert item == Item(id=7, name="cup", unitPrice=2.5)
    assert seen[0].method == "GET"
    assert str(seen[0].url) == "http://orders/v1/items/7"


async def test_path_values_are_percent_encoded() -> None:
    seen, handler = recording(answer_json({"sku": "a/b c", "count": 1}))
    await orders(handler).replace("a/b c", Stock("a/b c", 1))
    assert seen[0].url.raw_path == b"/v1/items/a%2Fb%20c"


async def test_query_parameters_and_headers() -> None:
    seen, handler = recording(answer_json([]))
    api = orders(handler)
    assert await api.search("mug", tags=["a", "b"], color=Color.RED, fresh=True) == []
    await api.search("cup", page_size=5, request_id="r-1")
    first, second = seen
    assert first.url.params.multi_items() == [
        ("q", "mug"),
        ("tags", "a"),
        ("tags", "b"),
        ("page-size", "10"),
        ("color", "red"),
        ("fresh", "true"),
    ]
    assert first.headers["accept"] == "application/json"
    assert "x-request-id" not in first.headers
    assert second.url.params["page-size"] == "5"
    assert second.headers["x-request-id"] == "r-1"


async def test_bodies_from_pydantic_msgspec_and_plain_values() -> None:
    seen, handler = recording(answer_json({"id": 1, "name": "cup"}))
    api = orders(handler)
    await api.create(NewItem(name="cup", unitPrice=3.0))
    assert json.loads(seen[0].content) == {"name": "cup", "unitPrice": 3.0}
    assert seen[0].headers["content-type"] == "application/json"
    seen2, handler2 = recording(answer_json({"sku": "x", "count": 2}))
    assert await orders(handler2).replace("x", Stock("x", 2)) == Stock("x", 2)
    assert json.loads(seen2[0].content) == {"sku": "x", "count": 2}
    seen3, handler3 = recording(answer_json({"ok": True}))
    assert await orders(handler3).touch(1, {"item": NewItem(name="n", unitPrice=1)}) == {"ok": True}
    assert json.loads(seen3[0].content) == {"item": {"name": "n", "unitPrice": 1.0}}
    assert seen3[0].method == "PATCH"


async def test_return_types() -> None:
    api = orders(lambda request: httpx2.Response(200, content=b'[{"sku":"s","count":3}]'))
    assert await api.stocks() == [Stock("s", 3)]
    assert await api.raw() == b'[{"sku":"s","count":3}]'
    assert await api.text() == '[{"sku":"s","count":3}]'
    response = await api.response()
    assert isinstance(response, httpx2.Response)
    assert response.status_code == 200
    seen, handler = recording(lambda request: httpx2.Response(204))
    await orders(handler).remove(3)
    assert seen[0].method == "DELETE"


async def test_base_urls() -> None:
    seen, handler = recording(answer_json({"id": 1, "name": "n"}))
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler), base_url="http://gw/api")
    await Orders(http, base_url="http://other").item(1)

    class Relative(Api):
        @get("/ping")
        async def ping(self) -> None: ...

    await Relative(http, headers={"X-Tenant": "t1"}).ping()
    assert [str(r.url) for r in seen] == ["http://other/items/1", "http://gw/api/ping"]
    assert seen[1].headers["x-tenant"] == "t1"


# -- errors ----------------------------------------------------------------------------------------


async def test_not_found_carries_the_services_error() -> None:
    body = {"error": {"code": "item_missing", "message": "no item 9"}}
    with pytest.raises(NotFoundError) as info:
        await orders(answer_json(body, 404)).item(9)
    error = info.value
    assert isinstance(error, ClientError)
    assert isinstance(error, CrosswayError)
    assert error.status_code == 404
    assert error.status == 404
    assert error.remote_code == "item_missing"
    assert "no item 9" in error.message
    assert "GET http://orders/v1/items/9" in error.message


@pytest.mark.parametrize(
    ("status", "kind", "as_status"),
    [
        (503, ServiceUnavailableError, 503),
        (500, ServerError, 502),
        (502, ServerError, 502),
        (418, ClientError, 502),
        (401, ClientError, 502),
        (302, HttpError, 502),
    ],
)
async def test_errors_by_status(status: int, kind: type[HttpError], as_status: int) -> None:
    with pytest.raises(kind) as info:
        await orders(answer_json({"detail": "nope"}, status)).item(1)
    assert info.value.status == as_status
    assert info.value.status_code == status


def test_error_detail_from_plain_text_and_fastapi() -> None:
    request = httpx2.Request("GET", "http://svc/x")
    text = error_for(httpx2.Response(500, text="database down", request=request))
    assert "database down" in text.message
    fastapi = error_for(httpx2.Response(422, json={"detail": [{"msg": "bad"}]}, request=request))
    assert "bad" in fastapi.message


async def test_transport_failures_and_bad_answers() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    with pytest.raises(TransportFailure) as info:
        await orders(refuse).item(1)
    assert isinstance(info.value.__cause__, httpx2.ConnectError)
    with pytest.raises(ResponseDecodeError):
        await orders(answer_json({"id": "not a number", "name": 1})).item(1)
    with pytest.raises(ResponseDecodeError):
        await orders(answer_json({"sku": 1})).stocks()
    assert issubclass(ResponseDecodeError, ApiError)


async def test_declaration_mistakes_are_type_errors() -> None:
    class Broken(Api):
        @get("/items/{item_id}")
        async def item(self, other: int) -> None: ...

    with pytest.raises(TypeError, match="item_id"):
        await Broken(httpx2.AsyncClient()).item(1)
    with pytest.raises(TypeError, match=r"httpx2\.Client"):
        Orders(httpx2.AsyncClient()).item_sync(1)
    with pytest.raises(TypeError, match=r"httpx2\.AsyncClient"):
        await Orders(httpx2.Client()).item(1)


# -- blocking -----------------------------------------------------------------------------------


def test_blocking_methods_on_a_blocking_client() -> None:
    seen, handler = recording(answer_json({"id": 3, "name": "pan"}))
    api = Orders(httpx2.Client(transport=httpx2.MockTransport(handler)))
    assert api.item_sync(3) == Item(id=3, name="pan")
    assert str(seen[0].url) == "http://orders/v1/items/3"
    failing = Orders(httpx2.Client(transport=httpx2.MockTransport(answer_json({}, 404))))
    with pytest.raises(NotFoundError):
        failing.item_sync(3)


def test_blocking_transport_failure() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    api = Orders(httpx2.Client(transport=httpx2.MockTransport(refuse)))
    with pytest.raises(TransportFailure):
        api.item_sync(1)


# -- over the Crossway transport ------------------------------------------------------------------


class TwoInstances:
    async def instances(self, service: str) -> list[Instance]:
        return [Instance(service, f"{service}-{n}", "10.0.0.1", 8000 + n) for n in (1, 2)]

    def peek(self, service: str) -> list[Instance] | None:
        return None

    def subscribe(self, service: str, callback: object) -> Callable[[], None]:
        return lambda: None


async def test_a_declared_client_calls_a_service_by_name() -> None:
    ports: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        ports.append(request.url.port or 0)
        if request.url.port == 8001:
            return httpx2.Response(503)
        return httpx2.Response(200, json={"id": 5, "name": "lamp"})

    transport = CrosswayTransport(TwoInstances(), inner=httpx2.MockTransport(handler))
    async with httpx2.AsyncClient(transport=transport) as http:
        api = Orders(http)
        for _ in range(4):
            assert await api.item(5) == Item(id=5, name="lamp")
    assert set(ports) == {8001, 8002}  # the 503s were retried on the other instance
