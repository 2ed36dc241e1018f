from __future__ import annotations

import asyncio
import random
import time

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.sdk.control import ControlPlane, ControlPlaneError
from crossway.sdk.registration import (
    REFUSED_RETRY,
    Action,
    KeepalivePolicy,
    Registrar,
    registration_body,
)
from crossway.sdk.settings import ClientSettings, InvalidSettings
from crossway.testing.server import CrosswayServer, shared_server, start_server
from crossway.testing.services import free_port

# -- the pure policy ---------------------------------------------------------------


def test_first_step_registers_at_once() -> None:
    step = KeepalivePolicy(9.0).next_step()
    assert step.action is Action.REGISTER
    assert step.delay == 0.0


def test_keepalive_every_third_of_the_ttl_with_jitter_below() -> None:
    policy = KeepalivePolicy(9.0, rand=lambda: 0.999)
    policy.registered("ab")
    low = policy.next_step()
    policy.rand = lambda: 0.0
    high = policy.next_step()
    assert low.action is high.action is Action.KEEPALIVE
    assert high.delay == pytest.approx(3.0)
    assert 2.4 <= low.delay < 3.0


def test_lost_lease_registers_again_at_once() -> None:
    policy = KeepalivePolicy(9.0)
    policy.registered("ab")
    policy.lease_lost()
    assert policy.next_step() == policy.next_step()
    assert policy.next_step().action is Action.REGISTER
    assert policy.next_step().delay == 0.0


def test_outage_is_reported_once_and_its_length_at_the_end() -> None:
    clock = VirtualClock()
    policy = KeepalivePolicy(9.0, clock=clock)
    policy.registered("ab")
    assert policy.unreachable() is True
    clock.advance(1.0)
    assert policy.unreachable() is False
    assert policy.unreachable() is False
    clock.advance(2.5)
    assert policy.renewed() == pytest.approx(3.5)
    assert policy.renewed() is None
    assert policy.unreachable() is True  # a new outage


def test_backoff_grows_and_is_capped_by_a_third_of_the_ttl() -> None:
    policy = KeepalivePolicy(6.0, rand=lambda: 0.999)
    policy.registered("ab")
    delays = []
    for _ in range(12):
        policy.unreachable()
        delays.append(policy.next_step().delay)
    assert delays[0] < delays[2] < delays[4]
    assert max(delays) <= 2.0
    assert delays[-1] == pytest.approx(2.0, abs=0.01)


def test_a_refusal_is_logged_once_per_message_and_retried_slowly() -> None:
    policy = KeepalivePolicy(9.0, rand=lambda: 0.0)
    assert policy.refused("bad token") is True
    assert policy.refused("bad token") is False
    assert policy.refused("other") is True
    step = policy.next_step()
    assert step.action is Action.REGISTER
    assert step.delay == REFUSED_RETRY
    policy.registered("ab")
    assert policy.refusal is None


