"""A tiny service on the SDK for `crossway up`'s tests: registers itself from the
CROSSWAY_* environment, answers `/` with its instance id, deregisters on SIGTERM."""

from __future__ import annotations

import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import crossway
from crossway.sdk import lifespan

INSTANCE = os.environ.get("CROSSWAY_INSTANCE_ID", "?")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello from {INSTANCE}\n")


client = crossway.Client()
app = Starlette(
    routes=[Route("/", hello), Route("/healthz", hello)],
    lifespan=lifespan(client),
)

if __name__ == "__main__":
    print(f"{INSTANCE} listening on {os.environ['PORT']}", flush=True)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        log_level="warning",
        timeout_graceful_shutdown=3,
    )
