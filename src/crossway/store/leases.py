"""Lease bookkeeping: which leases exist, when each expires, which keys it holds.

Pure: the caller passes the time (`now`, monotonic seconds from a Clock) and
acts on what `expired(now)` returns. Renewals change only memory — the same
choice as etcd, which does not raft-log keepalives — so a control plane can
hold hundreds of thousands of heartbeating instances.

Invariants
1. A key is attached to at most one lease; `attach` moves it.
2. `expired(now)` returns each lease whose deadline is at or before `now`
   exactly once; the caller then revokes it (deleting its keys) and calls
   `remove`. A lease renewed before that is no longer expired.
3. Deadlines live in a heap with lazy deletion: a renewal pushes a new entry
   and stale entries are skipped when popped, so renew is O(log n) and needs
   no search.
4. A `LeaseState` is invisible to Python's cyclic garbage collector (a
   `gc=False` struct whose keys are a dict of strings, which the collector
   does not track either): a table of 100,000 leases adds nothing to the
   pause of a full collection. It holds no reference that could form a cycle.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Container, KeysView

import msgspec


class LeaseState(msgspec.Struct, gc=False):
    id: int
    ttl: float
    deadline: float
    members: dict[str, None] = {}
    """The keys bound to the lease, as an ordered set (see invariant 4)."""

    @property
    def keys(self) -> KeysView[str]:
        return self.members.keys()


class LeaseTable:
    __slots__ = ("_heap", "_key_lease", "_leases")

    def __init__(self) -> None:
        self._leases: dict[int, LeaseState] = {}
        self._key_lease: dict[str, int] = {}
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease: int) -> bool:
        return lease in self._leases

    def new_id(self) -> int:
        # Random 63-bit ids, as etcd's are: unguessable, never reused in practice,
        # and positive in a signed int64.
        while True:
            lease = secrets.randbits(63)
            if lease and lease not in self._leases:
                return lease

    def grant(self, lease: int, ttl: float, now: float) -> LeaseState:
        state = LeaseState(lease, ttl, now + ttl)
        self._leases[lease] = state
        heapq.heappush(self._heap, (state.deadline, lease))
        return state

    def get(self, lease: int) -> LeaseState | None:
        return self._leases.get(lease)

    def ids(self) -> list[int]:
        return list(self._leases)

    def expiring(
        self, now: float, *, within: float, fraction: float, among: Container[int]
    ) -> list[LeaseState]:
        """The states of the leases in `among` that have less than
        min(ttl * fraction, within) left at `now`.

        One pass over the table in its own order (sequential in memory, no
        lookup per lease) that allocates only for what it returns: callers run
        it every second over a fleet of 100,000."""
        out: list[LeaseState] = []
        for state in self._leases.values():
            remaining = state.deadline - now
            if remaining < within and remaining < state.ttl * fraction and state.id in among:
                out.append(state)
        return out

    def renew(self, lease: int, now: float) -> LeaseState | None:
        state = self._leases.get(lease)
        if state is None:
            return None
        if state.deadline == now + state.ttl:
            return state
        state.deadline = now + state.ttl
        # Each renewal pushes a fresh heap entry and leaves the old one to be
        # skipped when it pops; the heap is rebuilt when stale entries pile up.
        if len(self._heap) > 4 * len(self._leases) + 64:
            self._rebuild_heap()
        else:
            heapq.heappush(self._heap, (state.deadline, lease))
        return state

    def postpone(self, lease: int, deadline: float) -> None:
        """Expire `lease` again at `deadline` (after a revoke that could not be
        written, say)."""
        state = self._leases.get(lease)
        if state is not None:
            state.deadline = deadline
            heapq.heappush(self._heap, (deadline, lease))

    def remove(self, lease: int) -> LeaseState | None:
        state = self._leases.pop(lease, None)
        if state is not None:
            for key in state.members:
                if self._key_lease.get(key) == lease:
                    del self._key_lease[key]
        return state

    def attach(self, key: str, lease: int) -> None:
        self.detach(key)
        if lease:
            self._leases[lease].members[key] = None
            self._key_lease[key] = lease

    def detach(self, key: str) -> None:
        old = self._key_lease.pop(key, None)
        if old is not None:
            state = self._leases.get(old)
            if state is not None:
                state.members.pop(key, None)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, lease = heap[0]
            state = self._leases.get(lease)
            if state is not None and state.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def expired(self, now: float) -> list[int]:
        out: list[int] = []
        seen: set[int] = set()
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, lease = heapq.heappop(heap)
            state = self._leases.get(lease)
            # A renewal that kept the same deadline leaves two equal entries.
            if state is not None and state.deadline == deadline and lease not in seen:
                seen.add(lease)
                out.append(lease)
        return out

    def _rebuild_heap(self) -> None:
        self._heap = [(s.deadline, s.id) for s in self._leases.values()]
        heapq.heapify(self._heap)
