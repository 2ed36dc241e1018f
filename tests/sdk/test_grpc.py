"""The gRPC pool and interceptors against real `grpc.aio` servers on loopback
(generic handlers; messages are raw bytes)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry

from crossway.balance import Outcome
from crossway.core.clock import SystemClock
from crossway.registry.model import Instance
from crossway.resilience import deadline_scope
from crossway.sdk.grpc import (
    Balanced,
    RetryInterceptor,
    channel_pool,
    client_interceptors,
    is_idempotent,
    never_sent,
    outcome_of,
)
from crossway.sdk.policies import CallPolicy, OutlierSpec, RetrySpec
from crossway.sdk.transport import NoInstancesError
from crossway.telemetry.tracecontext import TraceContext, use_trace
from crossway.testing.services import free_port

WHO = "/t.Echo/Who"
SAVE = "/t.Echo/Save"
FLAKY = "/t.Echo/Flaky"
FLAKY_WRITE = "/t.Echo/FlakyWrite"
LIST = "/t.Echo/List"
SUM = "/t.Echo/Sum"


@dataclass
class Backend:
    name: str
    port: int
    server: Any
    seen: list[dict[str, str]] = field(default_factory=list)
    fail_next: int = 0

    @property
    def instance(self) -> Instance:
        return Instance("echo", self.name, "127.0.0.1", self.port)


async def start_backend(name: str, port: int | None = None) -> Backend:
    server = grpc.aio.server()
    backend = Backend(name, port or free_port(), server)

    async def who(request: bytes, context: Any) -> bytes:
        backend.seen.append(dict(context.invocation_metadata()))
        backend.seen[-1]["remaining"] = str(context.time_remaining())
        return name.encode()

    async def flaky(request: bytes, context: Any) -> bytes:
        if backend.fail_next > 0:
            backend.fail_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        if request == b"bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
        return name.encode()

    async def listing(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for n in range(int(request)):
            yield f"{name}:{n}".encode()

    async def total(requests: AsyncIterator[bytes], context: Any) -> bytes:
        return str(sum([int(r) async for r in requests])).encode()

    handlers = {
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "Save": grpc.unary_unary_rpc_method_handler(who),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
        "FlakyWrite": grpc.unary_unary_rpc_method_handler(flaky),
        "List": grpc.unary_stream_rpc_method_handler(listing),
        "Sum": grpc.stream_unary_rpc_method_handler(total),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{backend.port}")
    await server.start()
    return backend


class FakeDiscovery:
    def __init__(self) -> None:
        self.known: dict[str, list[Instance]] = {}
        self.subscribers: list[Callable[[str, list[Instance]], None]] = []

    async def instances(self, service: str) -> list[Instance]:
        return list(self.known.get(service, []))

    def peek(self, service: str) -> list[Instance] | None:
        return self.known.get(service)

    def subscribe(
        self, service: str, callback: Callable[[str, list[Instance]], None]
    ) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def set(self, service: str, instances: list[Instance]) -> None:
        self.known[service] = instances
        for callback in list(self.subscribers):
            callback(service, list(instances))


@dataclass
class Settings:
    service: str | None = "caller"
    zone: str | None = None


@dataclass
class FakeClient:
    discovery: FakeDiscovery = field(default_factory=FakeDiscovery)
    clock: SystemClock = field(default_factory=SystemClock)
    metrics_registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    settings: Settings = field(default_factory=Settings)


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [await start_backend(f"e{n}") for n in range(3)]
    yield started
    await asyncio.gather(*(b.server.stop(0) for b in started))


@pytest.fixture
def client(backends: list[Backend]) -> FakeClient:
    made = FakeClient()
    made.discovery.set("echo", [b.instance for b in backends])
    return made


class EchoStub:
    """What grpc's code generator writes, minus the protobuf."""

    def __init__(self, channel: Any) -> None:
        self.Who = channel.unary_unary(WHO, request_serializer=None, _registered_method=True)
        self.Save = channel.unary_unary(SAVE)
        self.Flaky = channel.unary_unary(FLAKY)
        self.List = channel.unary_stream(LIST)
        self.Sum = channel.stream_unary(SUM)


# -- the pool ------------------------------------------------------------------------------


async def test_calls_balance_across_every_endpoint(client: FakeClient) -> None:
    async with channel_pool(client, "echo") as pool:
        stub = EchoStub(pool)
        served = Counter([await stub.Who(b"") for _ in range(30)])
    assert served == {b"e0": 10, b"e1": 10, b"e2": 10}


async def test_a_stopped_endpoint_costs_no_failed_call(
    client: FakeClient, backends: list[Backend]
) -> None:
    async with channel_pool(client, "echo", idempotent={"/t.Echo/"}) as pool:
        stub = EchoStub(pool)
        assert len({await stub.Who(b"") for _ in range(6)}) == 3
        await backends[1].server.stop(0)
        served = Counter([await stub.Save(b"") for _ in range(60)])  # not idempotent
    assert set(served) == {b"e0", b"e2"}
    assert sum(served.values()) == 60


