"""A validated document per name, under one store prefix, with compare-and-set.

Gateway routes (`/v1/routes`) and call policies (`/v1/policies`) are the same
kind of API over different documents, so they share this one:

    GET    /v1/<kind>s             every document: [{name, revision, <kind>}] (blocking query)
    GET    /v1/<kind>s/{name}      one document (blocking query on it)
    PUT    /v1/<kind>s/{name}      set it (validated; If-Match: <revision> for CAS)
    DELETE /v1/<kind>s/{name}      remove it (If-Match as for PUT)

Theory of operation
-------------------
- A document is decoded into its msgspec type before anything is written, so
  unknown fields, wrong types and values out of range are refused with 400
  and the JSON path of the field. It is stored as its `encode` makes it (only
  the fields that differ from their defaults), so readers see exactly what was
  validated and fields left out follow the readers' defaults.
- Revisions are the store's: a read answers `X-Crossway-Index` and, for one
  document, `ETag: "<mod_revision>"`; `If-Match: <mod_revision>` makes a
  write a compare-and-set (412 when the document moved; 0 means "must not
  exist").
- Only direct children of the prefix are listed: `/routes/a`, not
  `/routes/a/b` (nothing writes those through this API).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.errors import InvalidArgument, NotFound
from crossway.server.blocking import blocking_query
from crossway.server.http import json_response, read_json
from crossway.store import KeyValue, Store


@dataclass(frozen=True, slots=True)
class DocumentKind:
    """What one document API serves."""

    singular: str
    """The field of a listing entry holding the document: "route", "policy"."""
    described: str
    """How errors name one: "route", "call policy"."""
    path: str
    """The collection's URL: "/v1/routes"."""
    prefix: str
    """The store prefix, ending in "/": "/routes/"."""
    schema: type[msgspec.Struct]
    encode: Callable[[Any], bytes]
    check_name: Callable[[str], str]


class DocumentApi:
    """The four endpoints of one `DocumentKind` (see the module header)."""

    def __init__(self, store: Store, kind: DocumentKind) -> None:
        self.store = store
        self.kind = kind

    def routes(self) -> list[BaseRoute]:
        one = self.kind.path + "/{name}"
        return [
            Route(self.kind.path, self.list_documents, methods=["GET"]),
            Route(one, self.get_document, methods=["GET"]),
            Route(one, self.put_document, methods=["PUT"]),
            Route(one, self.delete_document, methods=["DELETE"]),
        ]

    async def list_documents(self, request: Request) -> Response:
        """Every document; with `?index=N&wait=D`, first waits for a change after N."""
        prefix = self.kind.prefix
        await blocking_query(request, self.store, prefix)
        listing = await self.store.range(prefix)
        entries = [self._entry(kv) for kv in listing.kvs if "/" not in kv.key[len(prefix) :]]
        return json_response(entries, index=listing.revision)

    async def get_document(self, request: Request) -> Response:
        """The stored document (404 when there is none)."""
        name = self._name(request)
        await blocking_query(request, self.store, self.kind.prefix + name)
        kv = await self.store.get(self.kind.prefix + name)
        if kv is None:
            raise self._missing(name)
        headers = {"X-Crossway-Index": str(kv.mod_revision), "ETag": _etag(kv.mod_revision)}
        return Response(kv.value, media_type="application/json", headers=headers)

    async def put_document(self, request: Request) -> Response:
        """Validate and store; nothing is written when the document is refused
        (400 naming the field) or `If-Match` does not hold (412)."""
        name = self._name(request)
        stored = self.kind.encode(await read_json(request, self.kind.schema))
        put = await self.store.put(
            self.kind.prefix + name, stored, if_mod_revision=self._if_match(request)
        )
        body = {"name": name, "revision": put.revision, self.kind.singular: msgspec.Raw(stored)}
        return json_response(body, index=put.revision, headers={"ETag": _etag(put.revision)})

    async def delete_document(self, request: Request) -> Response:
        name = self._name(request)
        deleted = await self.store.delete(
            self.kind.prefix + name, if_mod_revision=self._if_match(request)
        )
        if not deleted.deleted:
            raise self._missing(name)
        return json_response({"name": name, "revision": deleted.revision}, index=deleted.revision)

    def _entry(self, kv: KeyValue) -> dict[str, Any]:
        return {
            "name": kv.key[len(self.kind.prefix) :],
            "revision": kv.mod_revision,
            self.kind.singular: msgspec.Raw(kv.value),
        }

    def _name(self, request: Request) -> str:
        return self.kind.check_name(request.path_params["name"])

    def _missing(self, name: str) -> NotFound:
        return NotFound(f"no {self.kind.described} named {name!r}", name=name)

    def _if_match(self, request: Request) -> int | None:
        raw = request.headers.get("if-match")
        if raw is None:
            return None
        text = raw.strip().strip('"')
        if not text.isdigit():
            raise InvalidArgument(
                f"If-Match must be a {self.kind.singular} revision (a number), got {raw!r}",
                field="If-Match",
            )
        return int(text)


def _etag(revision: int) -> str:
    return f'"{revision}"'
