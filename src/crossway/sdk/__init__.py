"""The Python SDK: register, discover, call, configure and coordinate from inside a service.

    import crossway

    client = crossway.Client(service="orders", port=8080)   # or CROSSWAY_* variables
    async with client:
        async with client.http() as http:                  # httpx2, services by name
            item = (await http.get("http://catalog/items/1")).json()

See docs/sdk.md. Every name below is imported on first use (PEP 562), so
`import crossway.sdk` costs little and the FastAPI, gRPC, pydantic and httpx
integrations load only for programs that use them. `__all__` is the whole
public surface; anything else under `crossway.sdk.*` may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossway.sdk.asgi import CrosswayMiddleware, client_address, lifespan, metrics_endpoint
    from crossway.sdk.client import Client
    from crossway.sdk.config import (
        BoundConfig,
        ConfigNotLoaded,
        ConfigRejected,
        start_bindings,
        stop_bindings,
    )
    from crossway.sdk.control import ControlPlane, ControlPlaneError, ControlPlaneUnavailable
    from crossway.sdk.coordination import Leader, Lock, LockLost, LockNotAcquired, SessionLost
    from crossway.sdk.declarative import (
        Api,
        ApiError,
        Body,
        ClientError,
        Header,
        HttpError,
        NotFoundError,
        Query,
        ResponseDecodeError,
        ServerError,
        TransportFailure,
        delete,
        get,
        head,
        patch,
        post,
        put,
    )
    from crossway.sdk.discovery import DiscoveryCache
    from crossway.sdk.grpc import (
        Balanced,
        RetryInterceptor,
        channel_pool,
        client_interceptors,
        deadline_interceptors,
        default_interceptors,
        metrics_interceptors,
        tracing_interceptors,
    )
    from crossway.sdk.policies import (
        BackoffSpec,
        BreakerSpec,
        BudgetSpec,
        BulkheadSpec,
        CallPolicy,
        OutlierSpec,
        RetrySpec,
    )
    from crossway.sdk.settings import ClientSettings, InvalidSettings
    from crossway.sdk.transport import CrosswaySyncTransport, CrosswayTransport, NoInstancesError
    from crossway.sdk.transport_httpx import CrosswayHttpxSyncTransport, CrosswayHttpxTransport

_MODULES: dict[str, tuple[str, ...]] = {
    "client": ("Client",),
    "settings": ("ClientSettings", "InvalidSettings"),
    "control": ("ControlPlane", "ControlPlaneError", "ControlPlaneUnavailable"),
    "discovery": ("DiscoveryCache",),
    "coordination": ("Leader", "Lock", "LockLost", "LockNotAcquired", "SessionLost"),
    "transport": ("CrosswaySyncTransport", "CrosswayTransport", "NoInstancesError"),
    "transport_httpx": ("CrosswayHttpxSyncTransport", "CrosswayHttpxTransport"),
    "policies": (
        "BackoffSpec",
        "BreakerSpec",
        "BudgetSpec",
        "BulkheadSpec",
        "CallPolicy",
        "OutlierSpec",
        "RetrySpec",
    ),
    "declarative": (
        "Api",
        "ApiError",
        "Body",
        "ClientError",
        "Header",
        "HttpError",
        "NotFoundError",
        "Query",
        "ResponseDecodeError",
        "ServerError",
        "TransportFailure",
        "delete",
        "get",
        "head",
        "patch",
        "post",
        "put",
    ),
    "config": (
        "BoundConfig",
        "ConfigNotLoaded",
        "ConfigRejected",
        "start_bindings",
        "stop_bindings",
    ),
    "asgi": ("CrosswayMiddleware", "client_address", "lifespan", "metrics_endpoint"),
    "grpc": (
        "Balanced",
        "RetryInterceptor",
        "channel_pool",
        "client_interceptors",
        "deadline_interceptors",
        "default_interceptors",
        "metrics_interceptors",
        "tracing_interceptors",
    ),
}
_HOME = {name: f"crossway.sdk.{module}" for module, names in _MODULES.items() for name in names}

__all__ = [
    "Api",
    "ApiError",
    "BackoffSpec",
    "Balanced",
    "Body",
    "BoundConfig",
    "BreakerSpec",
    "BudgetSpec",
    "BulkheadSpec",
    "CallPolicy",
    "Client",
    "ClientError",
    "ClientSettings",
    "ConfigNotLoaded",
    "ConfigRejected",
    "ControlPlane",
    "ControlPlaneError",
    "ControlPlaneUnavailable",
    "CrosswayHttpxSyncTransport",
    "CrosswayHttpxTransport",
    "CrosswayMiddleware",
    "CrosswaySyncTransport",
    "CrosswayTransport",
    "DiscoveryCache",
    "Header",
    "HttpError",
    "InvalidSettings",
    "Leader",
    "Lock",
    "LockLost",
    "LockNotAcquired",
    "NoInstancesError",
    "NotFoundError",
    "OutlierSpec",
    "Query",
    "ResponseDecodeError",
    "RetryInterceptor",
    "RetrySpec",
    "ServerError",
    "SessionLost",
    "TransportFailure",
    "channel_pool",
    "client_address",
    "client_interceptors",
    "deadline_interceptors",
    "default_interceptors",
    "delete",
    "get",
    "head",
    "lifespan",
    "metrics_endpoint",
    "metrics_interceptors",
    "patch",
    "post",
    "put",
    "start_bindings",
    "stop_bindings",
    "tracing_interceptors",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'crossway.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