async def test_unavailable_from_the_server_is_retried_only_when_idempotent(
    client: FakeClient, backends: list[Backend]
) -> None:
    policy = CallPolicy(outlier=None)
    async with channel_pool(client, "echo", policy=policy, idempotent={FLAKY}) as pool:
        for backend in backends[:2]:
            backend.fail_next = 1  # at worst two attempts fail; the third succeeds
        assert await pool.unary_unary(FLAKY)(b"") in (b"e0", b"e1", b"e2")
    for backend in backends:
        backend.fail_next = 5
    async with channel_pool(client, "echo", policy=policy) as strict:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await strict.unary_unary(FLAKY)(b"")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sum(b.fail_next for b in backends) == 14  # exactly one attempt


async def test_other_statuses_are_answers_not_retried(
    client: FakeClient, backends: list[Backend]
) -> None:
    async with channel_pool(client, "echo", idempotent=True) as pool:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await pool.unary_unary(FLAKY)(b"bad")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_retries_respect_the_policy_attempts(
    client: FakeClient, backends: list[Backend]
) -> None:
    for backend in backends:
        backend.fail_next = 10
    policy = CallPolicy(retries=RetrySpec(attempts=2), outlier=None)
    async with channel_pool(client, "echo", policy=policy, idempotent=True) as pool:
        with pytest.raises(grpc.aio.AioRpcError):
            await pool.unary_unary(FLAKY)(b"")
    assert sum(b.fail_next for b in backends) == 28


async def test_failing_endpoints_are_ejected(client: FakeClient, backends: list[Backend]) -> None:
    backends[0].fail_next = 1000
    policy = CallPolicy(retries=None, outlier=OutlierSpec(consecutive_5xx=3))
    async with channel_pool(client, "echo", policy=policy) as pool:
        results = []
        for _ in range(30):
            try:
                results.append(await pool.unary_unary(FLAKY)(b""))
            except grpc.aio.AioRpcError:
                results.append(b"failed")
    assert results.count(b"failed") == 3
    assert results[-10:].count(b"failed") == 0


async def test_membership_follows_discovery(client: FakeClient, backends: list[Backend]) -> None:
    extra = await start_backend("e3")
    try:
        async with channel_pool(client, "echo") as pool:
            stub = EchoStub(pool)
            await asyncio.gather(*(stub.Who(b"") for _ in range(6)))
            client.discovery.set("echo", [backends[0].instance, extra.instance])
            served = Counter([await stub.Who(b"") for _ in range(10)])
            assert served == {b"e0": 5, b"e3": 5}
            assert sorted(e.id for e in pool.endpoints) == ["e0", "e3"]
            await asyncio.sleep(0)
            assert sorted(pool._channels) in (["e0", "e3"], ["e0"], ["e3"])  # e1, e2 closed
    finally:
        await extra.server.stop(0)


async def test_no_instances_is_a_clear_error() -> None:
    async with Balanced(FakeClient(), "nothing") as pool:
        with pytest.raises(NoInstancesError):
            await pool.unary_unary(WHO)(b"")


async def test_streaming_calls_use_one_endpoint(client: FakeClient) -> None:
    async with channel_pool(client, "echo") as pool:
        stub = EchoStub(pool)
        items = [item async for item in stub.List(b"3")]
        assert len({i.split(b":")[0] for i in items}) == 1
        assert [i.split(b":")[1] for i in items] == [b"0", b"1", b"2"]

        async def numbers() -> AsyncIterator[bytes]:
            for n in (1, 2, 3):
                yield str(n).encode()

        assert await stub.Sum(numbers()) == b"6"


async def test_streaming_before_start_uses_what_discovery_holds(client: FakeClient) -> None:
    pool = channel_pool(client, "echo")
    try:
        assert len([i async for i in EchoStub(pool).List(b"2")]) == 2
    finally:
        await pool.close()


# -- interceptors (through the pool's default set) -----------------------------------------------


async def test_calls_carry_the_deadline_and_the_trace(
    client: FakeClient, backends: list[Backend]
) -> None:
    trace = TraceContext.root()
    async with channel_pool(client, "echo") as pool:
        stub = EchoStub(pool)
        with use_trace(trace):
            async with deadline_scope(0.8):
                await stub.Who(b"")
        await stub.Who(b"", timeout=0.3)
    seen = [s for b in backends for s in b.seen]
    first, second = sorted(seen, key=lambda s: -float(s["remaining"]))  # 0.8 s, then 0.3 s
    assert first["traceparent"].split("-")[1] == trace.trace_id
    assert first["traceparent"].split("-")[2] != trace.span_id
    # gRPC carries a timeout rounded to its wire units (grpc-timeout), so the
    # server's view may exceed what was left by a hair.
    slack = 0.01
    assert 0.0 < float(first["remaining"]) <= 0.8 + slack
    assert second["traceparent"].split("-")[1] != trace.trace_id
    assert 0.0 < float(second["remaining"]) <= 0.3 + slack


