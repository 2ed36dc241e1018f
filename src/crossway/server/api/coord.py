"""HTTP API of coordination: sessions, locks, semaphores, elections.

    POST   /v1/sessions                      {"ttl": "10s", "name"?}  → {"session", …}
    GET    /v1/sessions                      live sessions (blocking query)
    GET    /v1/sessions/{id}                 one session, with seconds remaining
    PUT    /v1/sessions/{id}/renew           keepalive
    DELETE /v1/sessions/{id}                 end it: releases everything it holds
    PUT    /v1/locks/{name}?session=&wait=   acquire → {"held": true, "fence", "since"}
    DELETE /v1/locks/{name}?session=         release (holder only)
    GET    /v1/locks[/{name}]                holder and waiters (blocking query)
    PUT    /v1/semaphores/{name}?session=&limit=K&wait=     one of K places
    DELETE /v1/semaphores/{name}?session=    release (holder only)
    GET    /v1/semaphores[/{name}]           holders, waiters, limit (blocking query)
    PUT    /v1/elections/{name}?session=&wait=&queue=  {"value"}: campaign
    DELETE /v1/elections/{name}?session=     resign (leader or queued)
    GET    /v1/elections[/{name}]            leader and candidates (blocking query)
    GET    /v1/elections/{name}/leader       {"leader": {…} | null}; `?index=N&wait=`
                                             blocks until the leader changes;
                                             `Accept: text/event-stream` (or
                                             `?stream=true`) streams each change

Waiting (`wait`, default 30s, at most 10 min, 0 = try once): when it runs out
the answer is 409 `{"error": {"code": "conflict", "message", "holder"|"leader"}}`
naming the current holder, and the request's place in line is given up — except
for a campaign with `queue=true`, which answers 202 `{"elected": false,
"queued": true, "position"}` and stays a candidate. A client that disconnects
while waiting, or a server that begins to shut down (503), gives the place up
too. Sessions are renewed by their owners; a session whose TTL runs out
releases everything it held, and the next waiter is served at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from crossway.coord import Contender, Coordination, LineView, SessionRecord
from crossway.coord.model import (
    KIND_PREFIX,
    SESSIONS_PREFIX,
    check_name,
    check_ttl,
    parse_session,
)
from crossway.coord.waiting import finish
from crossway.core.clock import Clock
from crossway.core.durations import format_duration, parse_duration
from crossway.core.errors import InvalidArgument, Unavailable
from crossway.server.blocking import BlockingParams, blocking_query, jittered_wait
from crossway.server.context import ServerContext
from crossway.server.http import INDEX_HEADER, json_response, read_json
from crossway.server.sse import comment, frame
from crossway.store import Store

T = TypeVar("T")
DEFAULT_WAIT = 30.0
MAX_WAIT = 600.0
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class NewSession(msgspec.Struct, forbid_unknown_fields=True):
    ttl: str = "10s"
    name: str = ""


class CampaignBody(msgspec.Struct, forbid_unknown_fields=True):
    value: str = ""


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The route provider for `crossway.server.app` (`ROUTE_PROVIDERS`)."""
    api = CoordApi(
        ctx.store, clock=ctx.clock, stopping=ctx.stopping, heartbeat=ctx.settings.sse_heartbeat
    )
    ctx.provide(api.coord)
    return api.routes()


