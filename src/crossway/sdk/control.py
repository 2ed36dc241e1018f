"""The control plane over HTTP, as the SDK's other modules see it.

Theory of operation
- One `httpx2.AsyncClient` per `ControlPlane`, created with the object and
  closed by `aclose()`; connections are pooled, the bearer token is sent on
  every request, and each request is bounded by `settings.timeout` (blocking
  queries pass a longer `timeout=` themselves).
- Every failure is one of two typed errors, so callers decide with one
  `except` what to retry:
    `ControlPlaneUnavailable` — could not connect, timed out, the connection
        broke, or a 5xx (including 503 while the server shuts down): worth
        retrying later, possibly against another replica;
    `ControlPlaneError(status, code, message)` — a 4xx: the control plane
        understood the request and refused it; retrying the same request
        will not help (the caller may act on `code`, e.g. `lease_not_found`).
- `sse()` follows `GET /v1/watch` (or any event stream) and yields
  `SseEvent`s until the server ends the stream; resuming after a break is
  the caller's job (it knows the last `id`), which keeps this layer free of
  policy.

Nothing here starts a task or touches the event loop at construction, so a
`ControlPlane` may be built before a pre-fork server forks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import msgspec

from crossway.core.errors import CrosswayError, Unavailable
from crossway.registry.model import Instance
from crossway.sdk.settings import ClientSettings

INDEX_HEADER = "X-Crossway-Index"
# The server sends a heartbeat comment every 15 s by default; three missed in
# a row means the stream is dead even if the socket has not noticed.
SSE_READ_TIMEOUT = 45.0

_instances = msgspec.json.Decoder(list[Instance])
_instance = msgspec.json.Decoder(Instance)


class ControlPlaneUnavailable(Unavailable):
    """The control plane could not be reached or failed (5xx); retry later."""

    code = "control_plane_unavailable"


class ControlPlaneError(CrosswayError):
    """The control plane refused the request (4xx); `code` is its error code."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        # Per-instance status and code (the base class keeps them per class):
        # set through __dict__ so the server's own code and status show
        # through to `to_json()` and to anyone catching this error.
        self.__dict__.update(status=status, code=code)


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event: its `event` name, the last `id` seen, its `data`."""

    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class ControlPlane:
    """Async client of one control plane (`settings.url`); close with `aclose()`."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        self.http = httpx2.AsyncClient(
            base_url=settings.url,
            headers=headers,
            timeout=settings.timeout,
            transport=transport,
            trust_env=False,  # a proxy from the environment must not capture control traffic
        )

    @property
    def url(self) -> str:
        return self.settings.url

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        """Send one request and return a 2xx/3xx response.

        Raises `ControlPlaneUnavailable` (connection failure, timeout, 5xx) or
        `ControlPlaneError` (4xx). Cancellation propagates; the connection is
        returned to the pool or dropped by httpx2.
        """
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise ControlPlaneUnavailable(_unreachable(self.url, exc)) from None
        check(response)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """`request(...)` decoded as JSON (`ControlPlaneUnavailable` if it is not JSON)."""
        response = await self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ControlPlaneUnavailable(f"{self.url}{path} answered with non-JSON") from None

    async def sse(
        self,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        last_event_id: str | None = None,
        read_timeout: float = SSE_READ_TIMEOUT,
    ) -> AsyncGenerator[SseEvent, None]:
        """Yield the events of a Server-Sent Events stream until the server ends it.

        Raises `ControlPlaneUnavailable` when the stream cannot be opened or
        breaks (including no byte for `read_timeout` seconds), and
        `ControlPlaneError` when it is refused (4xx). Closing or cancelling the
        iterator closes the connection.
        """
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        timeout = httpx2.Timeout(self.settings.timeout, read=read_timeout)
        try:
            async with self.http.sse(path, params=params, headers=headers, timeout=timeout) as src:
                if src.response.status_code >= 400:
                    await src.response.aread()
                    check(src.response)
                async for event in src:
                    yield SseEvent(event.event, event.id or None, event.data)
        except httpx2.TransportError as exc:
            raise ControlPlaneUnavailable(_unreachable(self.url, exc)) from None

    # -- the registry API ------------------------------------------------------

    async def register(
        self,
        service: str,
        instance_id: str,
        body: Mapping[str, Any],
        *,
        timeout: float | None = None,
    ) -> Instance:
        """`PUT /v1/services/{service}/instances/{id}`: the stored instance, with its lease."""
        path = f"/v1/services/{service}/instances/{instance_id}"
        response = await self.request("PUT", path, json=dict(body), **_timeout(timeout))
        return _instance.decode(response.content)

    async def deregister(
        self, service: str, instance_id: str, *, timeout: float | None = None
    ) -> None:
        """`DELETE …/instances/{id}`; an instance already gone is not an error."""
        path = f"/v1/services/{service}/instances/{instance_id}"
        try:
            await self.request("DELETE", path, **_timeout(timeout))
        except ControlPlaneError as exc:
            if exc.status != 404:
                raise

    async def keepalive(self, lease: str, *, timeout: float | None = None) -> None:
        """`PUT /v1/leases/{lease}/keepalive`; `ControlPlaneError` 404
        `lease_not_found` once the lease is gone (register again)."""
        await self.request("PUT", f"/v1/leases/{lease}/keepalive", **_timeout(timeout))

    async def instances(self, service: str, **query: str) -> tuple[list[Instance], int]:
        """`GET /v1/services/{service}`: the instances and the index they reflect."""
        response = await self.request("GET", f"/v1/services/{service}", params=query)
        return _instances.decode(response.content), index_of(response)

    async def services(self) -> list[dict[str, Any]]:
        """`GET /v1/services`: `[{name, instances, healthy, tags, zones}]`."""
        listing: list[dict[str, Any]] = await self.json("GET", "/v1/services")
        return listing

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> ControlPlane:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def check(response: httpx2.Response) -> None:
    """Raise the typed error for a 4xx/5xx `response` (its body must be read)."""
    status = response.status_code
    if status < 400:
        return
    code, message = _error_of(response)
    if status >= 500:
        raise ControlPlaneUnavailable(f"control plane answered {status}: {message}", cause=code)
    raise ControlPlaneError(status, code, message)


def index_of(response: httpx2.Response) -> int:
    """The `X-Crossway-Index` of a read (0 when absent or malformed)."""
    raw = response.headers.get(INDEX_HEADER, "")
    return int(raw) if raw.isdigit() else 0


def _error_of(response: httpx2.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "http_" + str(response.status_code), response.text[:200] or response.reason_phrase


def _timeout(seconds: float | None) -> dict[str, Any]:
    return {} if seconds is None else {"timeout": seconds}


def _unreachable(url: str, exc: Exception) -> str:
    detail = str(exc) or type(exc).__name__
    return f"cannot reach the control plane at {url}: {detail}"
