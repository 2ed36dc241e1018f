"""The control plane's HTTP API, one module per domain.

Each module here exposes

    def routes(ctx: ServerContext) -> list[BaseRoute]: ...

returning flat Starlette `Route`s with their full paths (`/v1/<domain>/...`),
and is listed in `crossway.server.app.ROUTE_PROVIDERS`. A module builds its
domain service from `ctx.store` and `ctx.clock`, may `ctx.provide(...)` it to
other modules and registers `ctx.on_start` / `ctx.on_close` hooks for
background work. Handlers use the helpers in `crossway.server.http`
(`json_response`, `read_json`, `context_of`) and
`crossway.server.blocking.blocking_query`; they raise `CrosswayError`s and
never build error responses by hand.
"""
