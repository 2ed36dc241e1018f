"""The SDK's public surface is exactly what it means to export, and
`import crossway` stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import crossway
import crossway.sdk

SURFACE = {
    "client": {"Client"},
    "settings": {"ClientSettings", "InvalidSettings"},
    "control": {"ControlPlane", "ControlPlaneError", "ControlPlaneUnavailable"},
    "discovery": {"DiscoveryCache"},
    "coordination": {"Leader", "Lock", "LockLost", "LockNotAcquired", "SessionLost"},
    "transport": {"CrosswayTransport", "CrosswaySyncTransport", "NoInstancesError"},
    "transport_httpx": {"CrosswayHttpxTransport", "CrosswayHttpxSyncTransport"},
    "policies": {
        "CallPolicy",
        "RetrySpec",
        "BackoffSpec",
        "BudgetSpec",
        "BreakerSpec",
        "BulkheadSpec",
        "OutlierSpec",
    },
    "declarative": {
        "Api",
        "get",
        "post",
        "put",
        "patch",
        "delete",
        "head",
        "Header",
        "Query",
        "Body",
        "ApiError",
        "HttpError",
        "ClientError",
        "ServerError",
        "NotFoundError",
        "TransportFailure",
        "ResponseDecodeError",
    },
    "config": {
        "BoundConfig",
        "ConfigRejected",
        "ConfigNotLoaded",
        "start_bindings",
        "stop_bindings",
    },
    "asgi": {"lifespan", "CrosswayMiddleware", "metrics_endpoint", "client_address"},
    "grpc": {
        "channel_pool",
        "Balanced",
        "RetryInterceptor",
        "client_interceptors",
        "default_interceptors",
        "deadline_interceptors",
        "tracing_interceptors",
        "metrics_interceptors",
    },
}


def test_the_surface_is_exactly_the_intended_names() -> None:
    expected = set().union(*SURFACE.values())
    assert set(crossway.sdk.__all__) == expected
    assert len(crossway.sdk.__all__) == len(expected)
    assert sorted(crossway.sdk.__all__) == crossway.sdk.__all__


@pytest.mark.parametrize("module", sorted(SURFACE))
def test_every_name_is_the_object_its_module_defines(module: str) -> None:
    home = importlib.import_module(f"crossway.sdk.{module}")
    for name in SURFACE[module]:
        assert getattr(crossway.sdk, name) is getattr(home, name)
        assert getattr(crossway, name) is getattr(home, name)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = crossway.sdk.Nothing  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = crossway.Nothing  # type: ignore[attr-defined]
    assert not hasattr(crossway, "__wrapped__")
    assert {"Client", "lifespan", "channel_pool"} <= set(dir(crossway)) & set(dir(crossway.sdk))
    assert crossway.__version__


def imported_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_crossway_loads_no_sdk() -> None:
    loaded = imported_by("import crossway")
    assert not {m for m in loaded if m.startswith("crossway.")}
    assert not loaded & {"httpx2", "pydantic", "fastapi", "grpc", "prometheus_client"}


def test_the_sdk_loads_integrations_only_when_asked() -> None:
    loaded = imported_by("import crossway; crossway.Client")
    assert "crossway.sdk.client" in loaded
    assert not loaded & {"fastapi", "starlette", "grpc", "pydantic", "crossway.sdk.config"}
    assert "grpc" in imported_by("from crossway.sdk import channel_pool")
