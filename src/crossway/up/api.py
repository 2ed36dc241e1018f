"""HTTP API of the supervisor, served by the control plane that `crossway up` runs.

    GET  /v1/processes                         {"project", "processes": [...]}, gateway included
    POST /v1/processes/{service}/scale         {"replicas": N} -> 200, that service's processes
    POST /v1/processes/{service}/restart       202: a rolling restart has begun
    GET  /v1/processes/{service}/logs?tail=200&follow=true
                                               `replica | line` text; with follow, the lines
                                               keep coming (chunked text, or Server-Sent Events
                                               when the client accepts text/event-stream)

`process_routes(supervisor, logs, project=...)` is a route provider for
`crossway.server.app.create_app(extra=...)`; `crossway server` alone does not
have these routes. A follow stream ends when the client goes away or the
server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from crossway.core.errors import InvalidArgument
from crossway.server.app import RouteProvider
from crossway.server.context import ServerContext
from crossway.server.http import Endpoint, json_response, read_json
from crossway.up.logs import LogHub
from crossway.up.supervisor import Supervisor

MAX_TAIL = 10_000


class ScaleBody(msgspec.Struct, forbid_unknown_fields=True):
    replicas: int


def process_routes(supervisor: Supervisor, logs: LogHub, *, project: str) -> RouteProvider:
    def provider(ctx: ServerContext) -> Sequence[BaseRoute]:
        return ProcessesApi(supervisor, logs, project, ctx.stopping).routes()

    return provider


class ProcessesApi:
    def __init__(
        self, supervisor: Supervisor, logs: LogHub, project: str, stopping: asyncio.Event
    ) -> None:
        self.supervisor = supervisor
        self.logs = logs
        self.project = project
        self.stopping = stopping

    def routes(self) -> list[BaseRoute]:
        one = "/v1/processes/{service}"
        return [
            Route("/v1/processes", Endpoint(self.list_processes), methods=["GET"]),
            Route(f"{one}/scale", Endpoint(self.scale), methods=["POST"]),
            Route(f"{one}/restart", Endpoint(self.restart), methods=["POST"]),
            Route(f"{one}/logs", Endpoint(self.service_logs), methods=["GET"]),
        ]

    async def list_processes(self, request: Request) -> Response:
        return json_response({"project": self.project, "processes": self.supervisor.processes()})

    async def scale(self, request: Request) -> Response:
        body = await read_json(request, ScaleBody)
        service = request.path_params["service"]
        processes = await self.supervisor.scale(service, body.replicas)
        return json_response({"service": service, "processes": processes})

    async def restart(self, request: Request) -> Response:
        service = request.path_params["service"]
        self.supervisor.restart(service)
        return json_response({"service": service, "restart": "rolling"}, 202)

    async def service_logs(self, request: Request) -> Response:
        service = request.path_params["service"]
        self.supervisor.processes(service)  # NotFound for an unknown service
        tail = _tail(request.query_params.get("tail"))
        follow = _flag(request.query_params.get("follow"))
        lines = self.logs.tail(service, tail)
        sse = "text/event-stream" in request.headers.get("accept", "")
        if not follow:
            return Response("".join(f"{line}\n" for line in lines), media_type="text/plain")
        media = "text/event-stream" if sse else "text/plain"
        return StreamingResponse(self._follow(service, lines, sse), media_type=media)

    async def _follow(self, service: str, first: list[str], sse: bool) -> AsyncIterator[str]:
        def frame(line: str) -> str:
            return f"data: {line}\n\n" if sse else f"{line}\n"

        with self.logs.follow(service) as queue:
            for line in first:
                yield frame(line)
            stopping = asyncio.ensure_future(self.stopping.wait())
            try:
                while not self.stopping.is_set():
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {getter, stopping}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in done:
                        yield frame(getter.result())
                        continue
                    getter.cancel()
                    if not done:
                        yield ": keep-alive\n\n" if sse else ""
            finally:
                stopping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stopping


def _tail(text: str | None) -> int:
    if text is None:
        return 200
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument("tail must be a whole number", field="tail") from None
    if not 0 <= value <= MAX_TAIL:
        raise InvalidArgument(f"tail must be between 0 and {MAX_TAIL}", field="tail")
    return value


def _flag(text: str | None) -> bool:
    if text is None or text.lower() in ("", "0", "false", "no"):
        return False
    if text.lower() in ("1", "true", "yes"):
        return True
    raise InvalidArgument("follow must be true or false", field="follow")
