"""Probes: one HTTP, TCP or gRPC health check against one target.

Theory of operation
- A probe turns "is this endpoint healthy right now?" into a `ProbeResult`
  (status + a short, stable output text). The outputs are deliberately free of
  latencies, addresses of ephemeral ports or other per-run detail: the checker
  writes to the store only when status or output change, so a stable text means
  a steady endpoint costs no writes.
- HTTP follows Consul: 2xx is passing, 429 is warning (the endpoint is alive but
  shedding load), anything else is critical. One `httpx2.AsyncClient` is shared
  by every HTTP probe, with keep-alive switched off: each probe opens a fresh
  connection, so a probe measures what a new client would see, and a pooled
  socket to a process that has since died (or been replaced behind the same
  address) can never turn into a false failure or a false success. Proxies from
  the environment are ignored: a health check talks to the endpoint itself.
- TCP is passing when a connection opens within the check's timeout.
- gRPC speaks the standard `grpc.health.v1.Health/Check`; see `_encode_request`.

Invariants
1. Every probe finishes within its `time_limit` (the check's timeout): one
   outer `asyncio.timeout` bounds the whole probe, whatever per-phase
   timeouts the transport also applies.
2. A probe never raises except `CancelledError`: every failure is a critical
   result with a short explanation.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
from dataclasses import dataclass
from typing import Any

import httpx2

from crossway.core.durations import format_duration
from crossway.registry.model import Check, Status

log = logging.getLogger("crossway.health")

MAX_REDIRECTS = 3
MAX_OUTPUT = 200
USER_AGENT = "crossway-health/1"
GRPC_HEALTH_METHOD = "/grpc.health.v1.Health/Check"
GRPC_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: Status
    output: str


def timed_out(time_limit: float) -> ProbeResult:
    return ProbeResult("critical", f"timed out after {format_duration(time_limit)}")


def describe_error(exc: BaseException) -> str:
    """A short text for a failed connection, from the most telling exception in the chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connect refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if isinstance(seen, socket.gaierror):
            return f"name resolution failed: {seen.strerror or seen}"
        seen = seen.__cause__ or seen.__context__
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:MAX_OUTPUT]