def merged(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(windows):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif b > a:
            out.append((a, b))
    return out


@settings(max_examples=150, deadline=None)
@given(
    ttl=st.floats(min_value=1.0, max_value=120.0),
    outages=st.lists(st.tuples(st.floats(0.0, 40.0), st.floats(0.0, 20.0)), min_size=0, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_simulated_lease_survives_and_recovers(
    ttl: float, outages: list[tuple[float, float]], seed: int
) -> None:
    """Against a simulated control plane that forgets a lease not renewed
    within `ttl` and cannot be reached during `outages`: without an outage the
    lease never lapses; each outage is reported once; after one ends (and the
    network stays up) the next successful request comes within ttl/3, the
    backoff cap."""
    clock = VirtualClock()
    rng = random.Random(seed)
    policy = KeepalivePolicy(ttl, clock=clock, rand=rng.random)
    # Outages and the horizon are measured in TTLs.
    windows = merged([(start * ttl, (start + length) * ttl) for start, length in outages])
    horizon = 60 * ttl
    deadline: float | None = None  # the simulated server's lease deadline
    reported, lost = 0, 0
    successes: list[float] = []
    while clock.now() < horizon:
        step = policy.next_step()
        assert 0.0 <= step.delay <= ttl / 3 + 1e-9
        clock.advance(step.delay)
        now = clock.now()
        if any(a <= now < b for a, b in windows):
            reported += policy.unreachable()
            continue
        if deadline is not None and now > deadline:
            deadline = None  # expired: the server forgot it
        if step.action is Action.KEEPALIVE and deadline is None:
            lost += 1
            policy.lease_lost()
            continue
        if step.action is Action.REGISTER:
            policy.registered("lease")
        else:
            policy.renewed()
        deadline = now + ttl
        successes.append(now)
    assert reported <= len(windows)
    if not windows:
        assert lost == 0
    starts = [*(a for a, _ in windows[1:]), horizon]
    for (_, end), next_start in zip(windows, starts, strict=False):
        if next_start > end + ttl / 3 and end < horizon - ttl:
            assert any(end <= t <= end + ttl / 3 + 1e-6 for t in successes)


def test_registration_body_from_settings() -> None:
    s = ClientSettings(
        service="orders",
        address="10.1.2.3",
        port=8080,
        zone="eu-1",
        tags=("v2",),
        labels={"version": "v2"},
        ttl="5s",
        weight=50,
    )
    assert registration_body(s) == {
        "address": "10.1.2.3",
        "port": 8080,
        "ttl": "5s",
        "weight": 50,
        "tags": ["v2"],
        "metadata": {"version": "v2"},
        "zone": "eu-1",
    }
    with pytest.raises(InvalidSettings, match="port"):
        registration_body(ClientSettings(service="orders"))


# -- the driver against fakes -------------------------------------------------------


def mock_control(handler: object) -> ControlPlane:
    settings = ClientSettings(address="127.0.0.1")
    return ControlPlane(settings, transport=httpx2.MockTransport(handler))  # type: ignore[arg-type]


async def test_refused_registration_fails_start_and_starts_nothing() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        body = {"error": {"code": "unauthorized", "message": "the token is not valid"}}
        return httpx2.Response(401, json=body)

    control = mock_control(handler)
    registrar = Registrar(control, service="s", instance_id="s-1", body={}, ttl=3.0)
    with pytest.raises(ControlPlaneError, match="token"):
        await registrar.start()
    assert registrar._task is None
    await control.aclose()


async def test_keepalive_404_registers_again_with_the_same_id() -> None:
    calls: list[str] = []
    leases = iter(["a1", "b2", "c3"])

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "PUT" and "/instances/" in request.url.path:
            lease = next(leases)
            body = {"service": "s", "id": "s-1", "address": "127.0.0.1", "port": 1, "lease": lease}
            return httpx2.Response(200, json=body)
        error = {"error": {"code": "lease_not_found", "message": "lease a1 has expired"}}
        return httpx2.Response(404, json=error)

    control = mock_control(handler)
    registrar = Registrar(
        control, service="s", instance_id="s-1", body={}, ttl=1.0, rand=lambda: 1.0
    )
    await registrar.start()
    for _ in range(200):
        if registrar.registrations >= 2:
            break
        await asyncio.sleep(0.01)
    await registrar.stop()
    await control.aclose()
    assert calls[:3] == [
        "PUT /v1/services/s/instances/s-1",
        "PUT /v1/leases/a1/keepalive",
        "PUT /v1/services/s/instances/s-1",
    ]
    assert calls[-1] == "DELETE /v1/services/s/instances/s-1"


# -- against a real control plane ---------------------------------------------------

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> CrosswayServer:
    return shared_server("memory")  # one for every module; names here are this module's


def make_registrar(url: str, service: str, ttl: str = "2s") -> Registrar:
    settings = ClientSettings(url=url, service=service, address="127.0.0.1", port=9000, ttl=ttl)
    return Registrar(
        ControlPlane(settings),
        service=service,
        instance_id=f"{service}-1",
        body=registration_body(settings),
        ttl=settings.ttl_seconds,
    )


def listed(url: str, service: str) -> list[str]:
    return [i["id"] for i in httpx2.get(f"{url}/v1/services/{service}", timeout=5).json()]


async def wait_listed(url: str, service: str, present: bool, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if bool(await asyncio.to_thread(listed, url, service)) == present:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{service} {'not registered' if present else 'still listed'}")


async def test_lease_kept_alive_across_several_ttls(server: CrosswayServer) -> None:
    registrar = make_registrar(server.url, "reg-alive", ttl="1s")
    await registrar.start()
    lease = registrar.lease
    assert listed(server.url, "reg-alive") == ["reg-alive-1"]
    await asyncio.sleep(3.2)  # over three TTLs
    assert listed(server.url, "reg-alive") == ["reg-alive-1"]
    assert registrar.lease == lease
    assert registrar.registrations == 1
    await registrar.stop()
    assert listed(server.url, "reg-alive") == []
    await registrar.control.aclose()


async def test_stop_cancels_every_task(server: CrosswayServer) -> None:
    before = asyncio.all_tasks()
    registrar = make_registrar(server.url, "reg-tasks")
    await registrar.start()
    assert len(asyncio.all_tasks() - before) == 1
    await registrar.stop()
    await registrar.stop()  # twice is fine
    assert asyncio.all_tasks() - before == set()
    await registrar.control.aclose()


async def test_one_warning_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    registrar = make_registrar(f"http://127.0.0.1:{free_port()}", "reg-quiet", ttl="1s")
    await registrar.start()
    await asyncio.sleep(1.2)  # a dozen attempts at the capped backoff
    await registrar.stop()
    await registrar.control.aclose()
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1


async def test_unreachable_at_start_then_restarted_on_its_data() -> None:
    """Start does not fail without a control plane: the instance registers
    when one comes up, and stays registered across its restart (sqlite, same
    data and port). The memory-store restart is in test_client.py."""
    port = free_port()
    registrar = make_registrar(f"http://127.0.0.1:{port}", "reg-sqlite", ttl="1s")
    await registrar.start()  # the service boots without its control plane
    assert registrar.registrations == 0
    first = await asyncio.to_thread(start_server, store="sqlite", port=port)
    second: CrosswayServer | None = None
    try:
        assert await wait_listed(first.url, "reg-sqlite", True, within=5.0) < 2.0
        await asyncio.to_thread(first.stop)
        second = await asyncio.to_thread(
            start_server, store="sqlite", data_dir=first.data_dir, port=port
        )
        await wait_listed(second.url, "reg-sqlite", True, within=2.0)
        await asyncio.sleep(1.2)  # more than a TTL later, still registered
        assert listed(second.url, "reg-sqlite") == ["reg-sqlite-1"]
        await registrar.stop()
        assert listed(second.url, "reg-sqlite") == []
    finally:
        await registrar.stop()
        await registrar.control.aclose()
        for server in (first, second):
            if server is not None:
                await asyncio.to_thread(server.stop)
