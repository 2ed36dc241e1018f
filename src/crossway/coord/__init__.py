"""Coordination on the store: sessions, locks with fencing tokens, counting
semaphores and leader election (the etcd concurrency recipes).

    coord = Coordination(store)
    session = await coord.sessions.create(ttl=10.0, name="nightly")
    held = await coord.locks.acquire("nightly-job", session.id, wait=5.0)
    ...  # pass held.fence to every storage write the job makes
    await coord.locks.release("nightly-job", session.id)

Everything a session holds is a key bound to its lease, so ending the session
(or its owner dying and the TTL running out) releases it all at once. See
docs/coordination.md.
"""

from __future__ import annotations

from crossway.coord.contention import Contention
from crossway.coord.elections import Campaign, Elections
from crossway.coord.locks import LineView, Locks, Semaphores
from crossway.coord.model import (
    Busy,
    LimitMismatch,
    NotHolder,
    SessionNotFound,
    SessionRecord,
    Withdrawn,
)
from crossway.coord.queue import Contender
from crossway.coord.renewal import RenewalSchedule
from crossway.coord.sessions import Sessions, SessionView
from crossway.core.clock import Clock
from crossway.store.protocol import Store


class Coordination:
    """The coordination services over one store."""

    def __init__(self, store: Store, *, clock: Clock | None = None) -> None:
        self.store = store
        self.sessions = Sessions(store, clock=clock)
        contention = Contention(store, self.sessions)
        self.locks = Locks(contention)
        self.semaphores = Semaphores(contention)
        self.elections = Elections(store, contention)


__all__ = [
    "Busy",
    "Campaign",
    "Contender",
    "Coordination",
    "Elections",
    "LimitMismatch",
    "LineView",
    "Locks",
    "NotHolder",
    "RenewalSchedule",
    "Semaphores",
    "SessionNotFound",
    "SessionRecord",
    "SessionView",
    "Sessions",
    "Withdrawn",
]
