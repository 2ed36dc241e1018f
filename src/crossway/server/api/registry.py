"""HTTP API of the service registry.

    PUT    /v1/services/{service}/instances/{id}     register (idempotent)
    DELETE /v1/services/{service}/instances/{id}     deregister
    PUT    /v1/leases/{lease}/keepalive               renew every instance on a lease
    GET    /v1/services                               services with counts (blocking query)
    GET    /v1/services/{service}?healthy=&zone=&tag= instances (blocking query)
    GET|PUT /v1/services/{service}/settings          per-service protect threshold
    GET|DELETE /v1/registry/self-preservation        state; lift it

Reads are served from the catalog (memory), answer `X-Crossway-Index`, and
accept `?index=N&wait=30s` (Consul-style): a service query blocks until that
service changes after N, the service list until any service does.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument
from crossway.registry import Instance, Registration, Registry
from crossway.registry.guard import PreservationGuard
from crossway.registry.model import SETTINGS_PREFIX, check_name
from crossway.store import Store

INDEX_HEADER = "X-Crossway-Index"
DEFAULT_WAIT = 30.0
MAX_WAIT = 600.0
_encoder = msgspec.json.Encoder()


class ServiceSettings(msgspec.Struct, forbid_unknown_fields=True):
    protect_threshold: float = 0.0


class RegistryApi:
    def __init__(self, store: Store, registry: Registry, guard: PreservationGuard) -> None:
        self.store = store
        self.registry = registry
        self.guard = guard

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/services", self.list_services, methods=["GET"]),
            Route("/v1/services/{service}", self.get_service, methods=["GET"]),
            Route(
                "/v1/services/{service}/instances/{id}",
                self.register,
                methods=["PUT"],
            ),
            Route(
                "/v1/services/{service}/instances/{id}",
                self.deregister,
                methods=["DELETE"],
            ),
            Route("/v1/services/{service}/settings", self.get_settings, methods=["GET"]),
            Route("/v1/services/{service}/settings", self.put_settings, methods=["PUT"]),
            Route("/v1/leases/{lease}/keepalive", self.keepalive, methods=["PUT"]),
            Route("/v1/registry/self-preservation", self.preservation, methods=["GET"]),
            Route("/v1/registry/self-preservation", self.lift, methods=["DELETE"]),
        ]

    async def load_settings(self) -> None:
        listing = await self.store.range(SETTINGS_PREFIX)
        for kv in listing.kvs:
            settings = msgspec.json.decode(kv.value, type=ServiceSettings)
            self.registry.protect_thresholds[kv.key[len(SETTINGS_PREFIX) :]] = (
                settings.protect_threshold
            )

    async def register(self, request: Request) -> Response:
        body = await _decode(request, Registration)
        instance = await self.registry.register(
            request.path_params["service"], request.path_params["id"], body
        )
        return _json(instance, self.registry.catalog.revision)

    async def deregister(self, request: Request) -> Response:
        instance = await self.registry.deregister(
            request.path_params["service"], request.path_params["id"]
        )
        return _json(instance, self.registry.catalog.revision)

    async def keepalive(self, request: Request) -> Response:
        lease = request.path_params["lease"]
        ttl = await self.registry.keepalive(lease)
        return _json({"lease": lease, "ttl": f"{ttl:g}s"}, self.registry.catalog.revision)

    async def list_services(self, request: Request) -> Response:
        catalog = self.registry.catalog
        await _block(request, lambda: catalog.modified, catalog)
        services, index = self.registry.services()
        return _json(services, index)

    async def get_service(self, request: Request) -> Response:
        service = check_name(request.path_params["service"], "service")
        catalog = self.registry.catalog
        await _block(request, lambda: catalog.service_index(service), catalog)
        query = request.query_params
        found = self.registry.discover(
            service,
            healthy=_flag(query.get("healthy"), "healthy"),
            zone=query.get("zone") or None,
            tag=query.get("tag") or None,
        )
        instances = [self._mark_stale(i) for i in found.instances]
        response = _json(instances, found.index)
        if found.protected:
            response.headers["X-Crossway-Protected"] = "true"
        return response

    def _mark_stale(self, instance: Instance) -> Instance:
        if self.guard.is_stale(instance.lease):
            return msgspec.structs.replace(instance, stale=True)
        return instance

    async def get_settings(self, request: Request) -> Response:
        service = check_name(request.path_params["service"], "service")
        threshold = self.registry.protect_thresholds.get(service, 0.0)
        return _json(ServiceSettings(threshold), self.registry.catalog.revision)

    async def put_settings(self, request: Request) -> Response:
        service = check_name(request.path_params["service"], "service")
        settings = await _decode(request, ServiceSettings)
        if not 0.0 <= settings.protect_threshold <= 1.0:
            raise InvalidArgument(
                "protect_threshold must be between 0 and 1", field="protect_threshold"
            )
        put = await self.store.put(SETTINGS_PREFIX + service, _encoder.encode(settings))
        self.registry.protect_thresholds[service] = settings.protect_threshold
        return _json(settings, put.revision)

    async def preservation(self, request: Request) -> Response:
        return _json(self._preservation_state(), self.registry.catalog.revision)

    async def lift(self, request: Request) -> Response:
        self.guard.lift()
        return _json(self._preservation_state(), self.registry.catalog.revision)

    def _preservation_state(self) -> dict[str, Any]:
        last = self.guard.last
        return {
            "engaged": last.engaged,
            "lifted": self.guard.policy.lifted,
            "lapsing": last.lapsing,
            "leases": last.total,
            "stale": len(last.stale),
            "share": self.guard.policy.settings.share,
            "min_leases": self.guard.policy.settings.min_leases,
        }


async def _decode(request: Request, kind: type[Any]) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise InvalidArgument("the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(str(exc), field=_field_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"malformed JSON: {exc}") from None


def _field_of(message: str) -> str | None:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.port`" or
    # "Object contains unknown field `colour`"; name the field in both cases.
    if "- at `$." in message:
        return message.rsplit("- at `$.", 1)[1].rstrip("`").split("[", 1)[0]
    if "unknown field `" in message:
        return message.split("unknown field `", 1)[1].split("`", 1)[0]
    if "missing required field `" in message:
        return message.split("missing required field `", 1)[1].split("`", 1)[0]
    return None


def _flag(value: str | None, name: str) -> bool:
    if value is None or value == "":
        return value == ""
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise InvalidArgument(f"{name} must be true or false", field=name)


async def _block(request: Request, index_of: Any, catalog: Any) -> None:
    query = request.query_params
    if "index" not in query:
        return
    try:
        index = int(query["index"])
    except ValueError:
        raise InvalidArgument("index must be an integer revision", field="index") from None
    wait = DEFAULT_WAIT
    if "wait" in query:
        try:
            wait = parse_duration(query["wait"])
        except ValueError as exc:
            raise InvalidArgument(f"wait: {exc}", field="wait") from None
    wait = min(wait, MAX_WAIT)
    # Consul adds up to wait/16 so that many clients do not all return at once.
    wait += random.uniform(0, wait / 16)
    await catalog.wait_change(index_of, index, wait)


def _json(body: Any, index: int, status: int = 200) -> Response:
    return Response(
        _encoder.encode(body),
        status_code=status,
        media_type="application/json",
        headers={INDEX_HEADER: str(index)},
    )
