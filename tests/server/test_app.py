from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.server.api import system, watch
from crossway.server.app import ROUTE_PROVIDERS, create_app
from crossway.server.context import ServerContext
from crossway.server.http import context_of, json_response


def clashing(ctx: ServerContext) -> list[BaseRoute]:
    async def other(request: Request) -> Response:
        return json_response({})

    return [Route("/healthz", other, methods=["GET"])]


def test_two_routes_on_the_same_method_and_path_are_refused(ctx: ServerContext) -> None:
    with pytest.raises(ValueError, match="two routes claim GET /healthz"):
        create_app(ctx, extra=[clashing])


def test_built_in_routes(ctx: ServerContext) -> None:
    paths = {r.path for r in create_app(ctx).routes if isinstance(r, Route)}
    assert {"/healthz", "/readyz", "/metrics", "/v1/watch"} <= paths
    assert ROUTE_PROVIDERS[:2] == (system.routes, watch.routes)


def test_apps_can_be_built_twice_on_one_context(ctx: ServerContext) -> None:
    core = (system.routes, watch.routes)
    create_app(ctx, providers=core)
    create_app(ctx, providers=core)  # the request metrics are registered once per context


async def test_lifespan_starts_and_closes_the_context(ctx: ServerContext) -> None:
    started: list[bool] = []

    async def hook() -> None:
        started.append(True)

    ctx.on_start(hook)
    app = create_app(ctx)
    async with app.router.lifespan_context(app):
        assert started == [True]
        assert not ctx.shutting_down
    assert ctx.shutting_down


async def test_handlers_reach_the_context(ctx: ServerContext) -> None:
    app = create_app(ctx)
    request = Request({"type": "http", "app": app, "headers": [], "method": "GET", "path": "/"})
    assert context_of(request) is ctx
