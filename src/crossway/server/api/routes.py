"""HTTP API of gateway routes: what `crossway gateway --control-plane` serves.

    GET    /v1/routes             every route: [{name, revision, route}] (blocking query)
    GET    /v1/routes/{name}      one route document (blocking query on it)
    PUT    /v1/routes/{name}      set it (validated; If-Match: <revision> for CAS)
    DELETE /v1/routes/{name}      remove it (If-Match as for PUT)

A route is a `crossway.proxy.routes.Route` document stored as JSON at
`/routes/{name}`. Gateways follow the prefix (`GET /v1/routes`, then
`GET /v1/watch?prefix=/routes/` from the listing's index) and rebuild their
route table on every change.

Theory of operation
-------------------
- A document is validated before anything is written: unknown fields, wrong
  types, values out of range, regexes that do not compile and routes with no
  way to answer are refused with 400 and the JSON path of the field
  (`$.backends[1].weight`). It is stored re-encoded with only the fields
  that differ from their defaults, so a gateway reads back exactly what was
  validated, and fields left out follow the gateway's defaults.
- Revisions are the store's: a read answers `X-Crossway-Index` and, for one
  route, `ETag: "<mod_revision>"`; `If-Match: <mod_revision>` makes a write a
  compare-and-set (412 when the route moved; 0 means "must not exist").
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.errors import InvalidArgument, NotFound
from crossway.proxy.routes.model import ROUTE_PREFIX, check_route_name, encode_route
from crossway.proxy.routes.model import Route as RouteDoc
from crossway.server.blocking import blocking_query
from crossway.server.context import ServerContext
from crossway.server.http import json_response, read_json
from crossway.store import KeyValue, Store


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The route provider for `crossway.server.app` (no background work)."""
    return RoutesApi(ctx.store).routes()


class RoutesApi:
    def __init__(self, store: Store) -> None:
        self.store = store

    def routes(self) -> list[BaseRoute]:
        one = "/v1/routes/{name}"
        return [
            Route("/v1/routes", self.list_routes, methods=["GET"]),
            Route(one, self.get_route, methods=["GET"]),
            Route(one, self.put_route, methods=["PUT"]),
            Route(one, self.delete_route, methods=["DELETE"]),
        ]

    async def list_routes(self, request: Request) -> Response:
        """Every route; with `?index=N&wait=D`, first waits for a change after N."""
        await blocking_query(request, self.store, ROUTE_PREFIX)
        listing = await self.store.range(ROUTE_PREFIX)
        entries = [_entry(kv) for kv in listing.kvs if "/" not in kv.key[len(ROUTE_PREFIX) :]]
        return json_response(entries, index=listing.revision)

    async def get_route(self, request: Request) -> Response:
        """The stored document (404 when there is none)."""
        name = _name(request)
        await blocking_query(request, self.store, ROUTE_PREFIX + name)
        kv = await self.store.get(ROUTE_PREFIX + name)
        if kv is None:
            raise NotFound(f"no route named {name!r}", name=name)
        headers = {"X-Crossway-Index": str(kv.mod_revision), "ETag": _etag(kv.mod_revision)}
        return Response(kv.value, media_type="application/json", headers=headers)

    async def put_route(self, request: Request) -> Response:
        """Validate and store; nothing is written when the document is refused
        (400 naming the field) or `If-Match` does not hold (412)."""
        name = _name(request)
        route = await read_json(request, RouteDoc)
        stored = encode_route(route)
        put = await self.store.put(ROUTE_PREFIX + name, stored, if_mod_revision=_if_match(request))
        body = {"name": name, "revision": put.revision, "route": msgspec.Raw(stored)}
        return json_response(body, index=put.revision, headers={"ETag": _etag(put.revision)})

    async def delete_route(self, request: Request) -> Response:
        name = _name(request)
        deleted = await self.store.delete(ROUTE_PREFIX + name, if_mod_revision=_if_match(request))
        if not deleted.deleted:
            raise NotFound(f"no route named {name!r}", name=name)
        return json_response({"name": name, "revision": deleted.revision}, index=deleted.revision)


def _entry(kv: KeyValue) -> dict[str, Any]:
    return {
        "name": kv.key[len(ROUTE_PREFIX) :],
        "revision": kv.mod_revision,
        "route": msgspec.Raw(kv.value),
    }


def _name(request: Request) -> str:
    return check_route_name(request.path_params["name"])


def _etag(revision: int) -> str:
    return f'"{revision}"'


def _if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    text = raw.strip().strip('"')
    if not text.isdigit():
        raise InvalidArgument(
            f"If-Match must be a route revision (a number), got {raw!r}", field="If-Match"
        )
    return int(text)
