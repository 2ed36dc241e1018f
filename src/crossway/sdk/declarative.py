"""Declarative typed clients (Feign-style): declare an interface, call it.

    class Orders(Api):
        base_url = "http://orders"               # a service name: resolved by discovery

        @get("/items/{item_id}")
        async def item(self, item_id: int) -> Item: ...

        @post("/items")
        async def create(self, body: NewItem, trace: Annotated[str, Header("X-Trace")]) -> Item: ...

        @get("/items")
        def search(self, q: str, limit: int = 10) -> list[Item]: ...   # blocking

    orders = Orders(client.http())               # an httpx2.AsyncClient (or Client)
    item = await orders.item(42)

Theory of operation
-------------------
A decorated method's body is never run: its signature is the contract.
On the first call it is read once into a `_Plan` (type hints resolved then,
so models may be defined after the class) and every later call only binds
arguments and sends:

- a parameter named in the path template (`{item_id}`) fills it, percent-encoded;
- the parameter named `body`, or annotated `Annotated[T, Body()]`, is the JSON
  body: a pydantic model (by alias, JSON mode), a msgspec Struct, or anything
  msgspec encodes;
- `Annotated[T, Header("X-Name")]` is a request header; `Annotated[T,
  Query("name")]` renames a query parameter; every other parameter is a query
  parameter (None is left out, a list repeats the name);
- the return annotation decodes a 2xx body: a pydantic model or any type
  involving one goes through pydantic, anything else through msgspec
  (`list[Item]`, dicts, Structs, ints …); `None` ignores the body;
  `bytes`/`str` give it raw; `httpx2.Response` gives the response itself.

`async def` methods need an `httpx2.AsyncClient`, `def` methods an
`httpx2.Client`; a mismatch is a TypeError at call time. (mypy reports the
`...` bodies as `empty-body`: disable that code for the module declaring
the interface, or write the bodies as `raise NotImplementedError`.)

Errors: a non-2xx answer raises an `HttpError` subclass chosen by status
(`NotFoundError` for 404, `ServiceUnavailableError` for 503 …, else
`ClientError`/`ServerError`), carrying the response and the server's error
message; a transport failure raises `TransportFailure` (its cause chained);
an undecodable body raises `ResponseDecodeError`. All are `ApiError`, a
`CrosswayError`. Errors of the resilience layer under the client
(`CircuitOpenError`, `BulkheadFullError`, `DeadlineExceeded`,
`NoInstancesError`) pass through as they are. Cancellation propagates.
"""

from __future__ import annotations

import datetime
import enum
import functools
import inspect
import re
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar, cast
from urllib.parse import quote

import httpx2
import msgspec

from crossway.core.errors import CrosswayError

F = TypeVar("F", bound=Callable[..., Any])
_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")
_JSON = {"content-type": "application/json"}

# -- markers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """`Annotated[str, Header("X-Request-Id")]`: send the argument as this header."""

    name: str


@dataclass(frozen=True, slots=True)
class Query:
    """`Annotated[int, Query("page-size")]`: a query parameter named differently."""

    name: str


@dataclass(frozen=True, slots=True)
class Body:
    """`Annotated[Model, Body()]`: the JSON body (for a parameter not named `body`)."""


# -- errors ------------------------------------------------------------------------------


class ApiError(CrosswayError):
    """A declared call failed."""

    code = "api_error"
    status = 502


class TransportFailure(ApiError):
    """The request could not be sent or its answer not received."""

    code = "transport_error"


class ResponseDecodeError(ApiError):
    """A 2xx answer whose body does not fit the declared return type."""

    code = "bad_response"


class HttpError(ApiError):
    """The service answered with a status outside 2xx.

    `status_code` and `response` are the answer's; `remote_code` is the
    service's own error code when it sent Crossway's `{"error": {"code"}}`.
    As an error of this service, it maps to 502 (the dependency failed),
    except where the status keeps its meaning for the caller's caller (404,
    409, 429, 503, 504).
    """

    code = "http_error"

    def __init__(self, response: httpx2.Response) -> None:
        remote_code, detail = _error_detail(response)
        request = response.request
        super().__init__(
            f"{request.method} {request.url} answered {response.status_code}: {detail}",
            status_code=response.status_code,
            remote_code=remote_code,
        )
        self.response = response
        self.status_code = response.status_code
        self.remote_code = remote_code


class ClientError(HttpError):
    code = "http_client_error"


class ServerError(HttpError):
    code = "http_server_error"


class BadRequestError(ClientError):
    code = "bad_request"


class UnauthorizedError(ClientError):
    code = "unauthorized"


class ForbiddenError(ClientError):
    code = "forbidden"


