"""Ring hash (ketama-style consistent hashing).

Theory of operation
-------------------
Each active endpoint is placed on a 64-bit ring at many points ("virtual
nodes"): the hashes of `"<id>_<i>"` for i in 0..count-1, with count
proportional to its weight. A key is hashed onto the ring and served by the
first point at or after it (wrapping around). When an endpoint leaves, only
the keys on its arcs move, each to the next point clockwise, spread over the
others; when one joins it takes arcs from all the others evenly. Either way
about 1/N of the keys move, the minimum possible.

How many points? Enough that arc lengths average out (the ring has at least
`min_ring_size` points, 1024 by default, as in Envoy), but the number per unit
of weight (the *scale*) must not change with every membership change: if it
did, every endpoint would gain or lose points and keys would move between
endpoints that are both still there. So the scale is sticky. It is chosen to
give about twice `min_ring_size` points and kept while the ring stays between
`min_ring_size` and 8 x `min_ring_size` (and `max_ring_size`); only outside
that band is it reset, a one-off reshuffle like a ketama rebuild.

Points per endpoint are cached by (id, count), so a rebuild after an ejection
only sorts; it does not rehash.

Invariants
----------
- The ring depends only on the active endpoints' ids and weights and on the
  scale, never on the order `update` received them: two clients with the same
  view agree on every key.
- Every active endpoint has at least one point.
"""

from __future__ import annotations

import random
from bisect import bisect_left

from crossway.balance._hashing import hash64
from crossway.balance._pool import DEFAULT_PANIC_THRESHOLD, PoolBase
from crossway.balance.endpoint import NO_CALL, Call, Endpoint
from crossway.core.errors import InvalidArgument

_UPPER_BAND = 8  # rescale when the ring exceeds this many times min_ring_size


class RingHash(PoolBase):
    """Consistent hashing on a ring of virtual nodes, weighted; see the module header."""

    __slots__ = ("_hashes", "_max", "_min", "_owners", "_points", "_rng", "_scale")

    def __init__(
        self,
        *,
        min_ring_size: int = 1024,
        max_ring_size: int = 8_388_608,
        healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= min_ring_size <= max_ring_size:
            raise InvalidArgument("need 1 <= min_ring_size <= max_ring_size")
        super().__init__(healthy_panic_threshold=healthy_panic_threshold)
        self._min = min_ring_size
        self._max = max_ring_size
        self._rng = rng or random.Random()
        self._scale = 0.0  # points per unit of weight; 0 until the first build
        self._hashes: list[int] = []
        self._owners: list[Endpoint] = []
        self._points: dict[str, list[int]] = {}

    @property
    def ring_size(self) -> int:
        return len(self._hashes)

    def _sync(self, members: tuple[Endpoint, ...]) -> None:
        ids = {e.id for e in members}
        self._points = {k: v for k, v in self._points.items() if k in ids}

    def _counts(self, active: tuple[Endpoint, ...], scale: float) -> list[int]:
        return [max(1, round(e.weight * scale)) for e in active]

    def _choose_scale(self, active: tuple[Endpoint, ...]) -> float:
        upper = min(self._max, _UPPER_BAND * self._min)
        if self._scale > 0:
            size = sum(self._counts(active, self._scale))
            if self._min <= size <= upper:
                return self._scale
        total_weight = sum(e.weight for e in active)
        target = min(2 * self._min, self._max)
        return max(target / total_weight, 1.0 / min(e.weight for e in active))

    def _points_of(self, endpoint: Endpoint, count: int) -> list[int]:
        cached = self._points.get(endpoint.id)
        if cached is None or len(cached) < count:
            start = 0 if cached is None else len(cached)
            extra = [hash64(f"{endpoint.id}_{i}") for i in range(start, count)]
            cached = (cached or []) + extra
            self._points[endpoint.id] = cached
        return cached[:count]

    def _rebuild(self, active: tuple[Endpoint, ...]) -> None:
        if not active:
            self._hashes, self._owners = [], []
            return
        self._scale = self._choose_scale(active)
        ring: list[tuple[int, str, Endpoint]] = []
        for endpoint, count in zip(active, self._counts(active, self._scale), strict=True):
            ring.extend((h, endpoint.id, endpoint) for h in self._points_of(endpoint, count))
        # Ties (64-bit collisions) break on id, so order of arrival never matters.
        ring.sort(key=lambda point: (point[0], point[1]))
        self._hashes = [point[0] for point in ring]
        self._owners = [point[2] for point in ring]

    def pick(self, key: bytes | str | None = None) -> Endpoint | None:
        """The owner of `key`'s position on the ring; a random point without a key.

        None only when there are no active endpoints.
        """
        hashes = self._hashes
        if not hashes:
            return None
        h = self._rng.getrandbits(64) if key is None else hash64(key)
        i = bisect_left(hashes, h)
        return self._owners[i if i < len(hashes) else 0]

    def begin(self, endpoint: Endpoint, now: float | None = None) -> Call:
        return NO_CALL
