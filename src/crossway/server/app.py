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

The middleware stack, outermost first: `TraceLogContext` (trace ids in the
logs) → `RequestObserver` (metrics, access log) → `ErrorBoundary` (JSON
errors) → `BearerAuth` (only with a token) → router. Starlette's
`HTTPException`s (404, 405) propagate to `ErrorBoundary`, which renders them
as JSON.

Per-request cost (the control plane answers tens of thousands of heartbeats
and discovery queries a second, and every layer is paid on each):
- `ControlPlane` is Starlette without the two middlewares it always adds:
  `ServerErrorMiddleware` and `ExceptionMiddleware` do nothing that
  `ErrorBoundary` does not already do (every exception becomes a JSON answer
  there), and each costs a coroutine frame and a wrapped `send` per request.
- `IndexedRouter` tries only the routes that can match a path. Routes are
  bucketed by their first two path segments when those are literal (as every
  route here is: `/v1/services/…`); the others (a parameter or a `path`
  converter early in the template, mounts) are tried for every request. A
  bucket keeps the routes' original order, so the first match — and the 405
  for a path that matches with another method — is the one Starlette's
  router would have found trying all ~40 routes in turn. A path that matches
  nothing falls through to Starlette's own handling (redirects, 404).

Lifecycle: the app's lifespan runs `ctx.start()` and `ctx.close()`, so the app
works under any ASGI server. `crossway server` (`crossway.server.run`) drives
the same two calls itself around uvicorn, so that a failing start is a clean
one-line error rather than a lifespan failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from crossway import dashboard
from crossway.dashboard.routes import is_public_request
from crossway.server.api import (
    config,
    coord,
    policies,
    registry,
    routes,
    stats,
    system,
    traces,
    watch,
)
from crossway.server.context import ServerContext
from crossway.server.errors import ErrorBoundary
from crossway.server.middleware import BearerAuth, HttpMetrics, RequestObserver
from crossway.telemetry.logging import TraceLogContext

RouteProvider = Callable[[ServerContext], Sequence[BaseRoute]]

ROUTE_PROVIDERS: tuple[RouteProvider, ...] = (
    system.routes,
    watch.routes,
    registry.routes,
    stats.routes,
    config.routes,
    coord.routes,
    policies.routes,
    routes.routes,
    traces.routes,
    dashboard.routes,  # last: its catch-all serves the SPA on every non-API path
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
    app = ControlPlane(routes=routes, middleware=_middleware(ctx), lifespan=_lifespan(ctx))
    app.state.ctx = ctx
    return app


class ControlPlane(Starlette):
    """Starlette with an `IndexedRouter` and only our own middleware (see the
    module header)."""

    def __init__(
        self,
        *,
        routes: Sequence[BaseRoute],
        middleware: Sequence[Middleware],
        lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]],
    ) -> None:
        super().__init__(routes=routes, middleware=middleware, lifespan=lifespan)
        self.router = IndexedRouter(routes, lifespan=lifespan)

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = self.router
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


RouteKey = tuple[str, ...]


class IndexedRouter(Router):
    """Starlette's `Router`, trying only the routes that can match (see the
    module header)."""

    def __init__(self, routes: Sequence[BaseRoute], **kwargs: Any) -> None:
        super().__init__(routes, **kwargs)
        keys = [route_key(route) for route in self.routes]
        self._anywhere = [r for r, key in zip(self.routes, keys, strict=True) if key is None]
        self._buckets: dict[RouteKey, list[BaseRoute]] = {}
        for key in {key for key in keys if key is not None}:
            self._buckets[key] = [
                r for r, k in zip(self.routes, keys, strict=True) if k is None or k == key
            ]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().app(scope, receive, send)
            return
        scope.setdefault("router", self)
        partial: BaseRoute | None = None
        partial_scope: Scope = {}
        for route in self._buckets.get(path_key(get_route_path(scope)), self._anywhere):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial, partial_scope = route, child_scope
        if partial is not None:
            scope["route"] = partial
            scope.update(partial_scope)
            await partial.handle(scope, receive, send)
            return
        await super().app(scope, receive, send)  # redirects and 404, as Starlette does them


def route_key(route: BaseRoute) -> RouteKey | None:
    """The bucket of a route: its first two path segments when they are literal,
    else None (tried for every path)."""
    if not isinstance(route, Route) or ":path}" in route.path:
        return None
    key = path_key(route.path)
    return None if any("{" in segment for segment in key) else key


def path_key(path: str) -> RouteKey:
    """The first two segments of a path: "/v1/services/x" -> ("v1", "services")."""
    return tuple(path.split("/", 3)[1:3])


def _middleware(ctx: ServerContext) -> list[Middleware]:
    stack = [
        # Outermost, so the access log and every handler see the request's trace ids.
        Middleware(TraceLogContext),
        Middleware(RequestObserver, metrics=_metrics(ctx), clock=ctx.clock),
        Middleware(ErrorBoundary),
    ]
    if ctx.settings.token is not None:
        stack.append(Middleware(BearerAuth, token=ctx.settings.token, public=is_public_request))
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
