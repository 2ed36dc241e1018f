"""Leader election: candidates line up, the oldest candidacy leads.

An election is a line of limit 1 whose entries carry a value (an address, a
node name: what the others need to know about the leader). The leader is the
live candidate with the lowest create_revision; its fence (that revision)
identifies its term and grows with every new leader, and `since` is the
revision from which it leads.

- `campaign` joins (or, for a session already in line, re-proclaims a new
  value in place, keeping its place and term) and waits up to `wait` seconds to
  lead. When the wait runs out it raises `Busy` naming the leader and gives up
  its place, unless `queue=True`: then the candidacy stays in line, the call
  returns `elected=False`, and the session leads when its turn comes (it can
  campaign again, which returns at once if it leads, or watch the leader).
- `resign` takes a session out of the election, leading or queued.
- `changed` waits until the leader may differ from what a reader saw at some
  revision: the primitive under blocking queries and event streams.

Cancellation: as for locks, a cancelled campaign gives up the place it took,
unless `queue=True`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from crossway.coord.contention import Contention
from crossway.coord.locks import LineView
from crossway.coord.model import Busy, Line, check_name, check_value
from crossway.coord.queue import Contender
from crossway.store.errors import CompactedError
from crossway.store.protocol import Store


@dataclass(frozen=True, slots=True)
class Campaign:
    elected: bool
    candidate: Contender
    leader: Contender | None
    position: int
    """0 for the leader, else the number of candidates ahead."""


class Elections:
    def __init__(self, store: Store, contention: Contention) -> None:
        self._store = store
        self._contention = contention

    async def campaign(
        self, name: str, session: str, *, value: str = "", wait: float, queue: bool = False
    ) -> Campaign:
        line = Line("election", check_name(name))
        outcome = await self._contention.enter(
            line, session, value=check_value(value), wait=wait, keep=queue
        )
        if outcome.holding:
            return Campaign(True, outcome.me, outcome.me, 0)
        snap = outcome.snapshot
        leader = snap.line[0] if snap.line else None
        if not queue:
            raise _busy(line, leader)
        found = snap.find(outcome.me.session)
        return Campaign(False, outcome.me, leader, found[0] if found else len(snap.line))

    async def resign(self, name: str, session: str) -> Contender:
        """Leave the election; `NotHolder` (409) when not a candidate."""
        line = Line("election", check_name(name))
        return await self._contention.withdraw(line, session, holders_only=False)

    async def leader(self, name: str) -> tuple[Contender | None, int]:
        """The leader (None when there is no candidate) and the listing's revision."""
        snap = await self._contention.snapshot(Line("election", check_name(name)))
        return (snap.line[0] if snap.line else None), snap.revision

    async def describe(self, name: str) -> LineView:
        line = Line("election", check_name(name))
        return LineView.of(line, await self._contention.snapshot(line), 1)

    async def list(self) -> tuple[list[LineView], int]:
        lines, revision = await self._contention.lines("election")
        return [LineView.of(line, snap, 1) for line, snap, _ in lines], revision

    async def changed(self, name: str, *, index: int, wait: float) -> bool:
        """Wait until the leader may differ from what a reader at revision
        `index` saw; False when `wait` seconds pass first.

        Any change to the candidates after `index` and up to the current
        revision counts (the reader may not have seen it); after that only a
        change of the leader — who, term, since or value — does. A compacted
        `index`, or one beyond the current revision, counts as a change. Store
        errors propagate; cancellation closes the watch and propagates."""
        line = Line("election", check_name(name))
        known, now = await self.leader(name)
        if index > now:
            return True  # not a revision of this store: let the reader start over
        try:
            async with (
                asyncio.timeout(wait),
                self._store.watch(line.prefix, after_revision=index) as watch,
            ):
                while True:
                    batch = await watch.next_batch()
                    if batch[0].revision <= now:
                        return True
                    current, _ = await self.leader(name)
                    if _view(current) != _view(known):
                        return True
        except TimeoutError:
            return False
        except CompactedError:
            return True


def _view(leader: Contender | None) -> dict[str, object] | None:
    return leader.public(value=True) if leader is not None else None


def _busy(line: Line, leader: Contender | None) -> Busy:
    if leader is None:
        return Busy(f"timed out campaigning in election {line.name}", leader=None)
    return Busy(
        f"timed out campaigning in election {line.name}: session {leader.session} leads "
        f"since revision {leader.since}",
        leader=leader.public(value=True),
    )
