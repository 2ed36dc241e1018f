"""HTTP API of call policies: how clients call each service.

    GET    /v1/policies             every policy: [{name, revision, policy}] (blocking query)
    GET    /v1/policies/{name}      one policy document (blocking query on it)
    PUT    /v1/policies/{name}      set it (validated; If-Match: <revision> for CAS)
    DELETE /v1/policies/{name}      remove it (If-Match as for PUT)

A policy is a `crossway.traffic.policy.CallPolicy` document stored as JSON at
`/policies/{name}`, where `name` is a service name, or `default` for the
policy of every service that has none of its own. Clients follow the prefix
with `GET /v1/watch?prefix=/policies/` and apply changes as they come (code
settings in a client win over these; see crossway/sdk/policies.py).

Validation, storage and compare-and-set: `crossway.server.documents`.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from crossway.registry.model import check_name
from crossway.server.context import ServerContext
from crossway.server.documents import DocumentApi, DocumentKind
from crossway.traffic.policy import POLICY_PREFIX, CallPolicy, encode_policy

POLICIES = DocumentKind(
    singular="policy",
    described="call policy",
    path="/v1/policies",
    prefix=POLICY_PREFIX,
    schema=CallPolicy,
    encode=encode_policy,
    check_name=lambda name: check_name(name, "name"),
)


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The route provider for `crossway.server.app` (no background work)."""
    return DocumentApi(ctx.store, POLICIES).routes()
