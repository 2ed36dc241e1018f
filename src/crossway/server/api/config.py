"""HTTP API of the config center.

    GET    /v1/config                                   namespaces
    GET    /v1/config/{ns}                              groups (with key counts)
    GET    /v1/config/{ns}/{group}                      keys (version, format, md5, beta …)
    GET    /v1/config/{ns}/_export[?group=G]            every release of a namespace, as JSON
    POST   /v1/config/{ns}/_import                      many entries in one transaction
    GET    /v1/config/{ns}/{group}/{key}                raw content (?version=N, ?index=N&wait=30s)
    PUT    /v1/config/{ns}/{group}/{key}                publish (?format=, ?beta=<selector>)
    DELETE /v1/config/{ns}/{group}/{key}                delete (a new version; history stays)
    GET    /v1/config/{ns}/{group}/{key}/history        every version, newest first
    GET    /v1/config/{ns}/{group}/{key}/diff?from=&to= unified diff between two versions
    POST   /v1/config/{ns}/{group}/{key}/rollback       {"version": N}: a new version, old content
    GET    /v1/config/{ns}/{group}/{key}/beta           the gray-release candidate
    POST   /v1/config/{ns}/{group}/{key}/promote        the beta becomes the release
    DELETE /v1/config/{ns}/{group}/{key}/beta           abandon the beta

Requests name their author in `X-Crossway-Author` (default "anonymous") and
may explain a change in `X-Crossway-Message` or `?message=` (both header
values may be percent-encoded UTF-8). `If-Match: <version>` makes any write a
compare-and-set (412 when the entry is at another version; 0 means "must not
exist yet"). Clients send their labels as `X-Crossway-Labels: zone=eu-1,…`
and/or `?labels=`; the beta is served to those its selector matches, marked
`X-Crossway-Beta: true`.

Long poll (`GET …/{key}?index=N&wait=30s`): the index of an entry is the
mod_revision of its record, which moves on every release and every beta
change. The request is held until it passes N, then answered with the content
and the new index; when the wait runs out it is answered with the current
content and the unchanged index (as Consul does). A client that also sends
`If-None-Match: <its ETag>` sleeps through changes that do not change what it
is served (a beta for other labels) and gets 304 at the end of the wait.
Waiting requests are woken by one shared watch (`ConfigFeed`), not one each.

Push cost (one change wakes every client waiting on the key, so whatever a
wake-up costs is paid a thousand times at once):
- `GET …/{key}` is a raw ASGI endpoint: no Request/Response objects and no
  Starlette wrappers between the wake-up and the socket.
- A response is rendered once per (entry revision, served view): the header
  list and body bytes are shared by every client served that view (they are
  tuples and bytes, so nothing downstream can change them for the others).
- The query string is parsed once per distinct string (clients at one index
  send the same one), and a long poll whose index is the newest revision the
  feed has delivered for the key parks without reading the store.
"""

from __future__ import annotations

import asyncio
import functools
import random
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from crossway.config import bulk
from crossway.config.center import Author, ConfigCenter, ContentTooLarge, Published
from crossway.config.feed import ConfigFeed
from crossway.config.formats import choose_format, decode_text
from crossway.config.model import (
    ANONYMOUS,
    ENTRY_PREFIX,
    ConfigRef,
    Format,
    Release,
    decode_entry,
    ref,
)
from crossway.config.selector import parse_labels
from crossway.config.view import Snapshot, View, etag_matches, resolve
from crossway.core.clock import Clock
from crossway.core.errors import InvalidArgument, NotFound
from crossway.server.api._config_render import render
from crossway.server.blocking import BlockingParams, blocking_query, jittered_wait
from crossway.server.context import ServerContext
from crossway.server.http import INDEX_HEADER, error_response, json_response, read_json
from crossway.store import KeyValue, Store

