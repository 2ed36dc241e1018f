"""The Crossway transports with a mock inner transport and a fake discovery:
resolution, balancing, retries and their budget, breaker, bulkhead, deadlines,
trace propagation, cancellation and outlier ejection."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.registry.model import Instance
from crossway.resilience import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceeded,
    deadline_scope,
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
from crossway.sdk.transport import (
    DEADLINE_HEADER,
    HTTPX2,
    CrosswaySyncTransport,
    CrosswayTransport,
    NoInstancesError,
    async_client,
    header_ops,
    is_service_host,
    sync_client,
    url_rewriter,
)
from crossway.sdk.transport_flavor import entry_ops, url_texter
from crossway.telemetry.tracecontext import TraceContext, parse_traceparent, use_trace

NO_WAIT = BackoffSpec(base=0, cap=0)
FAST_RETRIES = RetrySpec(backoff=NO_WAIT, budget=None)
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]")


def instance(n: int, *, service: str = "orders", **kw: Any) -> Instance:
    return Instance(service, f"{service}-{n}", "10.0.0.1", 8000 + n, **kw)


class FakeDiscovery:
    """The discovery cache's contract: instances / peek / subscribe."""

    def __init__(self, services: dict[str, list[Instance]] | None = None) -> None:
        self.services = dict(services or {})
        self.subscribers: dict[str, list[Callable[[str, list[Instance]], None]]] = {}
        self.listed: list[str] = []

    async def instances(self, service: str) -> list[Instance]:
        self.listed.append(service)
        return list(self.services.get(service, []))

    def peek(self, service: str) -> list[Instance] | None:
        found = self.services.get(service)
        return None if found is None else list(found)

    def subscribe(
        self, service: str, callback: Callable[[str, list[Instance]], None]
    ) -> Callable[[], None]:
        self.subscribers.setdefault(service, []).append(callback)
        return lambda: self.subscribers[service].remove(callback)

    def publish(self, service: str, instances: list[Instance]) -> None:
        self.services[service] = instances
        for callback in list(self.subscribers.get(service, [])):
            callback(service, list(instances))


Behaviour = Callable[[httpx2.Request], Awaitable[httpx2.Response] | httpx2.Response]


@dataclass(frozen=True)
class Sent:
    """A request as it left (the transport restores the caller's URL afterwards)."""

    method: str
    url: httpx2.URL
    headers: httpx2.Headers
    extensions: dict[str, Any]

    @classmethod
    def of(cls, request: httpx2.Request) -> Sent:
        extensions = {
            k: dict(v) if isinstance(v, dict) else v for k, v in request.extensions.items()
        }
        return cls(request.method, request.url, httpx2.Headers(request.headers), extensions)


@dataclass
class Backend:
    """What each instance (by port) answers; records every request it gets."""

    behaviours: dict[int, Behaviour] = field(default_factory=dict)
    seen: list[Sent] = field(default_factory=list)

    def ports(self) -> list[int]:
        return [r.url.port or 0 for r in self.seen]

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(Sent.of(request))
        behaviour = self.behaviours.get(request.url.port or 0, ok)
        result = behaviour(request)
        return await result if not isinstance(result, httpx2.Response) else result

    def handle_sync(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(Sent.of(request))
        result = self.behaviours.get(request.url.port or 0, ok)(request)
        assert isinstance(result, httpx2.Response)
        return result


def ok(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json={"port": request.url.port})


def status(code: int) -> Behaviour:
    return lambda request: httpx2.Response(code)


def refuse(request: httpx2.Request) -> httpx2.Response:
    raise httpx2.ConnectError("connection refused", request=request)


def make_client(
    backend: Backend,
    discovery: FakeDiscovery,
    policy: CallPolicy | None = None,
    **options: Any,
) -> httpx2.AsyncClient:
    transport = CrosswayTransport(
        discovery,
        inner=httpx2.MockTransport(backend.handle),
        policies={"orders": policy or CallPolicy(retries=FAST_RETRIES)},
        **options,
    )
    return httpx2.AsyncClient(transport=transport)


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def discovery() -> FakeDiscovery:
    return FakeDiscovery({"orders": [instance(1), instance(2), instance(3)]})


@pytest.fixture
async def http(backend: Backend, discovery: FakeDiscovery) -> AsyncIterator[httpx2.AsyncClient]:
    async with make_client(backend, discovery) as client:
        yield client


# -- resolution ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "service"),
    [
        ("orders", True),
        ("order-service", True),
        ("localhost", False),
        ("10.0.0.1", False),
        ("::1", False),
        ("api.example.com", False),
        ("redis", False),  # listed in passthrough
        ("", False),
        ("bad_host!", False),
    ],
)
def test_which_hosts_are_services(host: str, service: bool) -> None:
    assert is_service_host(host, frozenset({"localhost", "redis"})) is service