class NotFoundError(ClientError):
    code = "not_found"
    status = 404


class ConflictError(ClientError):
    code = "conflict"
    status = 409


class UnprocessableEntityError(ClientError):
    code = "unprocessable_entity"


class TooManyRequestsError(ClientError):
    code = "too_many_requests"
    status = 429


class InternalServerError(ServerError):
    code = "internal_server_error"


class BadGatewayError(ServerError):
    code = "bad_gateway"


class ServiceUnavailableError(ServerError):
    code = "service_unavailable"
    status = 503


class GatewayTimeoutError(ServerError):
    code = "gateway_timeout"
    status = 504


_BY_STATUS: dict[int, type[HttpError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: TooManyRequestsError,
    500: InternalServerError,
    502: BadGatewayError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def error_for(response: httpx2.Response) -> HttpError:
    """The `HttpError` subclass for a non-2xx response (its body read)."""
    status = response.status_code
    kind = _BY_STATUS.get(status)
    if kind is None:
        kind = ClientError if 400 <= status < 500 else ServerError if status >= 500 else HttpError
    return kind(response)


def _error_detail(response: httpx2.Response) -> tuple[str | None, str]:
    """(the server's error code, a one-line message) from Crossway's error
    shape, FastAPI's `{"detail": ...}`, or the start of the text."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("code")), str(error.get("message", ""))
        if "detail" in body:
            return None, str(body["detail"])[:200]
    return None, response.text[:200]


# -- encoding ------------------------------------------------------------------------------


def _enc_hook(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # a pydantic model inside a container
    if callable(dump):
        return dump(mode="json", by_alias=True)
    raise NotImplementedError(f"cannot encode {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode_body(value: Any) -> bytes:
    dump_json = getattr(value, "model_dump_json", None)
    if callable(dump_json):
        return cast(str, dump_json(by_alias=True)).encode()
    return _encoder.encode(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


# -- decoding ------------------------------------------------------------------------------


def _involves_pydantic(tp: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    if pydantic is None:
        return False  # nothing can be a pydantic model if pydantic was never imported
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return True
    return any(_involves_pydantic(arg) for arg in typing.get_args(tp))


def _decoder(tp: Any) -> Callable[[httpx2.Response], Any]:
    """How a 2xx response becomes the declared return value."""
    if tp is None or tp is type(None) or tp is inspect.Signature.empty:
        return lambda response: None
    if tp is httpx2.Response:
        return lambda response: response
    if tp is bytes:
        return lambda response: response.content
    if tp is str:
        return lambda response: response.text
    if _involves_pydantic(tp):
        from pydantic import TypeAdapter

        adapter: Any = TypeAdapter(tp)
        return lambda response: adapter.validate_json(response.content)
    decoder = msgspec.json.Decoder(tp)
    return lambda response: decoder.decode(response.content)


def _decode(decode: Callable[[httpx2.Response], Any], response: httpx2.Response) -> Any:
    try:
        return decode(response)
    except (ValueError, msgspec.DecodeError) as exc:  # pydantic's ValidationError is a ValueError
        request = response.request
        raise ResponseDecodeError(
            f"{request.method} {request.url}: the answer does not fit the declared type: {exc}"
        ) from exc


# -- plans -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    kind: str  # "path" | "query" | "header" | "body"
    wire: str  # the name on the wire


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: str
    params: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    content: bytes | None


class _Plan:
    """One declared method, read once: how arguments become a request and a
    response becomes the result."""

    def __init__(
        self, fn: Callable[..., Any], method: str, path: str, headers: Mapping[str, str]
    ) -> None:
        self.name = fn.__qualname__
        self.method, self.path, self.headers = method, path, dict(headers)
        self.signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        self.params = [
            _classify(name, hints.get(name), path)
            for name in list(self.signature.parameters)[1:]  # not self
        ]
        missing = set(_PATH_PARAM.findall(path)) - {p.name for p in self.params}
        if missing:
            raise TypeError(f"{self.name}: no parameter for {sorted(missing)} in {path!r}")
        returns = hints.get("return", inspect.Signature.empty)
        self.decode = _decoder(_strip_annotated(returns))

    def build(self, api: Api, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Request:
        bound = self.signature.bind(api, *args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        path_values: dict[str, str] = {}
        query: list[tuple[str, str]] = []
        headers = {**api.headers, **self.headers}
        content = None
        for param in self.params:
            value = values[param.name]
            if param.kind == "path":
                path_values[param.name] = quote(_text(value), safe="")
            elif param.kind == "body":
                content = None if value is None else encode_body(value)
            elif value is None:
                continue
            elif param.kind == "header":
                headers[param.wire] = _text(value)
            elif isinstance(value, list | tuple | set | frozenset):
                query.extend((param.wire, _text(v)) for v in value)
            else:
                query.append((param.wire, _text(value)))
        if content is not None:
            headers = {**_JSON, **headers}
        url = api.root_url + self.path.format(**path_values)
        return _Request(self.method, url, tuple(query), headers, content)


def _strip_annotated(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _classify(name: str, hint: Any, path: str) -> _Param:
    markers = typing.get_args(hint)[1:] if typing.get_origin(hint) is Annotated else ()
    for marker in markers:
        if isinstance(marker, Header):
            return _Param(name, "header", marker.name)
        if isinstance(marker, Query):
            return _Param(name, "query", marker.name)
        if isinstance(marker, Body):
            return _Param(name, "body", name)
    if f"{{{name}}}" in path:
        return _Param(name, "path", name)
    if name == "body":
        return _Param(name, "body", name)
    return _Param(name, "query", name)


# -- the decorators and the base class ---------------------------------------------------------


class Api:
    """Base class of declarative clients; see the module header.

    `http` is the httpx2 client to send with (its base_url is used when the
    class declares none); `base_url` overrides the class's; `headers` are
    added to every request.
    """

    base_url: ClassVar[str] = ""

    def __init__(
        self,
        http: httpx2.AsyncClient | httpx2.Client,
        *,
        base_url: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.http = http
        chosen = type(self).base_url if base_url is None else base_url
        self.root_url = chosen.rstrip("/")
        self.headers = dict(headers or {})


def _lazy_plan(
    fn: Callable[..., Any], method: str, path: str, headers: Mapping[str, str]
) -> Callable[[], _Plan]:
    @functools.cache
    def plan() -> _Plan:
        return _Plan(fn, method, path, headers)

    return plan


def _check(http: Any, wanted: type[Any], name: str) -> None:
    if not isinstance(http, wanted):
        kind = "an httpx2.AsyncClient" if wanted is httpx2.AsyncClient else "an httpx2.Client"
        raise TypeError(f"{name} needs {kind}; got {type(http).__name__}")


def endpoint(
    method: str, path: str, *, headers: Mapping[str, str] | None = None
) -> Callable[[F], F]:
    """Declare `method path` (`@endpoint("GET", "/items/{id}")`); see `get` & co."""

    def decorate(fn: F) -> F:
        plan = _lazy_plan(fn, method.upper(), path, headers or {})
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def call_async(self: Api, *args: Any, **kwargs: Any) -> Any:
                p = plan()
                _check(self.http, httpx2.AsyncClient, p.name)
                req = p.build(self, args, kwargs)
                try:
                    response = await cast(httpx2.AsyncClient, self.http).request(
                        req.method,
                        req.url,
                        params=req.params,
                        headers=req.headers,
                        content=req.content,
                    )
                except httpx2.TransportError as exc:
                    raise TransportFailure(f"{req.method} {req.url}: {exc}") from exc
                return _result(p, response)

            return cast(F, call_async)

        @functools.wraps(fn)
        def call(self: Api, *args: Any, **kwargs: Any) -> Any:
            p = plan()
            _check(self.http, httpx2.Client, p.name)
            req = p.build(self, args, kwargs)
            try:
                response = cast(httpx2.Client, self.http).request(
                    req.method,
                    req.url,
                    params=req.params,
                    headers=req.headers,
                    content=req.content,
                )
            except httpx2.TransportError as exc:
                raise TransportFailure(f"{req.method} {req.url}: {exc}") from exc
            return _result(p, response)

        return cast(F, call)

    return decorate


def _result(plan: _Plan, response: httpx2.Response) -> Any:
    if not response.is_success:
        raise error_for(response)
    return _decode(plan.decode, response)


def get(path: str, *, headers: Mapping[str, str] | None = None) -> Callable[[F], F]:
    return endpoint("GET", path, headers=headers)


def post(path: str, *, headers: Mapping[str, str] | None = None) -> Callable[[F], F]:
    return endpoint("POST", path, headers=headers)


def put(path: str, *, headers: Mapping[str, str] | None = None) -> Callable[[F], F]:
    return endpoint("PUT", path, headers=headers)


def patch(path: str, *, headers: Mapping[str, str] | None = None) -> Callable[[F], F]:
    return endpoint("PATCH", path, headers=headers)


def delete(path: str, *, headers: Mapping[str, str] | None = None) -> Callable[[F], F]:
    return endpoint("DELETE", path, headers=headers)


def head(path: str, *, headers: Mapping[str, str] | None = None) -> Callable[[F], F]:
    return endpoint("HEAD", path, headers=headers)
