"""Membership, ejection and panic, shared by every balancer.

Theory of operation
-------------------
A balancer knows two sets: the *members* (everything discovery returned) and
the *active* subset it actually balances over. An endpoint is *available* when
it is `healthy` (active health checks) and not ejected (outlier detection).
Normally active = available. When the available share of members falls below
the healthy panic threshold (Envoy's healthy_panic_threshold, 50% by default),
the balancer *panics* and balances over all members instead: with most hosts
marked bad, the marks are more likely wrong (a bad health check, a shared
dependency down) than right, and concentrating all traffic on the few left
would overload them too.

Subclasses provide two hooks: `_sync(members)` keeps per-endpoint state (keyed
on id, so it survives updates for endpoints that stay) and `_rebuild(active)`
recomputes rings/tables/schedules. Both run only on `update`/`set_ejected`,
and `_rebuild` only when the active set really changed (subclasses start
with structures valid for the empty set).

Invariants
----------
- Member ids are unique (`update` rejects duplicates before changing anything).
- `_active` is either the available members, in member order, or (in panic)
  all members; it is empty only when there are no members, or when nothing is
  available and panic is disabled (threshold 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from crossway.balance.endpoint import Endpoint
from crossway.core.errors import InvalidArgument

DEFAULT_PANIC_THRESHOLD = 50.0


def check_members(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """The endpoints as a tuple; InvalidArgument on a duplicate id."""
    members = tuple(endpoints)
    seen: set[str] = set()
    for endpoint in members:
        if endpoint.id in seen:
            raise InvalidArgument(f"duplicate endpoint id {endpoint.id!r}")
        seen.add(endpoint.id)
    return members


def check_panic_threshold(percent: float) -> float:
    if not 0.0 <= percent <= 100.0:
        raise InvalidArgument(f"healthy_panic_threshold must be within 0..100, not {percent}")
    return float(percent)


def select_active(
    members: Sequence[Endpoint], ejected: frozenset[str], panic_threshold: float
) -> tuple[tuple[Endpoint, ...], bool]:
    """(active endpoints, panicking) for these members, as the module header says."""
    available = tuple(e for e in members if e.healthy and e.id not in ejected)
    if len(available) == len(members):
        return available, False
    if panic_threshold > 0 and len(available) * 100.0 < panic_threshold * len(members):
        return tuple(members), True
    return available, False


def as_frozenset(ids: Iterable[str]) -> frozenset[str]:
    return ids if isinstance(ids, frozenset) else frozenset(ids)


class PoolBase:
    """Base of the balancers: membership, ejection, panic; see the module header."""

    __slots__ = ("_active", "_ejected", "_members", "_panic", "_panic_threshold")

    def __init__(self, *, healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD) -> None:
        self._panic_threshold = check_panic_threshold(healthy_panic_threshold)
        self._members: tuple[Endpoint, ...] = ()
        self._ejected: frozenset[str] = frozenset()
        self._active: tuple[Endpoint, ...] = ()
        self._panic = False

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every member, in the order `update` received them."""
        return self._members

    @property
    def active(self) -> tuple[Endpoint, ...]:
        """The endpoints picks currently choose from."""
        return self._active

    @property
    def panicking(self) -> bool:
        """True while too few endpoints are available and all members are used."""
        return self._panic

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the endpoint set; state of endpoints that stay is kept.

        Raises InvalidArgument on a duplicate id, leaving the balancer unchanged.
        """
        self._members = check_members(endpoints)
        self._sync(self._members)
        self._refresh()

    def set_ejected(self, ids: Iterable[str]) -> None:
        """Exclude these ids until the next call; cheap when nothing changed."""
        if ids is self._ejected:
            return
        ejected = as_frozenset(ids)
        if ejected != self._ejected:
            self._ejected = ejected
            self._refresh()
        else:
            # Remember the caller's object so the identity check hits next time.
            self._ejected = ejected

    def _refresh(self) -> None:
        active, self._panic = select_active(self._members, self._ejected, self._panic_threshold)
        # Equal endpoints compare equal field by field, so a repeated discovery
        # event or an ejection of a non-member rebuilds nothing.
        if active != self._active:
            self._active = active
            self._rebuild(active)

    def _sync(self, members: tuple[Endpoint, ...]) -> None:
        """Hook: keep per-endpoint state for these members, drop the rest."""

    def _rebuild(self, active: tuple[Endpoint, ...]) -> None:
        """Hook: recompute pick structures for this active set."""
        raise NotImplementedError
