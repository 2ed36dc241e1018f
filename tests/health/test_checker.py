"""HealthChecker end to end: memory store, catalog, registry, real upstreams on loopback."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from crossway.health import HealthChecker, Prober, ProbeResult
from crossway.registry import Check, Instance, Registration
from crossway.registry.model import Status
from crossway.testing.services import free_port

from .conftest import GrpcHealth, HttpUpstream, Stack

Upstreams = Callable[..., Awaitable[HttpUpstream]]
Checkers = Callable[..., Awaitable[HealthChecker]]

FAST = {"interval": "100ms", "timeout": "200ms"}


@pytest.fixture
async def checker(stack: Stack) -> AsyncIterator[Checkers]:
    """A factory of started checkers on `stack`, all stopped at teardown."""
    made: list[HealthChecker] = []

    async def make(**options: Any) -> HealthChecker:
        options.setdefault("rng", random.Random(1))
        c = HealthChecker(stack.registry, stack.catalog, **options)
        await c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.stop()


async def register(stack: Stack, instance_id: str, **check: str) -> None:
    body = {"address": "127.0.0.1", "port": 1, "check": {**FAST, **check}}
    await stack.registry.register("web", instance_id, msgspec.convert(body, Registration))


def instance(stack: Stack, instance_id: str) -> Instance | None:
    entry = stack.catalog.services.get("web")
    return entry.instances.get(instance_id) if entry is not None else None


async def until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Poll `predicate` until true; the seconds it took. Fails after `within` seconds."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def status_is(stack: Stack, instance_id: str, status: Status) -> Callable[[], bool]:
    def check() -> bool:
        found = instance(stack, instance_id)
        return found is not None and found.status == status

    return check


async def test_http_check_follows_its_upstream(
    stack: Stack, checker: Checkers, upstream: Upstreams, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crossway.health")
    server = await upstream(status=200)
    c = await checker()
    await register(stack, "w-1", http=server.url)
    await until(status_is(stack, "w-1", "passing"), 2.0, "first check passes")
    assert instance(stack, "w-1").output == "HTTP 200 X"  # type: ignore[union-attr]
    await server.stop()
    took = await until(status_is(stack, "w-1", "critical"), 2.0, "critical after upstream stops")
    # one jittered interval, plus the timeout, plus slack for a busy machine
    assert took <= 0.11 + 0.2 + 0.2
    assert instance(stack, "w-1").output == "connect refused"  # type: ignore[union-attr]
    assert stack.registry.discover("web", healthy=True).instances == []
    lines = [r.getMessage() for r in caplog.records if r.name == "crossway.health"]
    assert "web/w-1 critical→passing HTTP 200 X" in lines
    assert "web/w-1 passing→critical connect refused" in lines
    assert c.stats.transitions == 2
    assert c.stats.checks >= 2
    assert c.stats.failures >= 1


async def test_unchanged_results_are_not_written(
    stack: Stack, checker: Checkers, upstream: Upstreams
) -> None:
    server = await upstream(status=200)
    c = await checker()
    await register(stack, "w-1", http=server.url)
    await until(status_is(stack, "w-1", "passing"), 2.0, "passing")
    revision = await stack.store.revision()
    await until(lambda: server.requests >= 5, 2.0, "several more probes")
    assert await stack.store.revision() == revision, "a steady instance costs no writes"
    assert c.stats.writes == 1


async def test_429_is_warning_and_stays_discoverable(
    stack: Stack, checker: Checkers, upstream: Upstreams
) -> None:
    server = await upstream(status=429)
    await checker()
    await register(stack, "w-1", http=server.url)
    await until(status_is(stack, "w-1", "warning"), 2.0, "warning")
    assert [i.id for i in stack.registry.discover("web", healthy=True).instances] == ["w-1"]


async def test_endpoint_that_never_answers_times_out(
    stack: Stack, checker: Checkers, upstream: Upstreams
) -> None:
    server = await upstream(status=200)
    await checker()
    await register(stack, "w-1", http=server.url)
    await until(status_is(stack, "w-1", "passing"), 2.0, "passing")
    server.hang = True
    await until(status_is(stack, "w-1", "critical"), 1.0, "critical once probes time out")
    assert instance(stack, "w-1").output == "timed out after 200ms"  # type: ignore[union-attr]


async def test_tcp_check(stack: Stack, checker: Checkers, upstream: Upstreams) -> None:
    server = await upstream()
    await checker()
    await register(stack, "t-1", tcp=f"127.0.0.1:{server.port}")
    await until(status_is(stack, "t-1", "passing"), 2.0, "tcp passing")
    await server.stop()
    await until(status_is(stack, "t-1", "critical"), 2.0, "tcp critical")


async def test_grpc_check(
    stack: Stack, checker: Checkers, grpc_health: Callable[..., Awaitable[GrpcHealth]]
) -> None:
    server = await grpc_health({"orders": 1})
    await checker()
    await register(stack, "g-1", grpc=f"127.0.0.1:{server.port}/orders")
    await until(status_is(stack, "g-1", "passing"), 3.0, "grpc passing")
    server.statuses["orders"] = 2
    await until(status_is(stack, "g-1", "critical"), 3.0, "grpc critical")
    assert instance(stack, "g-1").output == "gRPC NOT_SERVING"  # type: ignore[union-attr]


async def test_concurrency_bound_is_honoured(
    stack: Stack, checker: Checkers, upstream: Upstreams
) -> None:
    server = await upstream(status=200, delay=0.05)
    c = await checker(concurrency=4)
    for n in range(24):
        await register(stack, f"w-{n}", http=server.url)
    await until(lambda: server.requests >= 60, 5.0, "enough probes")
    assert server.max_in_flight == 4, "the bound is reached and never exceeded"
    assert c.stats.max_in_flight == 4
    assert c.scheduled == 24


async def test_deregister_after_removes_a_critical_instance(
    stack: Stack, checker: Checkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crossway.health")
    c = await checker()
    await register(stack, "dead", tcp=f"127.0.0.1:{free_port()}", deregister_after="1s")
    took = await until(lambda: instance(stack, "dead") is None, 3.0, "deregistered")
    assert 0.9 <= took <= 2.0
    assert c.stats.deregistrations == 1
    assert c.scheduled == 0
    assert any("deregistered web/dead" in r.getMessage() for r in caplog.records)


async def test_recovery_resets_the_deregister_deadline(
    stack: Stack, checker: Checkers, upstream: Upstreams
) -> None:
    server = await upstream(status=503)
    await checker()
    await register(stack, "w-1", http=server.url, deregister_after="1s")
    await asyncio.sleep(0.6)
    server.status = 200
    await until(status_is(stack, "w-1", "passing"), 1.0, "recovers")
    server.status = 503
    await until(status_is(stack, "w-1", "critical"), 1.0, "fails again")
    await asyncio.sleep(0.7)
    assert instance(stack, "w-1") is not None, "the critical streak restarted"


async def test_changed_check_reschedules_and_removed_instance_unschedules(
    stack: Stack, checker: Checkers, upstream: Upstreams
) -> None:
    first, second = await upstream(status=200), await upstream(status=429)
    c = await checker()
    await register(stack, "w-1", http=first.url)
    await until(status_is(stack, "w-1", "passing"), 2.0, "first target passing")
    await register(stack, "w-1", http=second.url)
    await until(status_is(stack, "w-1", "warning"), 2.0, "the new definition is probed")
    seen = first.requests
    await until(lambda: second.requests >= 3, 2.0, "second target probed again")
    assert first.requests == seen, "the old target is no longer probed"
    assert c.scheduled == 1
    await stack.registry.deregister("web", "w-1")
    assert c.scheduled == 0
    seen = second.requests
    await asyncio.sleep(0.3)
    assert second.requests == seen


async def test_instances_without_check_are_ignored(stack: Stack, checker: Checkers) -> None:
    c = await checker()
    body = {"address": "127.0.0.1", "port": 1, "ttl": "10s"}
    await stack.registry.register("web", "plain", msgspec.convert(body, Registration))
    assert c.scheduled == 0


async def test_initial_scan_and_clean_stop(stack: Stack, upstream: Upstreams) -> None:
    server = await upstream(status=200)
    for n in range(3):
        await register(stack, f"w-{n}", http=server.url)
    c = HealthChecker(stack.registry, stack.catalog, rng=random.Random(2))
    await c.start()
    await c.start()  # idempotent
    assert c.scheduled == 3
    for n in range(3):
        await until(status_is(stack, f"w-{n}", "passing"), 3.0, "scanned instance checked")
    await c.stop()
    assert c.scheduled == 0
    mine = [t for t in asyncio.all_tasks() if t.get_name().startswith("health ")]
    assert mine == [], "stop() leaves no task behind"
    await register(stack, "late", http=server.url)
    assert c.scheduled == 0, "a stopped checker ignores the catalog"


class Scripted(Prober):
    """Answers probes from a script; the last answer repeats."""

    def __init__(self, script: list[Status]) -> None:
        super().__init__()
        self.script = script
        self.calls = 0

    async def probe(self, check: Check, time_limit: float) -> ProbeResult:
        status = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return ProbeResult(status, status)


async def test_flapping_guard_in_the_driver(stack: Stack, checker: Checkers) -> None:
    prober = Scripted(["passing", "passing", "critical", "passing", "critical", "critical"])
    try:
        c = await checker(prober=prober, success_before_passing=2, failures_before_critical=2)
        await register(stack, "w-1", tcp="127.0.0.1:1")
        await until(lambda: prober.calls >= 2, 2.0, "two probes")
        await until(status_is(stack, "w-1", "passing"), 1.0, "passing after two successes")
        await until(lambda: prober.calls >= 6, 2.0, "the whole script")
        await until(status_is(stack, "w-1", "critical"), 1.0, "critical after two failures")
        assert c.stats.transitions == 2, "the lone failure in between changed nothing"
    finally:
        await prober.aclose()


async def test_a_failed_write_is_retried(
    stack: Stack, checker: Checkers, upstream: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await upstream(status=200)
    real = stack.registry.set_status
    calls = 0

    async def flaky(
        service: str, instance_id: str, status: str, output: str, **kwargs: Any
    ) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store unavailable")
        return await real(service, instance_id, status, output, **kwargs)

    monkeypatch.setattr(stack.registry, "set_status", flaky)
    c = await checker()
    await register(stack, "w-1", http=server.url)
    await until(status_is(stack, "w-1", "passing"), 2.0, "recorded on the next probe")
    assert c.stats.write_errors == 1
    assert c.stats.transitions == 1
