"""Sessions: create, renew, list, destroy; expiry on virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from crossway.coord import Coordination, SessionNotFound
from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument
from crossway.store.local import LocalStore
from crossway.store.memory import open_memory_store

from .helpers import new_session, until, waiting


async def test_create_renew_list_destroy(coord: Coordination, name: str) -> None:
    record = await coord.sessions.create(ttl=30, name="batch-7")
    assert record.name == "batch-7"
    assert record.ttl >= 30
    assert int(record.id, 16) > 0
    renewed = await coord.sessions.renew(record.id)
    assert renewed.record == record
    assert renewed.remaining == record.ttl
    listed, revision = await coord.sessions.list()
    assert record in listed
    assert revision > 0
    await coord.locks.acquire(name, record.id, wait=0)
    await coord.elections.campaign(name, record.id, value="x", wait=0)
    released = await coord.sessions.destroy(record.id)
    assert released == [f"elections/{name}", f"locks/{name}"]
    with pytest.raises(SessionNotFound):
        await coord.sessions.renew(record.id)
    with pytest.raises(SessionNotFound):
        await coord.sessions.destroy(record.id)
    with pytest.raises(SessionNotFound):
        await coord.sessions.get(record.id)
    assert record not in (await coord.sessions.list())[0]


async def test_ids_are_case_insensitive_hex(coord: Coordination) -> None:
    record = await coord.sessions.create(ttl=30)
    view = await coord.sessions.get(record.id.upper())
    assert view.record.id == record.id


@pytest.mark.parametrize(
    ("session", "field"), [("", "session"), ("xyz", "session"), ("0", "session")]
)
async def test_bad_ids_name_the_field(coord: Coordination, session: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await coord.sessions.renew(session)
    assert bad.value.details["field"] == field


async def test_bad_names_are_refused(coord: Coordination) -> None:
    with pytest.raises(InvalidArgument):
        await coord.sessions.create(ttl=30, name="x" * 200)
    with pytest.raises(InvalidArgument):
        await coord.sessions.create(ttl=30, name="line\nbreak")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def virtual_store(clock: VirtualClock) -> AsyncIterator[LocalStore]:
    s = open_memory_store(clock=clock)
    yield s
    await s.close()


async def test_expiry_on_virtual_time_releases_and_wakes(
    virtual_store: LocalStore, clock: VirtualClock, name: str
) -> None:
    coord = Coordination(virtual_store, clock=clock)
    holder = await new_session(coord, "holder", ttl=10)
    standby = await new_session(coord, "standby", ttl=1000)
    held = await coord.locks.acquire(name, holder, wait=0)
    waiter = asyncio.create_task(coord.locks.acquire(name, standby, wait=60))
    await until(lambda: waiting(coord, "lock", name, 1))
    clock.advance(9)
    await coord.sessions.renew(holder)
    clock.advance(9)
    assert await virtual_store.expire_leases() == 0, "a renewed session lives a full TTL"
    assert not waiter.done()
    clock.advance(1.5)
    assert await virtual_store.expire_leases() == 1
    got = await asyncio.wait_for(waiter, 5)
    assert got.session == standby
    assert got.fence > held.fence
    with pytest.raises(SessionNotFound):
        await coord.sessions.renew(holder)
