"""Serving the dashboard: the SPA shell on page paths, hashed assets with a
long cache, a 503 hint when nothing is built, and API paths left alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import httpx2
import pytest
from starlette.routing import BaseRoute

from crossway import dashboard
from crossway.dashboard.routes import NOT_BUILT, dashboard_routes
from crossway.server.api import registry, system
from crossway.server.app import ROUTE_PROVIDERS, create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.local import LocalStore
from crossway.store.memory import open_memory_store

SHELL = b'<!doctype html><div id="app"></div><script src="/assets/index-abc123.js"></script>'
SCRIPT = b"console.log('crossway')"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
async def ctx() -> AsyncIterator[ServerContext]:
    store: LocalStore = open_memory_store()
    try:
        yield ServerContext(store=store, settings=ServerSettings(store="memory"))
    finally:
        await store.close()


@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_bytes(SHELL)
    (tmp_path / "assets" / "index-abc123.js").write_bytes(SCRIPT)
    return tmp_path


def client_over(ctx: ServerContext, static_dir: Path) -> httpx2.AsyncClient:
    def served(_: ServerContext) -> Sequence[BaseRoute]:
        return dashboard_routes(static_dir)

    providers: tuple[Callable[[ServerContext], Sequence[BaseRoute]], ...] = (
        system.routes,
        registry.routes,
        served,
    )
    app = create_app(ctx, providers=providers)
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://cp")


def test_the_dashboard_is_the_last_route_provider() -> None:
    assert ROUTE_PROVIDERS[-1] is dashboard.routes


@pytest.mark.parametrize(
    "path",
    ["/", "/services/orders", "/config/prod/orders/app.yaml", "/traces/abc", "/processes"],
)
async def test_page_paths_answer_the_shell(ctx: ServerContext, built: Path, path: str) -> None:
    async with client_over(ctx, built) as api:
        r = await api.get(path)
    assert r.status_code == 200, r.text
    assert r.content == SHELL
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"


async def test_a_browser_gets_the_shell_for_an_unknown_page(
    ctx: ServerContext, built: Path
) -> None:
    async with client_over(ctx, built) as api:
        page = await api.get("/no/such/page", headers=HTML)
        api_client = await api.get("/no/such/page")
    assert page.status_code == 200
    assert page.content == SHELL
    assert api_client.status_code == 404
    assert api_client.json()["error"]["code"] == "not_found"


async def test_assets_are_served_with_a_long_cache(ctx: ServerContext, built: Path) -> None:
    async with client_over(ctx, built) as api:
        r = await api.get("/assets/index-abc123.js")
        missing = await api.get("/assets/index-gone.js")
    assert r.status_code == 200
    assert r.content == SCRIPT
    assert "javascript" in r.headers["content-type"]
    assert "immutable" in r.headers["cache-control"]
    assert missing.status_code == 404


async def test_a_file_name_is_never_answered_with_the_shell(
    ctx: ServerContext, built: Path
) -> None:
    async with client_over(ctx, built) as api:
        r = await api.get("/favicon.ico", headers=HTML)
    assert r.status_code == 404


async def test_unbuilt_assets_answer_503_with_a_hint(ctx: ServerContext, tmp_path: Path) -> None:
    async with client_over(ctx, tmp_path / "nothing") as api:
        root = await api.get("/")
        page = await api.get("/topology")
        asset = await api.get("/assets/index-abc123.js")
    assert root.status_code == 503
    assert root.text == NOT_BUILT
    assert "make dashboard" in root.text
    assert page.status_code == 503
    assert asset.status_code == 404


@pytest.mark.parametrize(
    "path",
    ["/v1/nothing", "/v1/services/x/nothing", "/api/v2/nothing", "/v1", "/api"],
)
async def test_api_paths_are_never_shadowed(ctx: ServerContext, built: Path, path: str) -> None:
    async with client_over(ctx, built) as api:
        r = await api.get(path, headers=HTML)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_api_routes_and_their_method_errors_still_win(
    ctx: ServerContext, built: Path
) -> None:
    async with client_over(ctx, built) as api:
        health = await api.get("/healthz", headers=HTML)
        metrics = await api.get("/metrics", headers=HTML)
        services = await api.get("/v1/services", headers=HTML)
        wrong_method = await api.get("/v1/services/orders/instances/a", headers=HTML)
    assert health.json() == {"status": "ok"}
    assert metrics.headers["content-type"].startswith("text/plain")
    assert services.json() == []
    assert wrong_method.status_code == 405


async def test_the_default_app_serves_the_dashboard(ctx: ServerContext) -> None:
    app = create_app(ctx)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://cp") as api:
        r = await api.get("/")
    built = (dashboard.STATIC_DIR / "index.html").is_file()
    assert r.status_code == (200 if built else 503)


async def test_a_token_protects_the_api_but_not_the_page_that_asks_for_it(built: Path) -> None:
    store: LocalStore = open_memory_store()
    try:
        settings = ServerSettings(store="memory", token="s3cret")
        async with client_over(ServerContext(store=store, settings=settings), built) as client:
            page = await client.get("/services/orders", headers=HTML)
            assert page.status_code == 200
            assert page.content == SHELL
            root = await client.get("/")
            assert root.status_code == 200
            asset = await client.get("/assets/index-abc123.js")
            assert asset.status_code == 200
            api = await client.get("/v1/services", headers=HTML)
            assert api.status_code == 401
            unknown = await client.get("/nothing-here")  # no page, no token: still refused
            assert unknown.status_code == 401
            write = await client.post("/", headers=HTML)
            assert write.status_code == 401
            allowed = await client.get("/v1/services", headers={"Authorization": "Bearer s3cret"})
            assert allowed.status_code == 200
    finally:
        await store.close()
