"""Elections on every backend: campaign, queue, proclaim, resign, observe."""

from __future__ import annotations

import asyncio

import pytest

from crossway.coord import Busy, Coordination, NotHolder

from .helpers import new_session, until, waiting


async def test_first_candidate_leads_and_others_wait(coord: Coordination, name: str) -> None:
    a, b = await new_session(coord, "a"), await new_session(coord, "b")
    won = await coord.elections.campaign(name, a, value="10.0.0.1:80", wait=0)
    assert won.elected
    assert won.position == 0
    assert won.candidate.entry.value == "10.0.0.1:80"
    with pytest.raises(Busy) as busy:
        await coord.elections.campaign(name, b, value="10.0.0.2:80", wait=0.05)
    leader = busy.value.details["leader"]
    assert leader["session"] == a
    assert leader["value"] == "10.0.0.1:80"
    assert leader["name"] == "a"
    assert (await coord.elections.describe(name)).waiting == [], "a lost campaign leaves"
    current, revision = await coord.elections.leader(name)
    assert current is not None
    assert current.session == a
    assert revision >= current.fence


async def test_queued_candidacy_leads_when_its_turn_comes(coord: Coordination, name: str) -> None:
    a, b = await new_session(coord), await new_session(coord)
    first = await coord.elections.campaign(name, a, value="a", wait=0)
    queued = await coord.elections.campaign(name, b, value="b", wait=0.05, queue=True)
    assert not queued.elected
    assert queued.position == 1
    assert queued.leader is not None
    assert queued.leader.session == a
    await coord.elections.resign(name, a)
    leader, _ = await coord.elections.leader(name)
    assert leader is not None
    assert leader.session == b
    assert leader.fence > first.candidate.fence
    again = await coord.elections.campaign(name, b, value="b", wait=0)
    assert again.elected
    assert again.candidate.fence == leader.fence, "the same term"


async def test_proclaim_keeps_the_term(coord: Coordination, name: str) -> None:
    a = await new_session(coord)
    first = await coord.elections.campaign(name, a, value="v1", wait=0)
    second = await coord.elections.campaign(name, a, value="v2", wait=0)
    assert second.elected
    assert second.candidate.fence == first.candidate.fence
    leader, _ = await coord.elections.leader(name)
    assert leader is not None
    assert leader.entry.value == "v2"


async def test_resign_needs_a_candidate(coord: Coordination, name: str) -> None:
    a = await new_session(coord)
    with pytest.raises(NotHolder):
        await coord.elections.resign(name, a)


async def test_failover_when_the_leader_session_ends(coord: Coordination, name: str) -> None:
    a, b = await new_session(coord), await new_session(coord)
    await coord.elections.campaign(name, a, value="a", wait=0)
    standby = asyncio.create_task(coord.elections.campaign(name, b, value="b", wait=30))
    await until(lambda: waiting(coord, "election", name, 1))
    await coord.sessions.destroy(a)
    won = await asyncio.wait_for(standby, 5)
    assert won.elected
    assert won.candidate.since > won.candidate.fence


async def test_changed_wakes_on_leader_change_only(coord: Coordination, name: str) -> None:
    a, b, c = await new_session(coord), await new_session(coord), await new_session(coord)
    await coord.elections.campaign(name, a, value="a", wait=0)
    _, index = await coord.elections.leader(name)
    waiter = asyncio.create_task(coord.elections.changed(name, index=index, wait=10))
    await asyncio.sleep(0.05)
    await coord.elections.campaign(name, b, value="b", wait=0, queue=True)
    await asyncio.sleep(0.1)
    assert not waiter.done(), "a new standby does not change the leader"
    await coord.elections.campaign(name, a, value="a2", wait=0)
    assert await asyncio.wait_for(waiter, 5), "a new value is a change"
    _, index = await coord.elections.leader(name)
    assert not await coord.elections.changed(name, index=index, wait=0.1)
    await coord.elections.campaign(name, c, value="c", wait=0, queue=True)
    assert await coord.elections.changed(name, index=index, wait=5), (
        "changes the reader has not seen count at once"
    )
    assert await coord.elections.changed(name, index=10**12, wait=5)