async def test_service_urls_go_to_instances_and_keep_their_host(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    response = await http.get("http://orders/items/1?x=2")
    assert response.status_code == 200
    sent = backend.seen[0]
    assert sent.url.host == "10.0.0.1"
    assert sent.url.port in (8001, 8002, 8003)
    assert sent.url.raw_path == b"/items/1?x=2"
    assert sent.headers["host"] == "orders"
    assert response.url == "http://orders/items/1?x=2"
    assert response.request.url == "http://orders/items/1?x=2"


async def test_other_hosts_pass_through_untouched(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    async with make_client(backend, discovery, passthrough_hosts=["cache"]) as http:
        for url in (
            "http://127.0.0.1:9/a",
            "http://localhost/a",
            "http://a.example/a",
            "http://cache/a",
        ):
            assert (await http.get(url)).status_code == 200
    assert [str(r.url) for r in backend.seen] == [
        "http://127.0.0.1:9/a",
        "http://localhost/a",
        "http://a.example/a",
        "http://cache/a",
    ]
    assert all("traceparent" not in r.headers for r in backend.seen)
    assert discovery.listed == []


async def test_an_empty_service_fails_loudly(backend: Backend) -> None:
    async with make_client(backend, FakeDiscovery()) as http:
        with pytest.raises(NoInstancesError, match="passthrough_hosts") as info:
            await http.get("http://nowhere/x")
    assert info.value.status == 503
    assert backend.seen == []


async def test_membership_follows_discovery_events(
    http: httpx2.AsyncClient, backend: Backend, discovery: FakeDiscovery
) -> None:
    await http.get("http://orders/")
    discovery.publish("orders", [instance(7)])
    for _ in range(3):
        await http.get("http://orders/")
    assert backend.ports()[1:] == [8007, 8007, 8007]
    discovery.publish("orders", [])
    with pytest.raises(NoInstancesError):
        await http.get("http://orders/")
    assert discovery.listed == ["orders"]  # listed once, followed afterwards


# -- balancing ---------------------------------------------------------------------------


async def test_round_robin_spreads_calls_evenly(http: httpx2.AsyncClient, backend: Backend) -> None:
    for _ in range(30):
        await http.get("http://orders/")
    counts = {port: backend.ports().count(port) for port in (8001, 8002, 8003)}
    assert counts == {8001: 10, 8002: 10, 8003: 10}


async def test_round_robin_honours_registered_weights(backend: Backend) -> None:
    discovery = FakeDiscovery({"orders": [instance(1, weight=200), instance(2, weight=100)]})
    async with make_client(backend, discovery) as http:
        for _ in range(30):
            await http.get("http://orders/")
    assert (backend.ports().count(8001), backend.ports().count(8002)) == (20, 10)


async def test_drained_and_critical_instances(backend: Backend) -> None:
    discovery = FakeDiscovery(
        {"orders": [instance(1), instance(2, weight=0), instance(3, status="critical")]}
    )
    async with make_client(backend, discovery) as http:
        for _ in range(6):
            await http.get("http://orders/")
    assert set(backend.ports()) == {8001}


async def test_ring_hash_keeps_a_key_on_one_instance(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    policy = CallPolicy(balancer="ring_hash", hash_header="x-user")
    async with make_client(backend, discovery, policy) as http:
        for user in ("ann", "bob", "cyd"):
            for _ in range(5):
                await http.get("http://orders/", headers={"x-user": user})
    for start in range(0, 15, 5):
        assert len(set(backend.ports()[start : start + 5])) == 1


# -- retries ------------------------------------------------------------------------------


async def test_a_refused_connection_is_retried_on_another_instance(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    backend.behaviours[8001] = refuse
    backend.behaviours[8002] = refuse
    for _ in range(6):
        response = await http.post("http://orders/orders", json={"n": 1})  # not idempotent
        assert response.json() == {"port": 8003}
    for call in _calls(backend):
        assert len(call) == len(set(call)), "a retry went back to an instance that failed"


def _calls(backend: Backend) -> list[list[int]]:
    """Ports tried per call, split where a call ends in success."""
    calls: list[list[int]] = [[]]
    for request in backend.seen:
        calls[-1].append(request.url.port or 0)
        if backend.behaviours.get(request.url.port or 0, ok) is ok:
            calls.append([])
    return [c for c in calls if c]


async def test_503_is_retried_for_idempotent_methods_only(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    backend.behaviours[8001] = status(503)
    backend.behaviours[8002] = status(503)
    results = [(await http.get("http://orders/")).status_code for _ in range(3)]
    assert results == [200, 200, 200]
    backend.seen.clear()
    posted = [(await http.post("http://orders/", content=b"x")).status_code for _ in range(3)]
    assert sorted(posted) == [200, 503, 503]
    assert len(backend.seen) == 3


async def test_non_idempotent_retries_when_the_policy_allows(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    policy = CallPolicy(retries=RetrySpec(backoff=NO_WAIT, budget=None, non_idempotent=True))
    backend.behaviours[8001] = status(503)
    async with make_client(backend, discovery, policy) as http:
        assert [(await http.post("http://orders/")).status_code for _ in range(3)] == [200] * 3


async def test_giving_up_returns_the_last_response_and_closes_the_others(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    closed: list[int] = []

    class Tracked(httpx2.AsyncByteStream):
        def __init__(self, port: int) -> None:
            self.port = port

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"busy"

        async def aclose(self) -> None:
            closed.append(self.port)

    def busy(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503, stream=Tracked(request.url.port or 0))

    for port in (8001, 8002, 8003):
        backend.behaviours[port] = busy
    response = await http.get("http://orders/")
    assert response.status_code == 503
    assert response.text == "busy"
    assert len(backend.seen) == 3
    assert len(closed) == 3  # two discarded ones, then the returned one once read


async def test_streamed_bodies_get_one_attempt(http: httpx2.AsyncClient, backend: Backend) -> None:
    backend.behaviours[8001] = backend.behaviours[8002] = backend.behaviours[8003] = refuse

    async def chunks() -> AsyncIterator[bytes]:
        yield b"part"

    with pytest.raises(httpx2.ConnectError):
        await http.put("http://orders/", content=chunks())
    assert len(backend.seen) == 1


async def test_budget_caps_retries_and_refills_with_time(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    clock = VirtualClock(100.0)
    budget = BudgetSpec(percent=0, min_per_second=1, ttl="1s")  # one retry per second
    policy = CallPolicy(retries=RetrySpec(backoff=NO_WAIT, budget=budget))
    for port in (8001, 8002, 8003):
        backend.behaviours[port] = status(503)
    async with make_client(backend, discovery, policy, clock=clock) as http:
        await http.get("http://orders/")
        assert len(backend.seen) == 2  # the first try and the one retry the budget holds
        await http.get("http://orders/")
        assert len(backend.seen) == 3  # budget spent: no retry
        clock.advance(1.5)
        await http.get("http://orders/")
        assert len(backend.seen) == 5


async def test_per_try_timeout_moves_on_to_another_instance(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    async def stuck(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(10)
        return ok(request)

    backend.behaviours[8001] = backend.behaviours[8002] = stuck
    retries = RetrySpec(backoff=NO_WAIT, budget=None, per_try_timeout="30ms")
    async with make_client(backend, discovery, CallPolicy(retries=retries)) as http:
        for _ in range(3):
            response = await http.get("http://orders/")
            assert response.json() == {"port": 8003}


# -- breaker, bulkhead, deadlines ------------------------------------------------------------


async def test_breaker_opens_after_failed_calls_and_stops_sending(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    clock = VirtualClock()
    policy = CallPolicy(retries=None, breaker=BreakerSpec(failures=3, open_for="10s"))
    for port in (8001, 8002, 8003):
        backend.behaviours[port] = status(500)
    async with make_client(backend, discovery, policy, clock=clock) as http:
        for _ in range(3):
            assert (await http.get("http://orders/")).status_code == 500
        with pytest.raises(CircuitOpenError) as info:
            await http.get("http://orders/")
        assert info.value.status == 503
        assert len(backend.seen) == 3
        clock.advance(11)
        backend.behaviours.clear()
        assert (await http.get("http://orders/")).status_code == 200  # the half-open probe
        assert (await http.get("http://orders/")).status_code == 200


async def test_a_call_refused_before_any_attempt_leaves_no_traceparent_on_the_request(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    policy = CallPolicy(retries=None, breaker=BreakerSpec(failures=1, open_for="10s"))
    backend.behaviours.update({port: status(500) for port in (8001, 8002, 8003)})
    async with make_client(backend, discovery, policy, clock=VirtualClock()) as http:
        assert (await http.get("http://orders/")).status_code == 500
        request = http.build_request("GET", "http://orders/")
        with pytest.raises(CircuitOpenError):
            await http.send(request)
    # Sent again later, it must not look like carrying the caller's own trace.
    assert "traceparent" not in request.headers
    assert str(request.url) == "http://orders/"


async def test_a_rate_breaker_judges_whole_calls_after_their_retries(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    # No timeout, bulkhead nor per-try timeout: the call runs in one
    # coroutine and the breaker permit is taken and settled by hand.
    clock = VirtualClock()
    breaker = BreakerSpec(kind="rate", failure_rate=50, window=4, minimum_calls=4, open_for="5s")
    policy = CallPolicy(retries=FAST_RETRIES, breaker=breaker)
    backend.behaviours[8001] = backend.behaviours[8002] = status(503)
    async with make_client(backend, discovery, policy, clock=clock) as http:
        answers = [(await http.get("http://orders/")).status_code for _ in range(4)]
        assert answers.count(200) >= 1  # a retry reached 8003 at least once
        backend.behaviours[8003] = status(503)
        outcomes = [await status_or_open(http) for _ in range(8)]
        assert outcomes[-1] == "open"  # whole failed calls filled the window
        sent = len(backend.seen)
        with pytest.raises(CircuitOpenError):
            await http.get("http://orders/")
        assert len(backend.seen) == sent


async def test_a_cancelled_half_open_probe_gives_its_slot_back(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    clock = VirtualClock()
    started = asyncio.Event()

    async def stuck(request: httpx2.Request) -> httpx2.Response:
        started.set()
        await asyncio.sleep(10)
        return ok(request)

    breaker = BreakerSpec(failures=1, open_for="10s")
    policy = CallPolicy(balancer="least_request", retries=None, breaker=breaker)
    for port in (8001, 8002, 8003):
        backend.behaviours[port] = refuse
    async with make_client(backend, discovery, policy, clock=clock) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.get("http://orders/")
        with pytest.raises(CircuitOpenError):
            await http.get("http://orders/")
        clock.advance(11)
        for port in (8001, 8002, 8003):
            backend.behaviours[port] = stuck
        probe = asyncio.create_task(http.get("http://orders/"))
        await started.wait()
        with pytest.raises(CircuitOpenError):  # the one probe slot is taken
            await http.get("http://orders/")
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        backend.behaviours.clear()
        assert (await http.get("http://orders/")).status_code == 200  # a new probe
        assert (await http.get("http://orders/")).status_code == 200  # closed again
        stack = transport_of(http).router.stack("orders")
        assert stack is not None
        assert all(stack.balancer.pending(f"orders-{n}") == 0 for n in (1, 2, 3))  # type: ignore[attr-defined]


async def status_or_open(http: httpx2.AsyncClient) -> int | str:
    try:
        return (await http.get("http://orders/")).status_code
    except CircuitOpenError:
        return "open"


def transport_of(http: httpx2.AsyncClient) -> CrosswayTransport:
    transport = http._transport
    assert isinstance(transport, CrosswayTransport)
    return transport


async def test_a_full_bulkhead_refuses_at_once(backend: Backend, discovery: FakeDiscovery) -> None:
    release = asyncio.Event()

    async def slow(request: httpx2.Request) -> httpx2.Response:
        await release.wait()
        return ok(request)

    for port in (8001, 8002, 8003):
        backend.behaviours[port] = slow
    policy = CallPolicy(bulkhead=BulkheadSpec(max_concurrent=1))
    async with make_client(backend, discovery, policy) as http:
        first = asyncio.create_task(http.get("http://orders/"))
        await asyncio.sleep(0.01)
        with pytest.raises(BulkheadFullError):
            await http.get("http://orders/")
        release.set()
        assert (await first).status_code == 200
        assert (await http.get("http://orders/")).status_code == 200


async def test_deadline_header_shrinks_across_retries(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    backoff = BackoffSpec(base="40ms", cap="40ms", jitter="none")
    policy = CallPolicy(timeout="2s", retries=RetrySpec(backoff=backoff, budget=None))
    backend.behaviours[8001] = backend.behaviours[8002] = status(503)
    async with make_client(backend, discovery, policy) as http:
        for _ in range(3):
            backend.seen.clear()
            response = await http.get("http://orders/")
            if len(backend.seen) == 3:
                break
    assert response.status_code == 200
    sent = [int(r.headers[DEADLINE_HEADER]) for r in backend.seen]
    assert 1900 <= sent[0] <= 2000
    assert sent[0] - sent[1] >= 35
    assert sent[1] - sent[2] >= 35
    read_timeouts = [r.extensions["timeout"]["read"] for r in backend.seen]
    assert all(t <= 2.0 for t in read_timeouts)
    assert read_timeouts == sorted(read_timeouts, reverse=True)


async def test_the_callers_deadline_wins_when_shorter(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    with deadline_scope(0.5):
        await http.get("http://orders/")
    assert 400 <= int(backend.seen[0].headers[DEADLINE_HEADER]) <= 500
    await http.get("http://orders/")
    assert DEADLINE_HEADER not in backend.seen[1].headers  # no deadline, no header


async def test_an_expired_deadline_sends_nothing(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    clock = VirtualClock()
    with deadline_scope(1.0, clock=clock):
        clock.advance(2.0)
        with pytest.raises(DeadlineExceeded):
            await http.get("http://orders/")
    assert backend.seen == []


async def test_policy_timeout_cancels_a_slow_call(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    async def stuck(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(10)
        return ok(request)

    for port in (8001, 8002, 8003):
        backend.behaviours[port] = stuck
    async with make_client(backend, discovery, CallPolicy(timeout="50ms")) as http:
        with pytest.raises(DeadlineExceeded):
            await http.get("http://orders/")


# -- tracing ------------------------------------------------------------------------------------


async def test_traceparent_is_a_child_of_the_current_trace(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    parent = TraceContext.root().with_state("cw", "1")
    with use_trace(parent):
        await http.get("http://orders/")
    sent = backend.seen[0]
    assert TRACEPARENT.fullmatch(sent.headers["traceparent"])
    child = parse_traceparent(sent.headers["traceparent"])
    assert child is not None
    assert child.trace_id == parent.trace_id
    assert child.span_id != parent.span_id
    assert child.sampled
    assert sent.headers["tracestate"] == "cw=1"


async def test_each_attempt_is_its_own_span_of_one_trace(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    backend.behaviours[8001] = backend.behaviours[8002] = status(503)
    for _ in range(3):
        backend.seen.clear()
        await http.get("http://orders/")
        contexts = [parse_traceparent(r.headers["traceparent"]) for r in backend.seen]
        assert all(c is not None for c in contexts)
        assert len({c.trace_id for c in contexts if c}) == 1
        assert len({c.span_id for c in contexts if c}) == len(contexts)
    first, second = backend.seen[0], backend.seen[-1]
    assert first.headers["traceparent"][3:35] == second.headers["traceparent"][3:35]


async def test_calls_without_a_trace_start_new_ones(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    await http.get("http://orders/")
    await http.get("http://orders/")
    ids = {r.headers["traceparent"][3:35] for r in backend.seen}
    assert len(ids) == 2


async def test_a_callers_own_traceparent_is_kept(
    http: httpx2.AsyncClient, backend: Backend
) -> None:
    own = f"00-{'a' * 32}-{'b' * 16}-01"
    await http.get("http://orders/", headers={"traceparent": own})
    assert backend.seen[0].headers.get_list("traceparent") == [own]


# -- cancellation ----------------------------------------------------------------------------


async def test_cancellation_propagates_and_releases_everything(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    started = asyncio.Event()

    async def stuck(request: httpx2.Request) -> httpx2.Response:
        started.set()
        await asyncio.sleep(10)
        return ok(request)

    for port in (8001, 8002, 8003):
        backend.behaviours[port] = stuck
    policy = CallPolicy(
        balancer="least_request",
        retries=FAST_RETRIES,
        breaker=BreakerSpec(failures=1),
        bulkhead=BulkheadSpec(max_concurrent=1),
    )
    transport = CrosswayTransport(
        discovery, inner=httpx2.MockTransport(backend.handle), policies={"orders": policy}
    )
    async with httpx2.AsyncClient(transport=transport) as http:
        task = asyncio.create_task(http.get("http://orders/"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stack = transport.router.stack("orders")
        assert stack is not None
        assert stack.bulkhead is not None
        assert stack.bulkhead.active == 0
        assert all(stack.balancer.pending(f"orders-{n}") == 0 for n in (1, 2, 3))  # type: ignore[attr-defined]
        assert len(backend.seen) == 1  # not retried
        backend.behaviours.clear()
        assert (await http.get("http://orders/")).status_code == 200  # breaker still closed


async def test_cancelled_during_backoff_closes_the_held_response(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    closed = asyncio.Event()

    class Tracked(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b""

        async def aclose(self) -> None:
            closed.set()

    for port in (8001, 8002, 8003):
        backend.behaviours[port] = lambda request: httpx2.Response(503, stream=Tracked())
    backoff = BackoffSpec(base="10s", cap="10s", jitter="none")
    policy = CallPolicy(retries=RetrySpec(backoff=backoff, budget=None))
    async with make_client(backend, discovery, policy) as http:
        task = asyncio.create_task(http.get("http://orders/"))
        while not backend.seen:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert closed.is_set()


# -- outlier ejection -------------------------------------------------------------------------


async def test_an_instance_failing_in_a_row_is_ejected(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    clock = VirtualClock()
    outlier = OutlierSpec(consecutive_5xx=3, base_ejection_time="30s")
    policy = CallPolicy(retries=None, outlier=outlier)
    backend.behaviours[8002] = status(500)
    async with make_client(backend, discovery, policy, clock=clock) as http:
        for _ in range(9):  # three rounds: the third 500 from 8002 ejects it
            await http.get("http://orders/")
        backend.seen.clear()
        for _ in range(20):
            assert (await http.get("http://orders/")).status_code == 200
        assert 8002 not in backend.ports()
        clock.advance(31)
        for _ in range(6):
            await http.get("http://orders/")
        assert 8002 in backend.ports()  # back after the ejection time


async def test_connect_failures_count_toward_ejection(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    policy = CallPolicy(retries=FAST_RETRIES, outlier=OutlierSpec(consecutive_5xx=2))
    backend.behaviours[8001] = refuse
    async with make_client(backend, discovery, policy) as http:
        for _ in range(12):
            assert (await http.get("http://orders/")).status_code == 200
    assert backend.ports().count(8001) == 2


# -- properties --------------------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    failing=st.sets(st.sampled_from([8001, 8002, 8003])),
    calls=st.integers(1, 12),
)
def test_a_call_fails_only_when_every_instance_it_tried_failed(
    failing: set[int], calls: int
) -> None:
    backend = Backend({port: status(503) for port in failing})
    discovery = FakeDiscovery({"orders": [instance(1), instance(2), instance(3)]})
    policy = CallPolicy(retries=FAST_RETRIES, outlier=None)

    async def run() -> list[int]:
        async with make_client(backend, discovery, policy, clock=VirtualClock()) as http:
            return [(await http.get("http://orders/")).status_code for _ in range(calls)]

    results = asyncio.run(run())
    tries = _tries_per_call(backend, results)
    for result, ports in zip(results, tries, strict=True):
        assert len(ports) == len(set(ports)) <= 3
        assert (result == 200) == (ports[-1] not in failing)
        assert result == 200 or len(ports) == 3


def _tries_per_call(backend: Backend, results: list[int]) -> list[list[int]]:
    ports = backend.ports()
    out, i = [], 0
    for result in results:
        tried: list[int] = []
        while True:
            tried.append(ports[i])
            i += 1
            if len(tried) == 3 or backend.behaviours.get(tried[-1]) is None:
                break
        out.append(tried)
        assert result in (200, 503)
    assert i == len(ports)
    return out


# -- policies from the book ----------------------------------------------------------------------


async def test_a_policy_change_refolds_the_stack(
    backend: Backend, discovery: FakeDiscovery
) -> None:
    transport = CrosswayTransport(discovery, inner=httpx2.MockTransport(backend.handle))
    async with httpx2.AsyncClient(transport=transport) as http:
        await http.get("http://orders/")
        before = transport.router.stack("orders")
        assert before is not None
        assert before.breaker is None
        transport.book.set_remote("orders", CallPolicy(breaker=BreakerSpec()))
        after = transport.router.stack("orders")
        assert after is not None
        assert after is not before
        assert after.breaker is not None
        transport.book.set_remote("orders", CallPolicy(breaker=BreakerSpec()))
        assert transport.router.stack("orders") is after  # unchanged: not rebuilt
        for _ in range(3):
            await http.get("http://orders/")
        assert len(set(backend.ports())) == 3  # membership carried over


# -- the blocking transport ---------------------------------------------------------------------


def sync_http(backend: Backend, discovery: FakeDiscovery, **kw: Any) -> httpx2.Client:
    transport = CrosswaySyncTransport(
        discovery,
        inner=httpx2.MockTransport(backend.handle_sync),
        policies={"orders": CallPolicy(retries=FAST_RETRIES)},
        **kw,
    )
    return httpx2.Client(transport=transport)


def test_sync_transport_balances_and_retries(backend: Backend, discovery: FakeDiscovery) -> None:
    backend.behaviours[8002] = refuse
    with sync_http(backend, discovery) as http:
        results = [http.get("http://orders/x").json()["port"] for _ in range(6)]
    assert set(results) == {8001, 8003}
    assert backend.seen[0].headers["host"] == "orders"


def test_sync_transport_without_a_loop_uses_what_discovery_knows(backend: Backend) -> None:
    discovery = FakeDiscovery({"orders": [instance(1)]})
    with sync_http(backend, discovery) as http:
        assert http.get("http://orders/").status_code == 200
        with pytest.raises(NoInstancesError, match="not been discovered"):
            http.get("http://payments/")
    assert discovery.subscribers.keys() == {"orders", "payments"}


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_sync_transport_resolves_on_the_clients_loop(
    backend: Backend, loop_thread: asyncio.AbstractEventLoop
) -> None:
    class Lazy(FakeDiscovery):
        def peek(self, service: str) -> list[Instance] | None:
            return None  # nothing known until listed on the loop

        async def instances(self, service: str) -> list[Instance]:
            assert asyncio.get_running_loop() is loop_thread
            return await super().instances(service)

    discovery = Lazy({"orders": [instance(1), instance(2)]})
    with sync_http(backend, discovery, loop=loop_thread) as http:
        ports = {http.get("http://orders/").json()["port"] for _ in range(4)}
    assert ports == {8001, 8002}
    assert discovery.listed == ["orders"]


# -- factories -------------------------------------------------------------------------------------


@dataclass
class FakeSettings:
    zone: str | None = "eu-1"


@dataclass
class FakeClient:
    discovery: FakeDiscovery
    control: Any = None
    settings: FakeSettings = field(default_factory=FakeSettings)


async def test_async_client_from_a_crossway_client(discovery: FakeDiscovery) -> None:
    client = FakeClient(discovery)
    async with async_client(client, http2=False, timeout=3.0, follow_policies=False) as http:
        assert isinstance(http._transport, CrosswayTransport)
        assert http.timeout.read == 3.0
        assert http._transport.router.book is http._transport.book


def test_sync_client_from_a_crossway_client(discovery: FakeDiscovery) -> None:
    with sync_client(FakeClient(discovery), headers={"x-a": "1"}) as http:
        assert isinstance(http._transport, CrosswaySyncTransport)
        assert http.headers["x-a"] == "1"


# -- the original httpx -------------------------------------------------------------------------


async def test_httpx_adapter_calls_services(discovery: FakeDiscovery) -> None:
    httpx = pytest.importorskip("httpx")
    from crossway.sdk.transport_httpx import CrosswayHttpxSyncTransport, CrosswayHttpxTransport

    seen: list[Any] = []

    def handler(request: Any) -> Any:
        seen.append(httpx.Headers(request.headers))
        if request.url.port == 8001:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"port": request.url.port})

    policies = {"orders": CallPolicy(retries=FAST_RETRIES)}
    transport = CrosswayHttpxTransport(
        discovery, inner=httpx.MockTransport(handler), policies=policies
    )
    async with httpx.AsyncClient(transport=transport) as http:
        ports = {(await http.get("http://orders/a")).json()["port"] for _ in range(6)}
    assert ports == {8002, 8003}
    assert all(headers["host"] == "orders" for headers in seen)
    sync = CrosswayHttpxSyncTransport(
        discovery, inner=httpx.MockTransport(handler), policies=policies
    )
    with httpx.Client(transport=sync) as http:
        assert http.get("http://orders/a").status_code == 200


# -- fast paths ------------------------------------------------------------------------------------


class BareHeaders:
    """Headers with only the public API (no internal list)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.pairs = [(k.encode(), v.encode()) for k, v in values.items()]

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        return list(self.pairs)

    def __setitem__(self, key: str, value: str) -> None:
        pair = (key.encode(), value.encode())
        for i, (k, _) in enumerate(self.pairs):
            if k.lower() == pair[0].lower():
                self.pairs[i] = pair
                return
        self.pairs.append(pair)

    def multi_items(self) -> list[tuple[str, str]]:
        return [(k.decode().lower(), v.decode()) for k, v in self.pairs]


def test_fast_paths_fall_back_to_the_public_api() -> None:
    has, set_, add = header_ops(BareHeaders)
    assert (has.__name__, set_.__name__, add.__name__) == ("slow_has", "slow_set", "slow_set")
    headers = BareHeaders({"Accept": "*/*"})
    add(headers, b"traceparent", "x")
    set_(headers, b"traceparent", "y")
    assert has(headers, b"traceparent")
    assert headers.multi_items() == [("accept", "*/*"), ("traceparent", "y")]
    rewrite = url_rewriter(str)
    assert rewrite.__name__ == "slow"
    moved = rewrite(httpx2.URL("http://orders/a?b=c"), "::1", 8080)
    assert str(moved) == "http://[::1]:8080/a?b=c"


def test_fast_paths_agree_with_the_public_api() -> None:
    has, set_, add = header_ops(httpx2.Headers)
    assert set_.__name__ == "fast_set"
    headers = httpx2.Headers({"Accept": "*/*", "X-B": "1"})
    add(headers, b"traceparent", "x")
    set_(headers, b"x-b", "2")
    set_(headers, b"x-c", "3")
    assert headers.multi_items() == [
        ("accept", "*/*"),
        ("x-b", "2"),
        ("traceparent", "x"),
        ("x-c", "3"),
    ]
    assert has(headers, b"x-c")
    assert not has(headers, b"x-d")
    url = httpx2.URL("https://orders:9/a/b?c=d#e")
    assert HTTPX2.rewrite(url, "10.0.0.2", 8443) == url.copy_with(host="10.0.0.2", port=8443)


def test_entry_fast_paths_agree_and_fall_back() -> None:
    for headers_cls, fast in ((httpx2.Headers, True), (BareHeaders, False)):
        find, add_entries = entry_ops(headers_cls)
        assert find.__name__ == ("fast_find" if fast else "slow_find")
        headers = headers_cls({"Accept": "*/*", "X-Crossway-Caller": "me"})
        assert find(headers, b"traceparent", b"x-crossway-caller") == 2
        assert find(headers, b"accept", b"traceparent") == 1
        assert find(headers, b"a", b"b") == 0
        add_entries(headers, ((b"traceparent", b"traceparent", b"t"), (b"x-a", b"x-a", b"1")))
        assert headers.multi_items() == [
            ("accept", "*/*"),
            ("x-crossway-caller", "me"),
            ("traceparent", "t"),
            ("x-a", "1"),
        ]
        assert find(headers, b"x-crossway-caller", b"traceparent") == 3


def test_url_text_is_the_url_as_a_string() -> None:
    assert url_texter(str) is str
    text = url_texter(httpx2.URL)
    assert text.__name__ == "fast"
    urls = [httpx2.URL(u) for u in ("http://orders/a?b=c", "https://orders:9/a/b#e")]
    for url in [*urls, httpx2.URL("http://orders/a?b=c")]:
        assert text(url) == str(url)
    assert HTTPX2.url_text(urls[1]) == "https://orders:9/a/b#e"