class CoordApi:
    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        stopping: asyncio.Event | None = None,
        heartbeat: float = 15.0,
    ) -> None:
        self.store = store
        self.coord = Coordination(store, clock=clock)
        self.stopping = stopping or asyncio.Event()
        self.heartbeat = heartbeat

    def routes(self) -> list[BaseRoute]:
        def route(path: str, endpoint: Any, method: str) -> Route:
            return Route(path, endpoint, methods=[method])

        return [
            route("/v1/sessions", self.create_session, "POST"),
            route("/v1/sessions", self.list_sessions, "GET"),
            route("/v1/sessions/{session}", self.get_session, "GET"),
            route("/v1/sessions/{session}/renew", self.renew_session, "PUT"),
            route("/v1/sessions/{session}", self.delete_session, "DELETE"),
            route("/v1/locks", self.list_locks, "GET"),
            route("/v1/locks/{name}", self.get_lock, "GET"),
            route("/v1/locks/{name}", self.acquire_lock, "PUT"),
            route("/v1/locks/{name}", self.release_lock, "DELETE"),
            route("/v1/semaphores", self.list_semaphores, "GET"),
            route("/v1/semaphores/{name}", self.get_semaphore, "GET"),
            route("/v1/semaphores/{name}", self.acquire_semaphore, "PUT"),
            route("/v1/semaphores/{name}", self.release_semaphore, "DELETE"),
            route("/v1/elections", self.list_elections, "GET"),
            route("/v1/elections/{name}", self.get_election, "GET"),
            route("/v1/elections/{name}", self.campaign, "PUT"),
            route("/v1/elections/{name}", self.resign, "DELETE"),
            route("/v1/elections/{name}/leader", LeaderEndpoint(self), "GET"),
        ]

    # Sessions.

    async def create_session(self, request: Request) -> Response:
        body = await read_json(request, NewSession)
        record = await self.coord.sessions.create(ttl=check_ttl(body.ttl), name=body.name)
        return json_response(_session(record), index=await self.store.revision())

    async def list_sessions(self, request: Request) -> Response:
        await blocking_query(request, self.store, SESSIONS_PREFIX)
        records, revision = await self.coord.sessions.list()
        return json_response([_session(r) for r in records], index=revision)

    async def get_session(self, request: Request) -> Response:
        view = await self.coord.sessions.get(request.path_params["session"])
        body = {**_session(view.record), "remaining": round(view.remaining or 0.0, 3)}
        return json_response(body, index=await self.store.revision())

    async def renew_session(self, request: Request) -> Response:
        view = await self.coord.sessions.renew(request.path_params["session"])
        body = {**_session(view.record), "ttl": format_duration(view.remaining or 0.0)}
        return json_response(body, index=await self.store.revision())

    async def delete_session(self, request: Request) -> Response:
        session, _ = parse_session(request.path_params["session"])
        released = await self.coord.sessions.destroy(session)
        body = {"session": session, "released": released}
        return json_response(body, index=await self.store.revision())

    # Locks and semaphores.

    async def acquire_lock(self, request: Request) -> Response:
        name, session, wait = _name(request), _session_param(request), _wait(request)
        held = await self._while_connected(
            request, self.coord.locks.acquire(name, session, wait=wait)
        )
        return json_response({"held": True, "lock": name, **held.public()}, index=held.mod_revision)

    async def release_lock(self, request: Request) -> Response:
        name, session = _name(request), _session_param(request)
        gone = await self.coord.locks.release(name, session)
        body = {"released": True, "lock": name, **gone.public()}
        return json_response(body, index=await self.store.revision())

    async def get_lock(self, request: Request) -> Response:
        name = _name(request)
        await blocking_query(request, self.store, f"{KIND_PREFIX['lock']}{name}/")
        view = await self.coord.locks.describe(name)
        return json_response(_lock(view), index=view.revision)

    async def list_locks(self, request: Request) -> Response:
        await blocking_query(request, self.store, KIND_PREFIX["lock"])
        views, revision = await self.coord.locks.list()
        return json_response([_lock(v) for v in views], index=revision)

    async def acquire_semaphore(self, request: Request) -> Response:
        name, session, wait = _name(request), _session_param(request), _wait(request)
        limit = _limit(request)
        acquire = self.coord.semaphores.acquire(name, session, limit=limit, wait=wait)
        held = await self._while_connected(request, acquire)
        body = {"held": True, "semaphore": name, "limit": limit, **held.public()}
        return json_response(body, index=held.mod_revision)

    async def release_semaphore(self, request: Request) -> Response:
        name, session = _name(request), _session_param(request)
        gone = await self.coord.semaphores.release(name, session)
        body = {"released": True, "semaphore": name, **gone.public()}
        return json_response(body, index=await self.store.revision())

    async def get_semaphore(self, request: Request) -> Response:
        name = _name(request)
        await blocking_query(request, self.store, f"{KIND_PREFIX['semaphore']}{name}/")
        view = await self.coord.semaphores.describe(name)
        return json_response(_semaphore(view), index=view.revision)

    async def list_semaphores(self, request: Request) -> Response:
        await blocking_query(request, self.store, KIND_PREFIX["semaphore"])
        views, revision = await self.coord.semaphores.list()
        return json_response([_semaphore(v) for v in views], index=revision)

    # Elections.

    async def campaign(self, request: Request) -> Response:
        name, session, wait = _name(request), _session_param(request), _wait(request)
        queue = _flag(request, "queue")
        raw = await request.body()
        value = (await read_json(request, CampaignBody)).value if raw.strip() else ""
        run = self.coord.elections.campaign(name, session, value=value, wait=wait, queue=queue)
        result = await self._while_connected(request, run)
        me = result.candidate
        body: dict[str, Any] = {"elected": result.elected, "election": name}
        body.update(me.public(value=True))
        if result.elected:
            return json_response(body, index=me.mod_revision)
        body.update(queued=True, position=result.position, leader=_public(result.leader))
        return json_response(body, 202, index=await self.store.revision())

    async def resign(self, request: Request) -> Response:
        name, session = _name(request), _session_param(request)
        gone = await self.coord.elections.resign(name, session)
        body = {"resigned": True, "election": name, **gone.public(value=True)}
        return json_response(body, index=await self.store.revision())

    async def get_election(self, request: Request) -> Response:
        name = _name(request)
        await blocking_query(request, self.store, f"{KIND_PREFIX['election']}{name}/")
        view = await self.coord.elections.describe(name)
        return json_response(_election(view), index=view.revision)

    async def list_elections(self, request: Request) -> Response:
        await blocking_query(request, self.store, KIND_PREFIX["election"])
        views, revision = await self.coord.elections.list()
        return json_response([_election(v) for v in views], index=revision)

    async def leader(self, request: Request) -> Response:
        name = _name(request)
        params = BlockingParams.parse(request.query_params)
        if params.index is not None and params.wait > 0:
            wait = jittered_wait(params.wait, random.random())
            changed = self.coord.elections.changed(name, index=params.index, wait=wait)
            await self.until_any(request, changed)
        current, revision = await self.coord.elections.leader(name)
        return json_response({"leader": _public(current)}, index=revision)

    # Waiting on behalf of a client.

    async def _while_connected(self, request: Request, work: Awaitable[T]) -> T:
        """The result of `work`, which is cancelled — giving up its place in
        line — if the client disconnects (`ClientDisconnect`), the server
        begins to shut down (`Unavailable`, 503) or this handler is cancelled."""
        task = asyncio.ensure_future(work)
        try:
            await self.until_any(request, task)
        finally:
            if not task.done():
                task.cancel()
                await finish(asyncio.gather(task, return_exceptions=True))
        if not task.cancelled():
            return task.result()
        if self.stopping.is_set():
            raise Unavailable("the control plane is shutting down; retry against another one")
        raise ClientDisconnect()

    async def until_any(self, request: Request, work: Awaitable[object]) -> None:
        """Wait for `work`, a client disconnect or shutdown, whichever is first;
        `work` is left running (or finished) for the caller to inspect."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request.receive))
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for side in (gone, stopping):
                side.cancel()
            await asyncio.gather(gone, stopping, return_exceptions=True)


class LeaderEndpoint:
    """`GET /v1/elections/{name}/leader`: JSON (with blocking), or an event stream.

    A raw ASGI endpoint, like `/v1/watch`, so that a stream notices its client
    leaving at once. Each `event: leader` frame carries `{"leader": …}` with
    the revision as its id; `Last-Event-ID` resumes after it.
    """

    def __init__(self, api: CoordApi) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if not _wants_stream(request):
            response = await self.api.leader(request)
            await response(scope, receive, send)
            return
        name = _name(request)
        _, revision = await self.api.coord.elections.leader(name)
        headers = [*SSE_HEADERS, (INDEX_HEADER.lower().encode(), str(revision).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._stream(request, name, send)
        await send({"type": "http.response.body", "body": b""})

    async def _stream(self, request: Request, name: str, send: Send) -> None:
        """Send the leader, then every change, until the client leaves or the
        server begins to shut down; a comment after each quiet heartbeat."""
        elections, api = self.api.coord.elections, self.api
        shown: object = ...  # nothing shown yet
        while True:
            leader, revision = await elections.leader(name)
            view = _public(leader)
            if view != shown:
                data = {"leader": view}
                await _chunk(send, frame(event="leader", data=data, event_id=revision))
                shown = view
            changed = asyncio.ensure_future(
                elections.changed(name, index=revision, wait=api.heartbeat)
            )
            await api.until_any(request, changed)
            if not changed.done():
                changed.cancel()
                await asyncio.gather(changed, return_exceptions=True)
                if api.stopping.is_set():
                    await _chunk(send, comment("server shutting down; reconnect"))
                return
            if not changed.result():
                await _chunk(send, comment("heartbeat"))


# Request parameters.


def _name(request: Request) -> str:
    return check_name(request.path_params["name"])


def _session_param(request: Request) -> str:
    session = request.query_params.get("session")
    if not session:
        raise InvalidArgument(
            "session is required: ?session=<id from POST /v1/sessions>", field="session"
        )
    return session


def _wait(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return DEFAULT_WAIT
    try:
        wait = parse_duration(raw)
    except ValueError as exc:
        raise InvalidArgument(f"wait: {exc}", field="wait") from None
    if wait > MAX_WAIT:
        raise InvalidArgument(f"wait must be at most {format_duration(MAX_WAIT)}", field="wait")
    return wait


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None or not raw.isdigit():
        raise InvalidArgument("limit is required: ?limit=<places, 1 or more>", field="limit")
    return int(raw)


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw.lower() in ("0", "false", "no"):
        return False
    if raw.lower() in ("", "1", "true", "yes"):
        return True
    raise InvalidArgument(f"{name} must be true or false", field=name)


def _wants_stream(request: Request) -> bool:
    if "text/event-stream" in request.headers.get("accept", ""):
        return True
    return _flag(request, "stream")


# Answers.


def _session(record: SessionRecord) -> dict[str, Any]:
    return {
        "session": record.id,
        "name": record.name,
        "ttl": format_duration(record.ttl),
        "created": record.created,
    }


def _public(contender: Contender | None) -> dict[str, object] | None:
    return contender.public(value=True) if contender is not None else None


def _lock(view: LineView) -> dict[str, Any]:
    holder = view.holders[0].public() if view.holders else None
    return {"lock": view.name, "holder": holder, "waiting": [c.public() for c in view.waiting]}


def _semaphore(view: LineView) -> dict[str, Any]:
    return {
        "semaphore": view.name,
        "limit": view.limit,
        "holders": [c.public() for c in view.holders],
        "waiting": [c.public() for c in view.waiting],
    }


def _election(view: LineView) -> dict[str, Any]:
    return {
        "election": view.name,
        "leader": _public(view.holders[0]) if view.holders else None,
        "candidates": [c.public(value=True) for c in view.waiting],
    }


async def _chunk(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
