"""Zone-aware routing: stay in the local zone, spill over when it is short.

Theory of operation
-------------------
Cross-zone traffic costs latency and money, so a caller prefers endpoints in
its own zone, but only while that zone can take its share of the load. This is
Envoy's zone-aware routing, stated in capacity (sum of weights):

- upstream[z]: zone z's share of the *available* upstream capacity;
- callers[z]: the share of callers that live in zone z (given, or by default
  assumed to be spread like the upstream's full, configured capacity).

If upstream[local] >= callers[local] the local zone can absorb all local
traffic: route everything locally. Otherwise route the fraction
upstream[local] / callers[local] locally and spill the rest to the zones with
spare capacity, in proportion to their residual upstream[z] - callers[z]. When
every caller does the same, each endpoint ends up with the same load.

Zone preference is switched off, and traffic spread over all zones by
available capacity, when the cluster is smaller than `min_cluster_size`
(6, as in Envoy), or when the whole cluster is in panic (fewer available than
`healthy_panic_threshold` percent: then all members are used, by capacity).

Each zone is balanced by its own inner balancer, made by the `inner` factory
(any balancer of this package), which receives the zone's members and the
ejected ids and applies its own per-zone panic rule. A keyed pick derives the
zone choice from a (salted) hash of the key, so hash balancers stay consistent.

Invariants
----------
- Routing fractions are recomputed only on `update`/`set_ejected`.
- `begin` goes to the inner balancer of the endpoint's zone, so per-endpoint
  load state lives in exactly one place.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping

from crossway.balance._hashing import hash64, key_bytes
from crossway.balance._pool import (
    DEFAULT_PANIC_THRESHOLD,
    as_frozenset,
    check_members,
    check_panic_threshold,
    select_active,
)
from crossway.balance.endpoint import NO_CALL, Balancer, Call, Endpoint
from crossway.core.errors import InvalidArgument

# 53 bits of the key hash make a float uniform in [0, 1) exactly (never 1.0).
_TWO_53 = float(1 << 53)


def _shares(capacity: Mapping[str, float]) -> dict[str, float]:
    total = sum(capacity.values())
    return {z: (c / total if total else 0.0) for z, c in capacity.items()}


def _capacity(endpoints: Iterable[Endpoint]) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in endpoints:
        out[e.zone] = out.get(e.zone, 0.0) + e.weight
    return out


def route_fractions(
    local: str, available: Mapping[str, float], callers: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """(fraction kept local, spill weights of other zones), as in the module header."""
    upstream = _shares(available)
    here = upstream.get(local, 0.0)
    wanted = callers.get(local, 0.0)
    if here > 0 and here >= wanted:
        return 1.0, {}
    keep = here / wanted if wanted > 0 else 0.0
    others = {z: s for z, s in upstream.items() if z != local and s > 0}
    residual = {z: s - callers.get(z, 0.0) for z, s in others.items()}
    residual = {z: r for z, r in residual.items() if r > 0}
    return keep, residual or others


class ZoneAware:
    """Prefer `local_zone`, spill over by residual capacity; see the module header."""

    __slots__ = (
        "_callers",
        "_cum",
        "_ejected",
        "_factory",
        "_inners",
        "_keep",
        "_local",
        "_members",
        "_min_cluster",
        "_panic",
        "_panic_threshold",
        "_rng",
        "_zones",
    )

    def __init__(
        self,
        *,
        local_zone: str,
        inner: Callable[[], Balancer],
        caller_zones: Mapping[str, float] | None = None,
        min_cluster_size: int = 6,
        healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        if caller_zones is not None and any(v < 0 for v in caller_zones.values()):
            raise InvalidArgument("caller_zones weights must not be negative")
        self._local = local_zone
        self._factory = inner
        self._callers = dict(caller_zones) if caller_zones else None
        self._min_cluster = min_cluster_size
        self._panic_threshold = check_panic_threshold(healthy_panic_threshold)
        self._rng = rng or random.Random()
        self._members: tuple[Endpoint, ...] = ()
        self._ejected: frozenset[str] = frozenset()
        self._inners: dict[str, Balancer] = {}
        self._panic = False
        self._keep = 0.0
        self._zones: list[str] = []
        self._cum: list[float] = []

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._members

    @property
    def panicking(self) -> bool:
        return self._panic

    @property
    def local_fraction(self) -> float:
        """The share of unkeyed picks that currently stay in the local zone."""
        return self._keep

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the endpoint set (InvalidArgument on duplicate ids, nothing changed)."""
        self._members = check_members(endpoints)
        by_zone: dict[str, list[Endpoint]] = {}
        for e in self._members:
            by_zone.setdefault(e.zone, []).append(e)
        self._inners = {z: self._inners.get(z) or self._new_inner() for z in by_zone}
        for zone, eps in by_zone.items():
            self._inners[zone].update(eps)
        self._reroute()

    def _new_inner(self) -> Balancer:
        inner = self._factory()
        inner.set_ejected(self._ejected)
        return inner

    def set_ejected(self, ids: Iterable[str]) -> None:
        """Exclude these ids, in the zone choice and in every inner balancer."""
        if ids is self._ejected:
            return
        ejected = as_frozenset(ids)
        changed = ejected != self._ejected
        self._ejected = ejected
        if changed:
            for inner in self._inners.values():
                inner.set_ejected(ejected)
            self._reroute()

    def _reroute(self) -> None:
        active, self._panic = select_active(self._members, self._ejected, self._panic_threshold)
        available = _capacity(active)
        if self._panic or len(self._members) < self._min_cluster:
            keep, spill = 0.0, available
        else:
            callers = self._callers or _shares(_capacity(self._members))
            keep, spill = route_fractions(self._local, available, _shares(callers))
        self._keep = keep
        self._zones = sorted(spill)
        running, self._cum = 0.0, []
        for zone in self._zones:
            running += spill[zone]
            self._cum.append(running)

    def _zone_for(self, u: float) -> str | None:
        if u < self._keep:
            return self._local
        if not self._cum:
            return None
        # Rescale the same uniform so a keyed pick stays a function of its key.
        v = (u - self._keep) / (1.0 - self._keep) * self._cum[-1]
        return self._zones[min(bisect_right(self._cum, v), len(self._zones) - 1)]

    @staticmethod
    def _key_uniform(key: bytes | str) -> float:
        # A separately salted hash: the inner hash balancer places the key by
        # hash64(key), and reusing it here would send each zone only the keys
        # of one slice of the ring.
        return (hash64(key_bytes(key) + b"#zone") >> 11) / _TWO_53

    def pick(self, key: bytes | str | None = None) -> Endpoint | None:
        """An endpoint from the zone the routing fractions choose.

        Falls back to any zone when the chosen one has nothing to offer; None
        when no zone does, or when nothing is available and panic is disabled.
        """
        u = self._rng.random() if key is None else self._key_uniform(key)
        zone = self._zone_for(u)
        if zone is None:  # nothing available and panic disabled
            return None
        inner = self._inners.get(zone)
        chosen = inner.pick(key) if inner is not None else None
        if chosen is not None:
            return chosen
        for other in self._inners.values():
            chosen = other.pick(key)
            if chosen is not None:
                return chosen
        return None

    def begin(self, endpoint: Endpoint, now: float | None = None) -> Call:
        """Delegated to the inner balancer of the endpoint's zone."""
        inner = self._inners.get(endpoint.zone)
        return inner.begin(endpoint, now) if inner is not None else NO_CALL