AUTHOR_HEADER = "X-Crossway-Author"
MESSAGE_HEADER = "X-Crossway-Message"
LABELS_HEADER = "X-Crossway-Labels"
MAX_IMPORT_BODY = 16 << 20
_KEY = "/v1/config/{namespace}/{group}/{key}"


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    message: str | None = None


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The route provider for `crossway.server.app`: builds the API on the
    context's store and clock and ties the feed to the server's lifecycle."""
    api = ConfigApi(ctx.store, clock=ctx.clock, stopping=ctx.stopping)
    ctx.provide(api.center)
    ctx.on_start(api.start)
    ctx.on_close(api.close)
    return api.routes()


class ConfigApi:
    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.center = ConfigCenter(store, clock=clock)
        self.feed = ConfigFeed(store)
        self._stopping = stopping
        self._release_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the store (also done lazily by the first long poll). A store
        failure propagates; the next call tries again."""
        await self._ensure_started()

    async def close(self) -> None:
        """Stop following; waiting long polls answer at once."""
        if self._release_task is not None:
            self._release_task.cancel()
        await self.feed.close()

    async def _ensure_started(self) -> None:
        await self.feed.start()
        if self._stopping is not None and self._release_task is None:
            loop = asyncio.get_running_loop()
            self._release_task = loop.create_task(self._release_on(self._stopping))

    async def _release_on(self, stopping: asyncio.Event) -> None:
        # One task for every long poll: when shutdown begins, wake them all so
        # each answers now instead of holding the shutdown up for its wait.
        await stopping.wait()
        self.feed.release_all()

    def routes(self) -> list[BaseRoute]:
        return [
            # The entry's own path first: long polls are most of the traffic,
            # and no other route has three segments after /v1/config, so the
            # order changes no match, only how many patterns a request tries.
            Route(_KEY, _AsgiEndpoint(self.get_entry), methods=["GET"]),
            Route(_KEY, self.put_entry, methods=["PUT"]),
            Route(_KEY, self.delete_entry, methods=["DELETE"]),
            Route("/v1/config", self.list_namespaces, methods=["GET"]),
            Route("/v1/config/{namespace}/_export", self.export, methods=["GET"]),
            Route("/v1/config/{namespace}/_import", self.import_, methods=["POST"]),
            Route("/v1/config/{namespace}", self.list_groups, methods=["GET"]),
            Route("/v1/config/{namespace}/{group}", self.list_keys, methods=["GET"]),
            Route(_KEY + "/history", self.history, methods=["GET"]),
            Route(_KEY + "/diff", self.diff, methods=["GET"]),
            Route(_KEY + "/rollback", self.rollback, methods=["POST"]),
            Route(_KEY + "/promote", self.promote, methods=["POST"]),
            Route(_KEY + "/beta", self.get_beta, methods=["GET"]),
            Route(_KEY + "/beta", self.abandon, methods=["DELETE"]),
        ]

    # Listings, import and export.

    async def list_namespaces(self, request: Request) -> Response:
        await blocking_query(request, self.center.store, ENTRY_PREFIX)
        names, revision = await bulk.namespaces(self.center)
        return json_response(names, index=revision)

    async def list_groups(self, request: Request) -> Response:
        namespace = request.path_params["namespace"]
        await blocking_query(request, self.center.store, f"{ENTRY_PREFIX}{namespace}/")
        found, revision = await bulk.groups(self.center, namespace)
        return json_response(found, index=revision)

    async def list_keys(self, request: Request) -> Response:
        namespace, group = request.path_params["namespace"], request.path_params["group"]
        await blocking_query(request, self.center.store, f"{ENTRY_PREFIX}{namespace}/{group}/")
        found, revision = await bulk.keys(self.center, namespace, group)
        return json_response(found, index=revision)

    async def export(self, request: Request) -> Response:
        namespace = request.path_params["namespace"]
        group = request.query_params.get("group") or None
        entries, revision = await bulk.export(self.center, namespace, group)
        body = {"namespace": namespace, "revision": revision, "entries": entries}
        return json_response(body, index=revision)

    async def import_(self, request: Request) -> Response:
        body = await read_json(request, bulk.ImportRequest, max_bytes=MAX_IMPORT_BODY)
        author = _author(request, body.message or None)
        namespace = request.path_params["namespace"]
        report = await bulk.import_entries(self.center, namespace, body, author=author)
        return json_response(report, index=report.revision)

    # One entry.

    async def get_entry(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_query: bytes = scope["query_string"]
        query = _query(raw_query)
        r = _ref_of(scope["path_params"])
        raw_version = query.get("version")
        if raw_version is not None:
            rendered = render(await self._get_version(r, raw_version))
            await _send(send, 200, rendered.headers, rendered.body)
            return
        labels = _labels_of(_header(scope, _LABELS_KEY), query.get("labels", ""))
        params = _blocking(raw_query)
        if_none_match = _header(scope, b"if-none-match")
        if params.index is not None and params.wait > 0:
            seen = self.feed.latest(r.entry_key)
            if seen is not None and seen.mod_revision == params.index:
                # The client holds the newest revision the feed has delivered:
                # it waits either way, and the feed brings anything newer.
                snapshot = _snapshot_of(seen)
            else:
                snapshot = await self.center.read(r)
            snapshot = await self._long_poll(receive, r, labels, snapshot, params, if_none_match)
        else:
            snapshot = await self.center.read(r)
        view = resolve(snapshot, labels)
        if view is None:
            found = NotFound(f"{r} does not exist")
            response = error_response(found, headers={INDEX_HEADER: str(snapshot.index)})
            await response(scope, receive, send)
            return
        rendered = render(view)
        if etag_matches(if_none_match, view.etag):
            await _send(send, 304, rendered.not_modified, b"")
        else:
            await _send(send, 200, rendered.headers, rendered.body)

    async def put_entry(self, request: Request) -> Response:
        r = _ref(request)
        query = request.query_params
        raw = await _read_content(request, self.center.limits.max_content)
        fmt = choose_format(
            explicit=query.get("format"),
            content_type=request.headers.get("content-type"),
            key=r.key,
        ) or await self._current_format(r)
        content = decode_text(raw, fmt)
        author, if_version = _author(request), _if_match(request)
        if "beta" in query:
            published = await self.center.publish_beta(
                r, content, fmt=fmt, selector=query["beta"], author=author, if_version=if_version
            )
        else:
            published = await self.center.publish(
                r, content, fmt=fmt, author=author, if_version=if_version
            )
        return _published(published)

    async def _current_format(self, r: ConfigRef) -> Format:
        entry = (await self.center.read(r)).entry
        return entry.release.format if entry and entry.release else "text"

    async def delete_entry(self, request: Request) -> Response:
        published = await self.center.delete(
            _ref(request), author=_author(request), if_version=_if_match(request)
        )
        return _published(published)

    async def history(self, request: Request) -> Response:
        releases = await self.center.history(_ref(request))
        rows = [_history_row(release) for release in releases]
        return json_response(rows, index=await self.center.store.revision())

    async def diff(self, request: Request) -> Response:
        query = request.query_params
        old = _int_param(query.get("from"), "from")
        new = _int_param(query.get("to"), "to")
        text = await self.center.diff(_ref(request), old, new)
        return Response(
            text.encode("utf-8"),
            media_type="text/x-diff; charset=utf-8",
            headers={INDEX_HEADER: str(await self.center.store.revision())},
        )

    async def rollback(self, request: Request) -> Response:
        body = await read_json(request, RollbackRequest)
        published = await self.center.rollback(
            _ref(request),
            body.version,
            author=_author(request, body.message),
            if_version=_if_match(request),
        )
        return _published(published)

    async def promote(self, request: Request) -> Response:
        published = await self.center.promote(
            _ref(request), author=_author(request), if_version=_if_match(request)
        )
        return _published(published)

    async def get_beta(self, request: Request) -> Response:
        r = _ref(request)
        snapshot = await self.center.read(r)
        beta = snapshot.entry.beta if snapshot.entry else None
        if beta is None:
            raise NotFound(f"{r} has no beta")
        return json_response(beta, index=snapshot.index)

    async def abandon(self, request: Request) -> Response:
        published = await self.center.abandon(_ref(request), if_version=_if_match(request))
        return _published(published)

    # Long poll.

    async def _long_poll(
        self,
        receive: Receive,
        r: ConfigRef,
        labels: Mapping[str, str],
        snapshot: Snapshot,
        params: BlockingParams,
        if_none_match: str | None,
    ) -> Snapshot:
        """The snapshot to answer with: the first past `params.index` that
        changes what this client is served, or the latest when the wait ends,
        the client leaves or the server begins to shut down."""
        after = params.index or 0
        await self._ensure_started()
        # An index beyond the store's revision comes from another store (or a
        # confused client): answer now so it resynchronises. The feed's
        # revision is a lower bound of the store's, so the store (a round trip
        # on etcd) is asked only when the index is past what the feed has seen.
        if after > self.feed.revision and after > await self.center.store.revision():
            return snapshot
        loop = asyncio.get_running_loop()
        deadline = loop.time() + jittered_wait(params.wait, random.random())
        gone = asyncio.ensure_future(_disconnected(receive))

        def over() -> bool:
            stopping = self._stopping is not None and self._stopping.is_set()
            return stopping or gone.done() or loop.time() >= deadline

        try:
            while True:
                if snapshot.index > after:
                    view = resolve(snapshot, labels)
                    if view is None or not etag_matches(if_none_match, view.etag):
                        return snapshot
                    after = snapshot.index  # changed, but not for this client
                if over():
                    return snapshot
                kv = await self.feed.wait_change(r.entry_key, after, deadline=deadline, abort=gone)
                if over():
                    return snapshot
                snapshot = await self.center.read(r) if kv is None else _snapshot_of(kv)
        finally:
            gone.cancel()

    async def _get_version(self, r: ConfigRef, raw_version: str) -> View:
        """The view of an old version; its index is the store's revision."""
        number = _int_param(raw_version, "version") or 0
        release = await self.center.version(r, number)
        if release.deleted:
            raise NotFound(f"version {number} of {r} is a deletion; it has no content")
        index = await self.center.store.revision()
        return View(release.content, release.format, number, release.md5, False, index)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _AsgiEndpoint:
    """A method as a raw ASGI endpoint (Starlette wraps a function or a bound
    method in its request/response adapter; any other callable it calls as is)."""

    def __init__(self, handle: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handle(scope, receive, send)


async def _send(
    send: Send, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_LABELS_KEY = LABELS_HEADER.lower().encode("latin-1")


def _header(scope: Scope, name: bytes) -> str | None:
    """A request header by its lower-case name (ASGI servers send them so)."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


@functools.lru_cache(maxsize=1024)
def _query(raw: bytes) -> QueryParams:
    # Immutable, so one parse serves every client sending the same string.
    return QueryParams(raw)


@functools.lru_cache(maxsize=1024)
def _blocking(raw: bytes) -> BlockingParams:
    return BlockingParams.parse(_query(raw))


@functools.lru_cache(maxsize=1024)
def _labels_of(header: str | None, query: str) -> Mapping[str, str]:
    labels = parse_labels(header or "", field=LABELS_HEADER)
    labels.update(parse_labels(query, field="labels"))
    return labels


@functools.lru_cache(maxsize=64)
def _snapshot_of(kv: KeyValue) -> Snapshot:
    # Every waiter woken by one change gets the same key-value: decode it once.
    return Snapshot(decode_entry(kv.value), kv.mod_revision)


def _ref(request: Request) -> ConfigRef:
    return _ref_of(request.path_params)


def _ref_of(params: Mapping[str, str]) -> ConfigRef:
    return ref(params["namespace"], params["group"], params["key"])


def _author(request: Request, message: str | None = None) -> Author:
    name = _header_text(request, AUTHOR_HEADER) or ANONYMOUS
    text = message or request.query_params.get("message") or _header_text(request, MESSAGE_HEADER)
    return Author(name, text or "")


def _header_text(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    return urllib.parse.unquote(value).strip() if value is not None else None


def _if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InvalidArgument(
            f"If-Match must be an entry version (a number), got {raw!r}", field="If-Match"
        )
    return int(text)


def _int_param(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise InvalidArgument(f"{name} must be a version number, got {raw!r}", field=name)
    return int(raw)


async def _read_content(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ContentTooLarge(f"content is {declared} bytes; an entry holds at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ContentTooLarge(f"content is over {limit} bytes, the most an entry holds")
        chunks.append(chunk)
    return b"".join(chunks)


def _published(published: Published) -> Response:
    body: dict[str, Any] = {
        "version": published.version,
        "revision": published.revision,
        "md5": published.md5,
    }
    if not published.changed:
        body["changed"] = False
    if published.beta:
        body.update(beta=True, selector=published.selector)
    return json_response(body, index=published.revision)


def _history_row(release: Release) -> dict[str, Any]:
    row = {
        "version": release.version,
        "md5": release.md5,
        "author": release.author,
        "time": release.time,
        "message": release.message,
        "format": release.format,
    }
    if release.deleted:
        row["deleted"] = True
    return row
