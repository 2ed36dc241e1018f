"""HTTP API of call policies: how clients call each service.

    GET    /v1/policies             every policy: [{name, revision, policy}] (blocking query)
    GET    /v1/policies/{name}      one policy document (blocking query on it)
    PUT    /v1/policies/{name}      set it (validated; If-Match: <revision> for CAS)
    DELETE /v1/policies/{name}      remove it (If-Match as for PUT)

A policy is a `crossway.sdk.policies.CallPolicy` document stored as JSON at
`/policies/{name}`, where `name` is a service name, or `default` for the
policy of every service that has none of its own. Clients follow the prefix
with `GET /v1/watch?prefix=/policies/` and apply changes as they come (code
settings in a client win over these; see crossway/sdk/policies.py).

Theory of operation
- A document is validated before anything is written: unknown fields, wrong
  types and out-of-range values are refused with 400 and the JSON path of
  the field (`$.retries.attempts`). It is stored re-encoded with only the
  fields that differ from their defaults, so what operators did not set
  follows the defaults of the clients that read it.
- Revisions are the store's: a read answers `X-Crossway-Index` and, for one
  policy, `ETag: "<mod_revision>"`; `If-Match: <mod_revision>` makes a write
  a compare-and-set (412 when the policy moved; 0 means "must not exist").
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.errors import InvalidArgument, NotFound
from crossway.registry.model import check_name
from crossway.sdk.policies import POLICY_PREFIX, CallPolicy, encode_policy
from crossway.server.blocking import blocking_query
from crossway.server.context import ServerContext
from crossway.server.http import json_response, read_json
from crossway.store import KeyValue, Store


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The route provider for `crossway.server.app` (no background work)."""
    return PoliciesApi(ctx.store).routes()


class PoliciesApi:
    def __init__(self, store: Store) -> None:
        self.store = store

    def routes(self) -> list[BaseRoute]:
        one = "/v1/policies/{name}"
        return [
            Route("/v1/policies", self.list_policies, methods=["GET"]),
            Route(one, self.get_policy, methods=["GET"]),
            Route(one, self.put_policy, methods=["PUT"]),
            Route(one, self.delete_policy, methods=["DELETE"]),
        ]

    async def list_policies(self, request: Request) -> Response:
        await blocking_query(request, self.store, POLICY_PREFIX)
        listing = await self.store.range(POLICY_PREFIX)
        entries = [_entry(kv) for kv in listing.kvs if "/" not in kv.key[len(POLICY_PREFIX) :]]
        return json_response(entries, index=listing.revision)

    async def get_policy(self, request: Request) -> Response:
        name = _name(request)
        await blocking_query(request, self.store, POLICY_PREFIX + name)
        kv = await self.store.get(POLICY_PREFIX + name)
        if kv is None:
            raise NotFound(f"no call policy named {name!r}", name=name)
        return Response(
            kv.value,
            media_type="application/json",
            headers={"X-Crossway-Index": str(kv.mod_revision), "ETag": _etag(kv.mod_revision)},
        )

    async def put_policy(self, request: Request) -> Response:
        name = _name(request)
        policy = await read_json(request, CallPolicy)
        put = await self.store.put(
            POLICY_PREFIX + name, encode_policy(policy), if_mod_revision=_if_match(request)
        )
        body = {"name": name, "revision": put.revision, "policy": policy}
        return json_response(body, index=put.revision, headers={"ETag": _etag(put.revision)})

    async def delete_policy(self, request: Request) -> Response:
        name = _name(request)
        key = POLICY_PREFIX + name
        deleted = await self.store.delete(key, if_mod_revision=_if_match(request))
        if not deleted.deleted:
            raise NotFound(f"no call policy named {name!r}", name=name)
        return json_response({"name": name, "revision": deleted.revision}, index=deleted.revision)


def _entry(kv: KeyValue) -> dict[str, Any]:
    return {
        "name": kv.key[len(POLICY_PREFIX) :],
        "revision": kv.mod_revision,
        "policy": msgspec.Raw(kv.value),
    }


def _name(request: Request) -> str:
    return check_name(request.path_params["name"], "name")


def _etag(revision: int) -> str:
    return f'"{revision}"'


def _if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    text = raw.strip().strip('"')
    if not text.isdigit():
        raise InvalidArgument(
            f"If-Match must be a policy revision (a number), got {raw!r}", field="If-Match"
        )
    return int(text)
