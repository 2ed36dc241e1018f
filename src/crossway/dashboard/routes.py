"""Serving the built dashboard: the SPA shell, its hashed assets, nothing else.

Theory of operation
- `/assets/*` are Vite's content-hashed files: served by Starlette's
  `StaticFiles` with a year-long immutable cache, since a changed file gets a
  new name.
- `/` and the app's page paths (`/services/orders`, `/config/…`) answer
  `index.html` (history routing: the app reads the path itself). So does any
  other path without a file extension that a browser navigates to (its
  `Accept` names `text/html`): the app shows its own "not found". An API
  client asking for an unknown path keeps getting the JSON 404. The shell is
  never cached, so a rebuilt dashboard is picked up at the next load.
- When the assets are not built (a checkout without `make dashboard`) the
  shell answers 503 with a one-line hint instead of a blank page.

Invariants
- The catch-all never matches an API path (`/v1/…`, `/api/…`, `/metrics`,
  `/healthz`, `/readyz`), nor a file name outside the app's pages: it reports
  `Match.NONE` for them, so a wrong method on an API path is still the API's
  405 and an unknown API path is still the JSON 404.
- The routes come last in `ROUTE_PROVIDERS`, and the index router tries
  routes in order, so an API route always wins.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

if TYPE_CHECKING:  # the server imports this module: no import back at run time
    from crossway.server.context import ServerContext

STATIC_DIR = Path(__file__).parent / "static"
NOT_BUILT = "dashboard assets are not built: run `make dashboard`\n"
API_PREFIXES = ("/v1/", "/api/")
API_PATHS = frozenset({"/v1", "/api", "/metrics", "/healthz", "/readyz"})
# The first path segment of every page of the app (dashboard/src/app.tsx).
PAGE_ROOTS = frozenset(
    {
        "services",
        "topology",
        "config",
        "routes",
        "policies",
        "traces",
        "alerts",
        "coordination",
        "processes",
    }
)
ASSET_CACHE = "public, max-age=31536000, immutable"


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The dashboard's routes over the built assets in `STATIC_DIR`."""
    return dashboard_routes(STATIC_DIR)


def dashboard_routes(static_dir: Path) -> list[BaseRoute]:
    """The routes over `static_dir` (a parameter so tests can point elsewhere)."""
    index = static_dir / "index.html"

    async def shell(request: Request) -> Response:
        if not await anyio.Path(index).is_file():
            return PlainTextResponse(NOT_BUILT, status_code=503)
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    assets = ImmutableStaticFiles(directory=static_dir / "assets", check_dir=False)
    return [
        Mount("/assets", app=assets, name="dashboard-assets"),
        PageRoute("/{page:path}", shell, methods=["GET"], name="dashboard"),
    ]


def is_page_path(path: str, *, accepts_html: bool) -> bool:
    """True for a path the SPA answers (see the module header)."""
    if path in API_PATHS or path.startswith(API_PREFIXES):
        return False
    if path == "/" or path.split("/", 2)[1] in PAGE_ROOTS:
        return True  # even with a dot: config keys are named like `app.yaml`
    return accepts_html and "." not in posixpath.basename(path.rstrip("/"))


def is_public_request(scope: Scope) -> bool:
    """A request a token-protected control plane still answers: reading the
    dashboard's shell or its assets (no data in either; the page asks for the
    token and sends it with every API call)."""
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return False
    path: str = scope["path"]
    return path.startswith("/assets/") or is_page_path(path, accepts_html=_accepts_html(scope))


def _accepts_html(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            return b"text/html" in value
    return False


class PageRoute(Route):
    """A catch-all `Route` that never matches an API path or a file name (see
    the module header)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        if not is_page_path(scope["path"], accepts_html=_accepts_html(scope)):
            return Match.NONE, {}
        return super().matches(scope)


class ImmutableStaticFiles(StaticFiles):
    """`StaticFiles` whose answers may be cached for a year (hashed names), and
    a 404 rather than a 500 while nothing is built."""

    async def check_config(self) -> None:
        if self.directory is not None and not await anyio.Path(self.directory).is_dir():
            raise HTTPException(404)

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = ASSET_CACHE
        return response
