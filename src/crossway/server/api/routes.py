"""HTTP API of gateway routes: what `crossway gateway --control-plane` serves.

    GET    /v1/routes             every route: [{name, revision, route}] (blocking query)
    GET    /v1/routes/{name}      one route document (blocking query on it)
    PUT    /v1/routes/{name}      set it (validated; If-Match: <revision> for CAS)
    DELETE /v1/routes/{name}      remove it (If-Match as for PUT)

A route is a `crossway.proxy.routes.Route` document stored as JSON at
`/routes/{name}`. Gateways follow the prefix (`GET /v1/routes`, then
`GET /v1/watch?prefix=/routes/` from the listing's index) and rebuild their
route table on every change.

Validation, storage and compare-and-set: `crossway.server.documents`.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from crossway.proxy.routes.model import ROUTE_PREFIX, check_route_name, encode_route
from crossway.proxy.routes.model import Route as RouteDoc
from crossway.server.context import ServerContext
from crossway.server.documents import DocumentApi, DocumentKind

ROUTES = DocumentKind(
    singular="route",
    described="route",
    path="/v1/routes",
    prefix=ROUTE_PREFIX,
    schema=RouteDoc,
    encode=encode_route,
    check_name=check_route_name,
)


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The route provider for `crossway.server.app` (no background work)."""
    return DocumentApi(ctx.store, ROUTES).routes()