def split_host_port(target: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); raises ValueError when malformed."""
    host, sep, port = target.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not host:port: {target!r}")
    return host.strip("[]"), int(port)


# --- HTTP -------------------------------------------------------------------


def new_http_client(*, verify: bool = True) -> httpx2.AsyncClient:
    """The client shared by every HTTP probe of one checker (see the header)."""
    return httpx2.AsyncClient(
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        limits=httpx2.Limits(max_connections=None, max_keepalive_connections=0),
        trust_env=False,
        verify=verify,
        headers={"User-Agent": USER_AGENT, "Accept": "text/plain, text/*, */*"},
    )


def http_result(code: int, reason: str) -> ProbeResult:
    if not reason:
        with contextlib.suppress(ValueError):
            reason = http.HTTPStatus(code).phrase
    output = f"HTTP {code} {reason}".strip()[:MAX_OUTPUT]
    if 200 <= code < 300:
        return ProbeResult("passing", output)
    if code == 429:
        return ProbeResult("warning", output)
    return ProbeResult("critical", output)


async def probe_http(client: httpx2.AsyncClient, url: str, time_limit: float) -> ProbeResult:
    """GET `url`; the body is never read, so a huge or endless body costs nothing.

    Never raises except on cancellation; a timeout or connection failure is a
    critical result.
    """
    try:
        async with asyncio.timeout(time_limit):
            async with client.stream("GET", url, timeout=time_limit) as response:
                return http_result(response.status_code, response.reason_phrase)
    except (TimeoutError, httpx2.TimeoutException):
        return timed_out(time_limit)
    except httpx2.TooManyRedirects:
        return ProbeResult("critical", f"more than {MAX_REDIRECTS} redirects")
    except httpx2.InvalidURL as exc:
        return ProbeResult("critical", f"invalid URL: {exc}"[:MAX_OUTPUT])
    except (httpx2.HTTPError, OSError) as exc:
        return ProbeResult("critical", describe_error(exc))


# --- TCP --------------------------------------------------------------------


async def probe_tcp(target: str, time_limit: float) -> ProbeResult:
    """Open (and at once close) a TCP connection to `target` ('host:port').

    Never raises except on cancellation.
    """
    try:
        host, port = split_host_port(target)
    except ValueError as exc:
        return ProbeResult("critical", str(exc))
    try:
        async with asyncio.timeout(time_limit):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except TimeoutError:
        return timed_out(time_limit)
    except OSError as exc:
        return ProbeResult("critical", describe_error(exc))
    return ProbeResult("passing", f"TCP connect {target}: success")


# --- gRPC -------------------------------------------------------------------
#
# The two messages of grpc.health.v1 are encoded by hand rather than with
# generated stubs: HealthCheckRequest is one string field and
# HealthCheckResponse one enum field, so a dozen lines of wire format replace
# a dependency on protobuf, grpcio-health-checking and generated code that
# must match the runtime's protobuf version. Channels use identity
# serializers and pass these bytes straight through.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def encode_health_request(service: str) -> bytes:
    """HealthCheckRequest{service = 1}; proto3 omits an empty string field."""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def _skip_field(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read_varint(data, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = _read_varint(data, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire_type}")


def decode_health_response(data: bytes) -> int:
    """The `status` (field 1, varint) of a HealthCheckResponse; 0 (UNKNOWN) if absent.

    Unknown fields are skipped, as protobuf requires; malformed input raises ValueError.
    """
    status, pos = 0, 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 1 and wire_type == 0:
            status, pos = _read_varint(data, pos)
        else:
            pos = _skip_field(data, pos, wire_type)
        if pos > len(data):
            raise ValueError("truncated message")
    return status


def grpc_result(status: int) -> ProbeResult:
    name = GRPC_SERVING_STATUS.get(status, f"status {status}")
    return ProbeResult("passing" if status == 1 else "critical", f"gRPC {name}")


def _identity(message: bytes) -> bytes:
    return message


async def probe_grpc(target: str, time_limit: float) -> ProbeResult:
    """Call grpc.health.v1.Health/Check on `target` ('host:port' or 'host:port/service').

    A fresh plaintext channel per probe (closed before returning), for the same
    reason HTTP probes do not keep connections alive. Never raises except on
    cancellation.
    """
    try:
        import grpc  # grpcio ships no type information (mypy override in pyproject)
    except ImportError:
        return ProbeResult("critical", "gRPC checks need the grpcio package")
    address, _, service = target.partition("/")
    try:
        async with asyncio.timeout(time_limit):
            return await _grpc_check(grpc, address, service, time_limit)
    except TimeoutError:
        return timed_out(time_limit)
    except grpc.RpcError as exc:
        return _grpc_error(grpc, exc, time_limit)
    except (ValueError, OSError) as exc:
        return ProbeResult("critical", f"gRPC: {exc}"[:MAX_OUTPUT])


async def _grpc_check(grpc: Any, address: str, service: str, time_limit: float) -> ProbeResult:
    async with grpc.aio.insecure_channel(address) as channel:
        check = channel.unary_unary(
            GRPC_HEALTH_METHOD,
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        response: bytes = await check(encode_health_request(service), timeout=time_limit)
    return grpc_result(decode_health_response(response))


def _grpc_error(grpc: Any, exc: Any, time_limit: float) -> ProbeResult:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return timed_out(time_limit)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ProbeResult("critical", "gRPC UNIMPLEMENTED: no grpc.health.v1 service")
    details = exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and "connection refused" in details.lower():
        return ProbeResult("critical", "connect refused")  # the same words as HTTP and TCP
    return ProbeResult("critical", f"gRPC {code.name}: {details}".strip(": ")[:MAX_OUTPUT])


# --- dispatch ---------------------------------------------------------------


class Prober:
    """Runs the probe a `Check` names; owns the shared HTTP client unless given one."""

    def __init__(self, *, client: httpx2.AsyncClient | None = None) -> None:
        self._owns_client = client is None
        self._client = client if client is not None else new_http_client()

    async def probe(self, check: Check, time_limit: float) -> ProbeResult:
        """Probe `check`'s target, bounded by `time_limit` seconds.

        Never raises except `CancelledError`; a check with no target is critical,
        and so is a probe that failed in a way the probes did not foresee.
        """
        try:
            return await self._dispatch(check, time_limit)
        except Exception as exc:  # invariant 2 holds even for a bug in a transport
            log.warning("health probe failed unexpectedly", exc_info=True)
            return ProbeResult("critical", f"probe error: {type(exc).__name__}")

    async def _dispatch(self, check: Check, time_limit: float) -> ProbeResult:
        if check.http is not None:
            return await probe_http(self._client, check.http, time_limit)
        if check.tcp is not None:
            return await probe_tcp(check.tcp, time_limit)
        if check.grpc is not None:
            return await probe_grpc(check.grpc, time_limit)
        return ProbeResult("critical", "check has no http, tcp or grpc target")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
