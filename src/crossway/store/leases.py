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
3. Deadlines live in a heap, updated lazily: every lease has at least one
   entry at or before its deadline. A renewal only moves the deadline later
   and touches no entry (O(1): heartbeats are most of the traffic); an entry
   that surfaces before its lease's deadline is moved to that deadline (a
   renewal that moves a postponed deadline earlier adds an entry), and
   one of a lease that is gone is dropped. A lease renewed every ttl/3 costs
   one heap move per TTL instead of a push and a pop per renewal, and the
   heap stays about one entry per lease.
4. Each lease has a slot; `_deadlines[slot]` mirrors its deadline (+inf for a
   free slot). `expiring` filters that flat array at C speed instead of
   visiting 100,000 objects scattered in memory every second.
5. A `LeaseState` is invisible to Python's cyclic garbage collector (a
   `gc=False` struct whose keys are a dict of strings, which the collector
   does not track either): a table of 100,000 leases adds nothing to the
   pause of a full collection. It holds no reference that could form a cycle.
"""

from __future__ import annotations

import heapq
import math
import secrets
from array import array
from collections.abc import Container, KeysView
from itertools import compress, count

import msgspec


class LeaseState(msgspec.Struct, gc=False):
    id: int
    ttl: float
    deadline: float
    slot: int = 0
    members: dict[str, None] = {}
    """The keys bound to the lease, as an ordered set (see invariant 5)."""

    @property
    def keys(self) -> KeysView[str]:
        return self.members.keys()


class LeaseTable:
    __slots__ = ("_deadlines", "_free", "_heap", "_ids", "_key_lease", "_leases", "_max_ttl")

    def __init__(self) -> None:
        self._leases: dict[int, LeaseState] = {}
        self._key_lease: dict[str, int] = {}
        self._heap: list[tuple[float, int]] = []
        self._deadlines = array("d")  # by slot (invariant 4)
        self._ids = array("q")  # lease id by slot, 0 when free
        self._free: list[int] = []
        self._max_ttl = 0.0  # never lowered: a bound, not a statistic

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
        old = self._leases.get(lease)
        slot = old.slot if old is not None else self._take_slot()
        state = LeaseState(lease, ttl, now + ttl, slot)
        self._leases[lease] = state
        self._deadlines[slot], self._ids[slot] = state.deadline, lease
        self._max_ttl = max(self._max_ttl, ttl)
        self._push(state.deadline, lease)
        return state

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        self._deadlines.append(math.inf)
        self._ids.append(0)
        return len(self._deadlines) - 1

    def get(self, lease: int) -> LeaseState | None:
        return self._leases.get(lease)

    def ids(self) -> list[int]:
        return list(self._leases)

    def expiring(
        self, now: float, *, within: float, fraction: float, among: Container[int]
    ) -> list[LeaseState]:
        """The states of the leases in `among` that have less than
        min(ttl * fraction, within) left at `now`.

        Only leases whose deadline is before now + min(longest TTL * fraction,
        within) can qualify; the deadline array is filtered for those at C
        speed (invariant 4), so a healthy fleet of 100,000 costs a few
        milliseconds: callers run this every second."""
        # A hair beyond the bound, so rounding never hides a lease from the
        # exact test below.
        limit = now + min(self._max_ttl * fraction, within) + 1e-6
        ids, leases = self._ids, self._leases
        out: list[LeaseState] = []
        for slot in compress(count(), map(limit.__gt__, self._deadlines)):
            state = leases.get(ids[slot])
            if state is None:
                continue
            remaining = state.deadline - now
            if remaining < within and remaining < state.ttl * fraction and state.id in among:
                out.append(state)
        return out

    def renew(self, lease: int, now: float) -> LeaseState | None:
        state = self._leases.get(lease)
        if state is None:
            return None
        deadline = now + state.ttl
        earlier = deadline < state.deadline  # only after a postpone beyond one TTL
        state.deadline = self._deadlines[state.slot] = deadline
        if earlier:
            self._push(deadline, lease)  # keep invariant 3
        return state

    def postpone(self, lease: int, deadline: float) -> None:
        """Expire `lease` again at `deadline` (after a revoke that could not be
        written, say)."""
        state = self._leases.get(lease)
        if state is not None:
            state.deadline = self._deadlines[state.slot] = deadline
            self._push(deadline, lease)

    def remove(self, lease: int) -> LeaseState | None:
        state = self._leases.pop(lease, None)
        if state is not None:
            self._deadlines[state.slot], self._ids[state.slot] = math.inf, 0
            self._free.append(state.slot)
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
        """When `expired` may next have something to do: at or before the
        earliest deadline of any lease (an entry of a lease renewed since only
        moves when that time comes, in `expired`). None without leases."""
        heap = self._heap
        while heap:
            deadline, lease = heap[0]
            state = self._leases.get(lease)
            if state is not None and state.deadline >= deadline:
                return deadline
            heapq.heappop(heap)  # gone, or a spare entry (postpone) after its deadline
        return None

    def expired(self, now: float) -> list[int]:
        out: list[int] = []
        seen: set[int] = set()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, lease = heapq.heappop(heap)
            state = self._leases.get(lease)
            if state is None or lease in seen:
                continue
            if state.deadline <= now:
                seen.add(lease)
                out.append(lease)
            else:
                heapq.heappush(heap, (state.deadline, lease))  # renewed since the entry was made
        return out

    def _push(self, deadline: float, lease: int) -> None:
        """Add an entry for a lease whose state already has `deadline`."""
        # Spare entries (postponed leases) are dropped as they surface; should
        # they ever pile up, a rebuild leaves exactly one entry per lease.
        if len(self._heap) > 2 * len(self._leases) + 64:
            self._rebuild_heap()
        else:
            heapq.heappush(self._heap, (deadline, lease))

    def _rebuild_heap(self) -> None:
        self._heap = [(s.deadline, s.id) for s in self._leases.values()]
        heapq.heapify(self._heap)
