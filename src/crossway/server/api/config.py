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
"""

from __future__ import annotations

import asyncio
import functools
import random
import urllib.parse
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.config import bulk
from crossway.config.center import Author, ConfigCenter, ContentTooLarge, Published
from crossway.config.feed import ConfigFeed
from crossway.config.formats import MEDIA_TYPES, choose_format, decode_text
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
            Route("/v1/config", self.list_namespaces, methods=["GET"]),
            Route("/v1/config/{namespace}/_export", self.export, methods=["GET"]),
            Route("/v1/config/{namespace}/_import", self.import_, methods=["POST"]),
            Route("/v1/config/{namespace}", self.list_groups, methods=["GET"]),
            Route("/v1/config/{namespace}/{group}", self.list_keys, methods=["GET"]),
            Route(_KEY, self.get_entry, methods=["GET"]),
            Route(_KEY, self.put_entry, methods=["PUT"]),
            Route(_KEY, self.delete_entry, methods=["DELETE"]),
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

    async def get_entry(self, request: Request) -> Response:
        r = _ref(request)
        raw_version = request.query_params.get("version")
        if raw_version is not None:
            return await self._get_version(r, raw_version)
        labels = _labels(request)
        params = BlockingParams.parse(request.query_params)
        snapshot = await self.center.read(r)
        if params.index is not None and params.wait > 0:
            snapshot = await self._long_poll(request, r, labels, snapshot, params)
        view = resolve(snapshot, labels)
        if view is None:
            found = NotFound(f"{r} does not exist")
            return error_response(found, headers={INDEX_HEADER: str(snapshot.index)})
        return _content(view, request.headers.get("if-none-match"))

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
        request: Request,
        r: ConfigRef,
        labels: dict[str, str],
        snapshot: Snapshot,
        params: BlockingParams,
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
        gone = asyncio.ensure_future(_disconnected(request))
        if_none_match = request.headers.get("if-none-match")

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

    async def _get_version(self, r: ConfigRef, raw_version: str) -> Response:
        number = _int_param(raw_version, "version") or 0
        release = await self.center.version(r, number)
        if release.deleted:
            raise NotFound(f"version {number} of {r} is a deletion; it has no content")
        view = View(release.content, release.format, number, release.md5, False, 0)
        response = _content(view, None)
        response.headers[INDEX_HEADER] = str(await self.center.store.revision())
        return response


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@functools.lru_cache(maxsize=256)
def _snapshot_of(kv: KeyValue) -> Snapshot:
    # Every waiter woken by one change gets the same key-value: decode it once.
    return Snapshot(decode_entry(kv.value), kv.mod_revision)


def _ref(request: Request) -> ConfigRef:
    params = request.path_params
    return ref(params["namespace"], params["group"], params["key"])


def _author(request: Request, message: str | None = None) -> Author:
    name = _header_text(request, AUTHOR_HEADER) or ANONYMOUS
    text = message or request.query_params.get("message") or _header_text(request, MESSAGE_HEADER)
    return Author(name, text or "")


def _header_text(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    return urllib.parse.unquote(value).strip() if value is not None else None


def _labels(request: Request) -> dict[str, str]:
    labels = parse_labels(request.headers.get(LABELS_HEADER, ""), field=LABELS_HEADER)
    labels.update(parse_labels(request.query_params.get("labels", ""), field="labels"))
    return labels


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


def _content(view: View, if_none_match: str | None) -> Response:
    headers = _headers(view.index, view.md5, view.version, view.format, view.beta)
    if etag_matches(if_none_match, view.etag):
        return _Prepared(304, b"", list(headers[1:]))  # no content, so no content-type
    body = view.content.encode("utf-8")
    return _Prepared(200, body, [*headers, (b"content-length", b"%d" % len(body))])


class _Prepared(Response):
    """A response over a header list built once for every client served the
    same view: one change wakes a thousand long polls, not a thousand encoders."""

    def __init__(self, status: int, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.background = None
        self.body = body
        self.raw_headers = raw_headers


@functools.lru_cache(maxsize=1024)
def _headers(
    index: int, md5: str, version: int, fmt: Format, beta: bool
) -> tuple[tuple[bytes, bytes], ...]:
    """content-type first, then the headers a 304 repeats too."""
    pairs = [
        ("content-type", f"{MEDIA_TYPES[fmt]}; charset=utf-8"),
        ("etag", f'"{md5}"'),
        (INDEX_HEADER.lower(), str(index)),
        ("x-crossway-version", str(version)),
        ("x-crossway-format", fmt),
        ("cache-control", "no-cache"),
    ]
    if beta:
        pairs.append(("x-crossway-beta", "true"))
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs)


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
