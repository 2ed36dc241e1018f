"""The control plane process: `crossway server`.

A Starlette app served by uvicorn over a `ServerContext` (store, clock,
settings, metrics registry, domain services). Domain APIs plug in as route
providers (see `crossway.server.app`) and build on the helpers exported here.
"""

from crossway.server.app import ROUTE_PROVIDERS, RouteProvider, create_app
from crossway.server.blocking import BlockingParams, blocking_query
from crossway.server.context import ServerContext
from crossway.server.http import (
    INDEX_HEADER,
    MalformedJSON,
    PayloadTooLarge,
    context_of,
    decode_json,
    error_response,
    json_response,
    read_json,
)
from crossway.server.logs import configure_logging
from crossway.server.run import StartupError, open_context, run_server, serve
from crossway.server.settings import DEFAULT_PORT, ServerSettings

__all__ = [
    "DEFAULT_PORT",
    "INDEX_HEADER",
    "ROUTE_PROVIDERS",
    "BlockingParams",
    "MalformedJSON",
    "PayloadTooLarge",
    "RouteProvider",
    "ServerContext",
    "ServerSettings",
    "StartupError",
    "blocking_query",
    "configure_logging",
    "context_of",
    "create_app",
    "decode_json",
    "error_response",
    "json_response",
    "open_context",
    "read_json",
    "run_server",
    "serve",
]
