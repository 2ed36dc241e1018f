"""`create_app(ctx)`: the control plane's Starlette application.

EXTENSION POINT — adding a domain API (registry, config, coordination …):

1. Write `crossway/server/api/<domain>.py` exposing

       def routes(ctx: ServerContext) -> list[BaseRoute]:
           service = Registry(ctx.store, clock=ctx.clock)
           ctx.on_close(service.close)
           async def list_services(request: Request) -> Response:
               await blocking_query(request, ctx.store, "/services/")
               result = await service.list()
               return json_response(result.items, index=result.revision)
           return [Route("/v1/services", list_services, methods=["GET"])]

2. Add `<domain>.routes` to `ROUTE_PROVIDERS` below.

Routes are flat (full paths, no `Mount`), so the metrics' `route` label is the
whole template. Two providers claiming the same method on the same path is a
programming error, reported by `create_app`.

The middleware stack, outermost first: `RequestObserver` (metrics, access
log) → `ErrorBoundary` (JSON errors) → `BearerAuth` (only with a token) →
router. Starlette's `HTTPException`s (404, 405) are rendered as JSON by
`handle_http_exception`.

Lifecycle: the app's lifespan runs `ctx.start()` and `ctx.close()`, so the app
works under any ASGI server. `crossway server` (`crossway.server.run`) drives
the same two calls itself around uvicorn, so that a failing start is a clean
one-line error rather than a lifespan failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from crossway.server.api import config, coord, registry, system, traces, watch
from crossway.server.context import ServerContext
from crossway.server.errors import ErrorBoundary, handle_http_exception
from crossway.server.middleware import BearerAuth, HttpMetrics, RequestObserver
from crossway.telemetry.logging import TraceLogContext

RouteProvider = Callable[[ServerContext], Sequence[BaseRoute]]

ROUTE_PROVIDERS: tuple[RouteProvider, ...] = (
    system.routes,
    watch.routes,
    registry.routes,
    config.routes,
    coord.routes,
    traces.routes,
)


def create_app(
    ctx: ServerContext,
    *,
    providers: Sequence[RouteProvider] = ROUTE_PROVIDERS,
    extra: Sequence[RouteProvider] = (),
) -> Starlette:
    """The ASGI app over `ctx`, with the routes of `providers` then `extra`.

    Raises `ValueError` when two routes claim the same method and path.
    """
    routes = [route for provider in (*providers, *extra) for route in provider(ctx)]
    _check_unique(routes)
    app = Starlette(
        routes=routes,
        middleware=_middleware(ctx),
        exception_handlers={HTTPException: handle_http_exception},
        lifespan=_lifespan(ctx),
    )
    app.state.ctx = ctx
    return app


def _middleware(ctx: ServerContext) -> list[Middleware]:
    stack = [
        # Outermost, so the access log and every handler see the request's trace ids.
        Middleware(TraceLogContext),
        Middleware(RequestObserver, metrics=_metrics(ctx), clock=ctx.clock),
        Middleware(ErrorBoundary),
    ]
    if ctx.settings.token is not None:
        stack.append(Middleware(BearerAuth, token=ctx.settings.token))
    return stack


def _metrics(ctx: ServerContext) -> HttpMetrics:
    """One set of request metrics per context, however many apps are built on it."""
    try:
        return ctx.service(HttpMetrics)
    except LookupError:
        metrics = HttpMetrics(ctx.registry)
        ctx.provide(metrics)
        return metrics


def _lifespan(
    ctx: ServerContext,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ctx.start()
        try:
            yield
        finally:
            await ctx.close()

    return lifespan


def _check_unique(routes: Sequence[BaseRoute]) -> None:
    seen: set[tuple[str, str]] = set()
    for route in routes:
        if not isinstance(route, Route):
            continue
        for method in sorted(route.methods or {"*"}):
            key = (method, route.path)
            if key in seen:
                raise ValueError(f"two routes claim {method} {route.path}")
            seen.add(key)
