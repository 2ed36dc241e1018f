"""Probes against real servers on loopback, and the hand-made gRPC wire format."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.health.probes import (
    Prober,
    ProbeResult,
    decode_health_response,
    describe_error,
    encode_health_request,
    http_result,
    new_http_client,
    probe_grpc,
    probe_http,
    probe_tcp,
    split_host_port,
)
from crossway.registry import Check
from crossway.testing.services import free_port

from .conftest import GrpcHealth, HttpUpstream

Upstreams = Callable[..., Awaitable[HttpUpstream]]
GrpcServers = Callable[..., Awaitable[GrpcHealth]]


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    p = Prober()
    yield p
    await p.aclose()


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (200, "OK", ProbeResult("passing", "HTTP 200 OK")),
        (204, "", ProbeResult("passing", "HTTP 204 No Content")),
        (429, "Too Many Requests", ProbeResult("warning", "HTTP 429 Too Many Requests")),
        (503, "Service Unavailable", ProbeResult("critical", "HTTP 503 Service Unavailable")),
        (301, "Moved", ProbeResult("critical", "HTTP 301 Moved")),
        (599, "", ProbeResult("critical", "HTTP 599")),
    ],
)
def test_http_status_mapping(code: int, reason: str, expected: ProbeResult) -> None:
    assert http_result(code, reason) == expected


async def test_http_passing_warning_critical(upstream: Upstreams, prober: Prober) -> None:
    server = await upstream(status=200)
    check = Check(http=server.url)
    assert (await prober.probe(check, 1.0)).status == "passing"
    server.status = 429
    assert await prober.probe(check, 1.0) == ProbeResult("warning", "HTTP 429 X")
    server.status = 503
    assert await prober.probe(check, 1.0) == ProbeResult("critical", "HTTP 503 X")
    assert server.requests == 3, "one fresh request per probe"


async def test_http_connect_refused(prober: Prober) -> None:
    result = await prober.probe(Check(http=f"http://127.0.0.1:{free_port()}/"), 1.0)
    assert result == ProbeResult("critical", "connect refused")


async def test_http_that_never_answers_times_out(upstream: Upstreams, prober: Prober) -> None:
    server = await upstream(hang=True)
    started = time.monotonic()
    result = await prober.probe(Check(http=server.url), 0.2)
    assert result == ProbeResult("critical", "timed out after 200ms")
    assert time.monotonic() - started < 1.0


async def test_http_redirect_loop_is_bounded() -> None:
    async def loop_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(loop_forever, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = new_http_client()
    try:
        result = await probe_http(client, f"http://127.0.0.1:{port}/", 1.0)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert result == ProbeResult("critical", "more than 3 redirects")


async def test_tcp_probe(upstream: Upstreams) -> None:
    server = await upstream()
    assert (await probe_tcp(f"127.0.0.1:{server.port}", 1.0)).status == "passing"
    await server.stop()
    assert await probe_tcp(f"127.0.0.1:{server.port}", 1.0) == ProbeResult(
        "critical", "connect refused"
    )
    assert (await probe_tcp("no-port", 1.0)).status == "critical"


async def test_grpc_probe_statuses(grpc_health: GrpcServers) -> None:
    server = await grpc_health({"": 1, "orders": 1, "billing": 2})
    base = f"127.0.0.1:{server.port}"
    assert await probe_grpc(base, 2.0) == ProbeResult("passing", "gRPC SERVING")
    assert await probe_grpc(f"{base}/orders", 2.0) == ProbeResult("passing", "gRPC SERVING")
    assert await probe_grpc(f"{base}/billing", 2.0) == ProbeResult("critical", "gRPC NOT_SERVING")
    assert await probe_grpc(f"{base}/nope", 2.0) == ProbeResult(
        "critical", "gRPC NOT_FOUND: unknown service"
    )
    server.statuses["orders"] = 2
    assert (await probe_grpc(f"{base}/orders", 2.0)).status == "critical"


async def test_grpc_without_health_service(grpc_health: GrpcServers) -> None:
    server = await grpc_health({}, health=False)
    result = await probe_grpc(f"127.0.0.1:{server.port}", 2.0)
    assert result == ProbeResult("critical", "gRPC UNIMPLEMENTED: no grpc.health.v1 service")


async def test_grpc_unreachable_and_hanging(grpc_health: GrpcServers) -> None:
    down = await probe_grpc(f"127.0.0.1:{free_port()}", 2.0)
    assert down.status == "critical"
    assert down.output == "connect refused"
    server = await grpc_health({"": 1}, hang=True)
    started = time.monotonic()
    assert await probe_grpc(f"127.0.0.1:{server.port}", 0.2) == ProbeResult(
        "critical", "timed out after 200ms"
    )
    assert time.monotonic() - started < 1.0


async def test_prober_dispatch_without_target(prober: Prober) -> None:
    assert (await prober.probe(Check(), 1.0)).status == "critical"


def test_describe_error_finds_the_cause() -> None:
    refused = ConnectionRefusedError(111, "refused")
    outer = RuntimeError("all attempts failed")
    outer.__cause__ = refused
    assert describe_error(outer) == "connect refused"
    assert describe_error(socket.gaierror(-2, "Name or service not known")).startswith(
        "name resolution failed"
    )
    assert describe_error(ValueError("odd")) == "ValueError: odd"


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError, match="host:port"):
        split_host_port("nohost")


def test_health_messages_known_bytes() -> None:
    assert encode_health_request("") == b""
    assert encode_health_request("orders") == b"\x0a\x06orders"
    assert decode_health_response(b"") == 0
    assert decode_health_response(b"\x08\x01") == 1
    # unknown fields of every wire type are skipped
    assert decode_health_response(b"\x12\x02hi\x08\x02\x1d\x00\x00\x00\x00\x21" + bytes(8)) == 2


@given(st.text(max_size=300))
def test_request_encoding_round_trips(service: str) -> None:
    raw = encode_health_request(service)
    if not service:
        assert raw == b""
        return
    assert raw[0] == 0x0A
    length, shift, pos = 0, 0, 1
    while raw[pos] & 0x80:
        length |= (raw[pos] & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
    length |= raw[pos] << shift
    assert raw[pos + 1 :].decode() == service
    assert length == len(service.encode())


@given(st.integers(min_value=0, max_value=2**32))
def test_response_status_decodes(status: int) -> None:
    encoded = bytearray(b"\x08")
    value = status
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    assert decode_health_response(bytes(encoded)) == status


@given(st.binary(max_size=64))
def test_response_decoder_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        assert decode_health_response(data) >= 0
