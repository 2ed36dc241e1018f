"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.

Theory of operation
-------------------
A lookup table of M slots (M prime, 65,537 by default as in Envoy) maps
`hash(key) % M` to an endpoint: one hash and one index per pick, unlike the
ring's binary search.

Each endpoint gets a preference list, a permutation of the slots:
slot_j = (offset + j * skip) mod M, with offset = h1(id) mod M and
skip = h2(id) mod (M - 1) + 1. As M is prime, every skip in 1..M-1 visits
every slot once. The table is filled in rounds: in each round every endpoint
claims its next preferred slot that is still empty, until the table is full.
Equal weights give each endpoint M/N slots, +-1. For weights, an endpoint
earns weight/max_weight of a turn per round and claims a slot for each whole
turn earned, so slot counts follow the weights.

Because each endpoint's preferences do not depend on the others, removing one
mostly hands its own slots to others and leaves the rest alone: about 1/N of
keys move, slightly more than a ring (the paper's trade of a little
disruption for perfect balance and O(1) lookups).

Building costs O(M log M) steps in pure Python: tens of milliseconds for
M = 65,537, paid only on `update`/`set_ejected`, never on a pick. Pass a
smaller prime `table_size` for very frequent membership churn.

Invariants
----------
- Endpoints are filled in id order, so the table depends only on the active
  ids and weights, not on the order `update` received them.
- Every slot is owned once the table is built (or the table is empty).
"""

from __future__ import annotations

import random
from math import isqrt

from crossway.balance._hashing import hash64, hash64_pair
from crossway.balance._pool import DEFAULT_PANIC_THRESHOLD, PoolBase
from crossway.balance.endpoint import NO_CALL, Call, Endpoint
from crossway.core.errors import InvalidArgument

DEFAULT_TABLE_SIZE = 65_537


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, isqrt(n) + 1))


def _permutation(endpoint_id: str, size: int) -> tuple[int, int]:
    """(offset, skip) of this endpoint's preference list."""
    h1, h2 = hash64_pair(endpoint_id)
    return h1 % size, h2 % (size - 1) + 1


def build_table(endpoints: list[Endpoint], size: int) -> list[int]:
    """Slot -> index into `endpoints`, filled as the module header says."""
    table = [-1] * size
    prefs = [_permutation(e.id, size) for e in endpoints]
    nxt = [offset for offset, _ in prefs]
    top = max(e.weight for e in endpoints)
    share = [e.weight / top for e in endpoints]
    credit = [0.0] * len(endpoints)
    filled = 0
    while True:
        for i, (_, skip) in enumerate(prefs):
            credit[i] += share[i]
            while credit[i] >= 1.0:
                credit[i] -= 1.0
                slot = nxt[i]
                while table[slot] >= 0:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = i
                nxt[i] = slot + skip - size if slot + skip >= size else slot + skip
                filled += 1
                if filled == size:
                    return table


class Maglev(PoolBase):
    """Maglev lookup-table hashing, weighted; see the module header."""

    __slots__ = ("_owners", "_rng", "_size", "_table")

    def __init__(
        self,
        *,
        table_size: int = DEFAULT_TABLE_SIZE,
        healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        if not is_prime(table_size):
            raise InvalidArgument(f"Maglev table_size must be prime, not {table_size}")
        super().__init__(healthy_panic_threshold=healthy_panic_threshold)
        self._size = table_size
        self._rng = rng or random.Random()
        self._table: list[Endpoint] = []

    @property
    def table_size(self) -> int:
        return self._size

    def slot_counts(self) -> dict[str, int]:
        """Slots owned by each active endpoint id (for inspection and tests)."""
        counts = {e.id: 0 for e in self._active}
        for endpoint in self._table:
            counts[endpoint.id] += 1
        return counts

    def _rebuild(self, active: tuple[Endpoint, ...]) -> None:
        if not active:
            self._table = []
            return
        ordered = sorted(active, key=lambda e: e.id)
        self._table = [ordered[i] for i in build_table(ordered, self._size)]

    def pick(self, key: bytes | str | None = None) -> Endpoint | None:
        """The table's endpoint for `key`; a random slot without a key.

        None only when there are no active endpoints.
        """
        table = self._table
        if not table:
            return None
        if key is None:
            return table[self._rng.randrange(self._size)]
        return table[hash64(key) % self._size]

    def begin(self, endpoint: Endpoint, now: float | None = None) -> Call:
        return NO_CALL
