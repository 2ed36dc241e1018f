"""Probes and metrics: `/healthz`, `/readyz`, `/metrics`.

- `/healthz` answers 200 whenever the process can serve HTTP at all (liveness;
  never needs a token).
- `/readyz` answers 200 only when the store answers `revision()` within
  `ready_timeout` (2 s), and 503 once shutdown has begun, so a load balancer
  stops sending traffic before the listener closes (never needs a token).
- `/metrics` is the Prometheus text exposition of the context's own registry
  (needs the token when one is set).
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.errors import CrosswayError
from crossway.server.context import ServerContext
from crossway.server.http import error_body, json_response

log = logging.getLogger("crossway.server")


def routes(ctx: ServerContext) -> list[BaseRoute]:
    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        return await readiness(ctx)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def readiness(ctx: ServerContext) -> Response:
    """200 with the store's revision, or 503 saying why not. Never raises."""
    if ctx.shutting_down:
        return _not_ready("the server is shutting down")
    timeout = ctx.settings.ready_timeout
    try:
        async with asyncio.timeout(timeout):
            revision = await ctx.store.revision()
    except TimeoutError:
        return _not_ready(f"the {ctx.store.name} store did not answer within {timeout:g}s")
    except CrosswayError as exc:
        return _not_ready(f"the {ctx.store.name} store is not available: {exc.message}")
    except Exception:
        log.warning("readiness check failed", exc_info=True)
        return _not_ready(f"the {ctx.store.name} store failed to answer (see the server log)")
    body = {"status": "ready", "store": ctx.store.name, "revision": revision}
    return json_response(body, index=revision)


def _not_ready(message: str) -> Response:
    return json_response(error_body("unavailable", message), 503)
