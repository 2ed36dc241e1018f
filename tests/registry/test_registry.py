"""The registry's domain logic against a real (memory) store on virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument, NotFound
from crossway.registry import Catalog, Registration, Registry
from crossway.registry.guard import PreservationGuard
from crossway.store import LeaseNotFound
from crossway.store.local import LocalStore
from crossway.store.memory import open_memory_store


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def store(clock: VirtualClock) -> AsyncIterator[LocalStore]:
    s = open_memory_store(clock=clock)
    yield s
    await s.close()


@pytest.fixture
async def registry(store: LocalStore, clock: VirtualClock) -> AsyncIterator[Registry]:
    catalog = Catalog(store)
    await catalog.start()
    yield Registry(store, catalog, clock=clock)
    await catalog.stop()


def reg(**fields: object) -> Registration:
    body = {"address": "10.0.0.1", "port": 8080, **fields}
    return msgspec.convert(body, Registration)


async def test_register_discover_and_expire(
    registry: Registry, store: LocalStore, clock: VirtualClock
) -> None:
    instance = await registry.register("orders", "o-1", reg(ttl="10s", zone="eu-1", tags=["v2"]))
    assert instance.lease is not None
    assert instance.status == "passing"
    found = registry.discover("orders", healthy=True)
    assert [i.id for i in found.instances] == ["o-1"]
    assert registry.discover("orders", zone="us-1").instances == []
    assert [i.id for i in registry.discover("orders", tag="v2").instances] == ["o-1"]
    clock.advance(8)
    await registry.keepalive(instance.lease)
    clock.advance(8)
    assert await store.expire_leases() == 0, "renewed lease must not expire"
    clock.advance(3)
    assert await store.expire_leases() == 1
    await registry.catalog.caught_up(await store.revision())
    assert registry.discover("orders").instances == []
    with pytest.raises(LeaseNotFound):
        await registry.keepalive(instance.lease)


async def test_reregistering_is_idempotent_and_keeps_the_lease(registry: Registry) -> None:
    first = await registry.register("orders", "o-1", reg(ttl="10s", port=8080))
    again = await registry.register("orders", "o-1", reg(ttl="10s", port=9090))
    assert again.lease == first.lease
    assert again.registered_at == first.registered_at
    assert [i.port for i in registry.discover("orders").instances] == [9090]


async def test_one_keepalive_renews_every_instance_on_a_shared_lease(
    registry: Registry, store: LocalStore, clock: VirtualClock
) -> None:
    a = await registry.register("orders", "a", reg(ttl="10s"))
    assert a.lease is not None
    await registry.register("orders", "b", reg(lease=a.lease))
    await registry.register("payments", "c", reg(lease=a.lease))
    clock.advance(9)
    await registry.keepalive(a.lease)
    clock.advance(9)
    await store.expire_leases()
    assert len(registry.discover("orders").instances) == 2
    clock.advance(2)
    await store.expire_leases()
    await registry.catalog.caught_up(await store.revision())
    assert registry.services()[0] == []


async def test_deregister_releases_an_own_lease(registry: Registry, store: LocalStore) -> None:
    instance = await registry.register("orders", "o-1", reg())
    assert instance.lease is not None
    await registry.deregister("orders", "o-1")
    with pytest.raises(LeaseNotFound):
        await store.keepalive(int(instance.lease, 16))
    with pytest.raises(NotFound):
        await registry.deregister("orders", "o-1")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"address": "not an address!"}, "address"),
        ({"ttl": "forever"}, "ttl"),
        ({"ttl": "0s"}, "ttl"),
        ({"lease": "zz"}, "lease"),
        ({"lease": "abc", "ttl": "10s"}, "ttl"),
        ({"check": {"http": "ftp://x"}}, "check.http"),
        ({"check": {"tcp": "nohost"}}, "check.tcp"),
        ({"check": {}}, "check"),
        ({"zone": "bad zone"}, "zone"),
        ({"tags": ["has space"]}, "tags"),
    ],
)
async def test_bad_registrations_name_the_field_and_write_nothing(
    registry: Registry, store: LocalStore, fields: dict[str, object], field: str
) -> None:
    before = await store.revision()
    with pytest.raises(InvalidArgument) as error:
        await registry.register("orders", "o-1", reg(**fields))
    assert error.value.details.get("field") == f"$.{field}"
    assert await store.revision() == before


async def test_bad_names_are_refused(registry: Registry) -> None:
    with pytest.raises(InvalidArgument):
        await registry.register("bad/name", "o-1", reg())
    with pytest.raises(InvalidArgument):
        await registry.register("orders", "-x", reg())


async def test_unknown_shared_lease_is_a_field_error(registry: Registry) -> None:
    with pytest.raises(InvalidArgument) as error:
        await registry.register("orders", "o-1", reg(lease="abcdef"))
    assert error.value.details["field"] == "$.lease"


async def test_protect_threshold_returns_everything_when_too_few_are_healthy(
    registry: Registry,
) -> None:
    for i in range(4):
        await registry.register("orders", f"o-{i}", reg())
    for i in range(3):
        await registry.set_status("orders", f"o-{i}", "critical", "down")
    await registry.catalog.caught_up(registry.catalog.revision + 3)
    assert [i.id for i in registry.discover("orders", healthy=True).instances] == ["o-3"]
    registry.protect_thresholds["orders"] = 0.5
    protected = registry.discover("orders", healthy=True)
    assert protected.protected
    assert len(protected.instances) == 4


async def test_self_preservation_keeps_instances_through_a_mass_lapse(
    registry: Registry, store: LocalStore, clock: VirtualClock
) -> None:
    leases = []
    for i in range(20):
        instance = await registry.register("orders", f"o-{i}", reg(ttl="10s"))
        leases.append(instance.lease)
    guard = PreservationGuard(store, registry.catalog, clock=clock)
    # A network blip: nobody renews for 30 seconds.
    for _ in range(60):
        clock.advance(0.5)
        await guard.run_once()
        await store.expire_leases()
    assert guard.engaged
    assert len(registry.discover("orders").instances) == 20, "nothing was evicted"
    assert all(guard.is_stale(lease) for lease in leases)
    # Renewals come back for 15 of them; the other 5 really are dead.
    for _ in range(30):
        clock.advance(0.5)
        for lease in leases[:15]:
            assert lease is not None
            await registry.keepalive(lease)
        await guard.run_once()
        await store.expire_leases()
    await registry.catalog.caught_up(await store.revision())
    assert not guard.engaged
    assert sorted(i.id for i in registry.discover("orders").instances) == sorted(
        f"o-{i}" for i in range(15)
    )


async def test_blocked_waits_wake_on_their_service_time_out_and_leave_nothing_behind(
    registry: Registry,
) -> None:
    catalog = registry.catalog
    await registry.register("orders", "o-1", reg())
    index = catalog.service_index("orders")

    def orders() -> int:
        return catalog.service_index("orders")

    woken = [
        asyncio.ensure_future(catalog.wait_change(orders, index, 5.0, service="orders"))
        for _ in range(50)
    ]
    other = asyncio.ensure_future(catalog.wait_change(orders, index, 0.2, service="orders"))
    await asyncio.sleep(0.05)
    await registry.register("payments", "p-1", reg())  # another service: nobody wakes
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in woken)
    await registry.register("orders", "o-2", reg())
    await asyncio.wait_for(asyncio.gather(*woken), 2.0)
    assert other.done()  # woken with the others (its deadline had not come)
    # A wait that times out, and one that is cancelled, leave no waiter behind.
    await catalog.wait_change(orders, orders(), 0.05, service="orders")
    cancelled = asyncio.ensure_future(catalog.wait_change(orders, orders(), 5.0, service="orders"))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not catalog._service_waiters.get("orders")


async def test_release_all_answers_blocked_waits_at_once_and_later_ones_too(
    registry: Registry,
) -> None:
    catalog = registry.catalog
    blocked = [asyncio.ensure_future(catalog.wait_change(lambda: 0, 0, 30.0)) for _ in range(10)]
    await asyncio.sleep(0.01)
    catalog.release_all()
    await asyncio.wait_for(asyncio.gather(*blocked), 1.0)
    await asyncio.wait_for(catalog.wait_change(lambda: 0, 0, 30.0, service="x"), 1.0)