async def test_calls_are_counted_by_method_and_code(
    client: FakeClient, backends: list[Backend]
) -> None:
    async with channel_pool(client, "echo") as pool:
        stub = EchoStub(pool)
        await stub.Who(b"")
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Flaky(b"bad")
        await asyncio.sleep(0.05)  # the done callbacks report from a task

    def count(method: str, code: str) -> float | None:
        labels = {"service": "caller", "peer_service": "echo", "method": method, "code": code}
        return client.metrics_registry.get_sample_value("rpc_client_requests_total", labels)

    assert count(WHO, "OK") == 1
    assert count(FLAKY, "INVALID_ARGUMENT") == 1


async def test_retry_interceptor_on_a_plain_channel(backends: list[Backend]) -> None:
    backend = backends[0]
    target = f"127.0.0.1:{backend.port}"
    retry = RetryInterceptor(policy=CallPolicy(), idempotent={FLAKY})
    async with grpc.aio.insecure_channel(target, interceptors=[retry]) as channel:
        backend.fail_next = 2
        assert await channel.unary_unary(FLAKY)(b"") == b"e0"
        assert backend.fail_next == 0
        backend.fail_next = 2
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(FLAKY_WRITE)(b"", timeout=5)  # not idempotent
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == "try again"
        assert backend.fail_next == 1  # one attempt


async def test_client_interceptors_retry_then_trace_each_attempt(
    client: FakeClient, backends: list[Backend]
) -> None:
    backend = backends[0]
    interceptors = client_interceptors(client, "echo", idempotent=True)
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{backend.port}", interceptors=interceptors
    ) as channel:
        backend.fail_next = 1
        assert await channel.unary_unary(FLAKY)(b"") == b"e0"
        await asyncio.sleep(0.05)
    codes = {"UNAVAILABLE": 1.0, "OK": 1.0}
    for code, expected in codes.items():
        labels = {"service": "caller", "peer_service": "echo", "method": FLAKY, "code": code}
        assert client.metrics_registry.get_sample_value("rpc_client_requests_total", labels) == (
            expected
        )


async def test_a_refused_connection_is_retried_even_when_not_idempotent() -> None:
    unused = free_port()
    live = await start_backend("live")
    try:
        made = FakeClient()
        made.discovery.set("echo", [Instance("echo", "dead", "127.0.0.1", unused), live.instance])
        policy = CallPolicy(outlier=None)
        async with channel_pool(made, "echo", policy=policy) as pool:
            served = [await pool.unary_unary(SAVE)(b"") for _ in range(6)]
        assert served == [b"live"] * 6
    finally:
        await live.server.stop(0)


# -- pure decisions -------------------------------------------------------------------------------


def test_decisions() -> None:
    assert is_idempotent("/a.B/C", True)
    assert not is_idempotent("/a.B/C", False)
    assert is_idempotent("/a.B/C", {"/a.B/"})
    assert is_idempotent("/a.B/C", ["/a.B/C"])
    assert not is_idempotent("/a.B/D", ["/a.B/C", "/x.Y/"])
    assert outcome_of(grpc.StatusCode.UNAVAILABLE) is Outcome.GATEWAY_ERROR
    assert outcome_of(grpc.StatusCode.INTERNAL) is Outcome.ERROR
    assert outcome_of(grpc.StatusCode.DEADLINE_EXCEEDED) is None
    assert outcome_of(grpc.StatusCode.NOT_FOUND) is Outcome.SUCCESS
    refused = "failed to connect to all addresses; last error: Connection refused"
    assert never_sent(grpc.StatusCode.UNAVAILABLE, refused, was_connected=False)
    assert not never_sent(grpc.StatusCode.UNAVAILABLE, refused, was_connected=True)
    assert not never_sent(grpc.StatusCode.UNAVAILABLE, "Socket closed", was_connected=False)


async def test_a_failed_start_is_tried_again(client: FakeClient) -> None:
    real = client.discovery.instances
    calls = 0

    async def flaky(service: str) -> list[Instance]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("control plane unreachable")
        return await real(service)

    client.discovery.instances = flaky  # type: ignore[method-assign]
    pool = channel_pool(client, "echo")
    with pytest.raises(ConnectionError):
        await pool.start()
    try:
        assert await pool.unary_unary(WHO)(b"") in (b"e0", b"e1", b"e2")
    finally:
        await pool.close()
