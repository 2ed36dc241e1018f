"""`crossway server` plus two routes only the tests need: a slow request and a
long poll. Run as `python serve_with_test_routes.py PORT DATA_DIR`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvloop
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.server import ServerContext, ServerSettings, blocking_query, json_response, serve
from crossway.server.logs import configure_logging


def test_routes(ctx: ServerContext) -> list[BaseRoute]:
    async def slow(request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("seconds", "1")))
        return json_response({"slow": "done"})

    async def poll(request: Request) -> Response:
        await blocking_query(request, ctx.store, "/items/")
        result = await ctx.store.range("/items/")
        return json_response(len(result.kvs), index=result.revision)

    return [Route("/v1/test/slow", slow), Route("/v1/test/poll", poll)]


def main() -> None:
    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    settings = ServerSettings(port=port, data_dir=data_dir, log_format="json", shutdown_grace=8)
    settings.check()
    configure_logging(settings.log_level, settings.log_format)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, extra=[test_routes]))


if __name__ == "__main__":
    main()
