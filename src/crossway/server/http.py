"""Request and response helpers every API module uses.

- `json_response(obj, status, index=rev)`: msgspec-encoded JSON; `index` sets
  `X-Crossway-Index`, the store revision the answer reflects (every read sets
  it, so a client can long-poll or watch from exactly there).
- `read_json(request, Struct)`: the body decoded into a msgspec Struct, or a
  400 that names the offending field (`$.port`), or 413 when too large
  (`decode_json` is the same decoding for bytes already in hand).
- `error_response(exc)`: any `CrosswayError` as `{"error": {"code", "message"}}`.
- `context_of(request)`: the `ServerContext` the app was built with.
- `QuietRoute`: a route whose successful answers are logged at debug level
  (heartbeats: at thousands a second they would drown the access log).
- `Endpoint(handler)`: a route endpoint that calls `handler(request)` and
  sends its response, without Starlette's per-request exception-handler
  plumbing (a wrapper and a wrapped `send` per request); exceptions go
  straight to `ErrorBoundary`, which is where they end up anyway. For the
  routes that serve tens of thousands of requests a second.

`json_response` builds its header list directly (`JsonResponse`) rather than
through Starlette's general header normalisation: every answer of the API
goes through it. `msgspec.Raw(body)` passes JSON that is already encoded.

Invariant: nothing here ever puts a traceback or a Python repr into a response;
messages are written for the API's users.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from crossway.core.errors import CrosswayError, InvalidArgument
from crossway.server.context import ServerContext

INDEX_HEADER = "X-Crossway-Index"
_INDEX = INDEX_HEADER.lower().encode()
_JSON = b"application/json"
DEFAULT_MAX_BODY = 1 << 20

S = TypeVar("S", bound=msgspec.Struct)

_encoder = msgspec.json.Encoder()
_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


class MalformedJSON(InvalidArgument):
    code = "malformed_json"


class PayloadTooLarge(CrosswayError):
    code = "payload_too_large"
    status = 413


class QuietRoute(Route):
    """A `Route` whose successful answers the access log writes at debug level."""


class Endpoint:
    """An ASGI endpoint around `handler(request) -> Response` (see the module
    header). Exceptions propagate; cancellation reaches the handler."""

    __slots__ = ("handler",)

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


class JsonResponse(Response):
    """A `Response` of JSON bytes with its raw header list built directly."""

    media_type = "application/json"

    def __init__(
        self,
        body: bytes,
        status_code: int = 200,
        *,
        index: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # Deliberately not Response.__init__: these attributes are all that
        # Response.__call__ and .headers use, and this is the whole cost.
        self.status_code = status_code
        self.body = body
        self.background = None
        raw = [(b"content-length", b"%d" % len(body)), (b"content-type", _JSON)]
        if index is not None:
            raw.append((_INDEX, b"%d" % index))
        if headers:
            raw.extend(
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
            )
        self.raw_headers = raw


def json_response(
    content: Any,
    status: int = 200,
    *,
    index: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """`content` (dicts, lists, Structs, `msgspec.Raw` …) as JSON; `index`
    becomes `X-Crossway-Index`."""
    body = bytes(content) if isinstance(content, msgspec.Raw) else _encoder.encode(content)
    return JsonResponse(body, status, index=index, headers=headers)


def error_response(exc: CrosswayError, *, headers: Mapping[str, str] | None = None) -> Response:
    return json_response(exc.to_json(), exc.status, headers=headers)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def context_of(request: Request) -> ServerContext:
    """The `ServerContext` that `create_app` stored on the application."""
    ctx: ServerContext = request.app.state.ctx
    return ctx


async def read_json(request: Request, kind: type[S], *, max_bytes: int | None = None) -> S:
    """Decode the request body into `kind`.

    `kind` must be declared with `forbid_unknown_fields=True`, so a misspelt
    field is an error rather than silently ignored (`TypeError` otherwise, a
    programming error). Raises `MalformedJSON` (400) when the body is not JSON,
    `InvalidArgument` (400, with `field` set to the JSON path) when it does not
    fit `kind`, `PayloadTooLarge` (413) beyond `max_bytes` (default: the
    server's `max_body_bytes`). If the client goes away mid-body, Starlette's
    `ClientDisconnect` propagates and nothing is decoded.
    """
    _decoder_for(kind)  # a wrong `kind` fails before the body is read
    limit = max_bytes if max_bytes is not None else _max_body(request)
    return decode_json(await _read_body(request, limit), kind)


def decode_json(body: bytes, kind: type[S]) -> S:
    """`body` decoded into `kind` (pure; what `read_json` does once it has the
    bytes). Raises `MalformedJSON` or `InvalidArgument` as `read_json` does."""
    decoder = _decoder_for(kind)
    if not body.strip():
        raise MalformedJSON("the request body is empty; expected a JSON object")
    try:
        value: S = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(
            f"the request body is not valid JSON: {_lower_first(str(exc))}"
        ) from None
    return value


@functools.cache
def _decoder_for(kind: type[Any]) -> msgspec.json.Decoder[Any]:
    config = getattr(kind, "__struct_config__", None)
    if config is None or not config.forbid_unknown_fields:
        raise TypeError(f"{kind.__name__} must be a msgspec Struct with forbid_unknown_fields=True")
    return msgspec.json.Decoder(kind)


def _max_body(request: Request) -> int:
    state = getattr(request.app, "state", None)
    ctx = getattr(state, "ctx", None)
    return ctx.settings.max_body_bytes if ctx is not None else DEFAULT_MAX_BODY


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {limit} bytes")


def _invalid(message: str) -> InvalidArgument:
    """msgspec's message with the field it is about: "Expected `int`, got `str`
    - at `$.port`" names `$.port`; "Object contains unknown field `x`" names `$.x`."""
    at = _AT_PATH.search(message)
    path = at.group(1) if at else "$"
    named = _NAMED_FIELD.search(message)
    field = f"{path}.{named.group(1)}" if named else path
    return InvalidArgument(message, field=field)


def _lower_first(text: str) -> str:
    if text[1:2].isupper():  # an acronym such as "JSON" stays as it is
        return text
    return text[:1].lower() + text[1:]
