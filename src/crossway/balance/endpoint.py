"""Endpoints, the balancer interface, and call handles.

Theory of operation
-------------------
A balancer is a pure decision object. The caller owns the endpoint set (from
discovery), the clock and the I/O; the balancer only answers "which endpoint
next?". Every balancer in this package offers the same four methods, so they
stack (`ZoneAware` wraps any of them) and a proxy or SDK drives them all with
the same code:

    balancer.update(endpoints)        # membership changed (discovery event)
    balancer.set_ejected(ids)         # outlier detector's current verdict
    ep = balancer.pick(key)           # per request; key only matters to hash balancers
    with balancer.begin(ep) as call:  # load-aware balancers count it and time it
        ...                           # do the request; an exception marks it failed

Rebuilding (rings, tables, schedules) happens in `update`/`set_ejected`,
never in `pick`.

Failure and cancellation: nothing here blocks, awaits or does I/O, so there
is nothing to cancel or time out. `pick` never raises; it returns None when
there is nothing to pick. Configuration mistakes raise `InvalidArgument`.

Invariants
----------
- An `Endpoint` is an immutable value; its `id` is its identity. Per-endpoint
  state (pending count, latency estimate) is keyed on `id` and survives
  `update` for endpoints that stay.
- A `Call` ends exactly once: a second `end()` is ignored, so pending counts
  cannot go negative however the caller's error handling nests, and a call
  dropped without `end()` ends when it is collected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Protocol, runtime_checkable

from crossway.core.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of an upstream service, as a balancer sees it.

    `weight` is relative capacity (an integer >= 1, like Envoy's
    load_balancing_weight); `healthy` is the active health-check verdict from
    discovery, separate from outlier ejection; `zone` drives `ZoneAware`.
    """

    id: str
    address: str
    port: int
    weight: int = 1
    zone: str = ""
    healthy: bool = True
    # Excluded from the hash: dicts are unhashable, and id/address already identify.
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidArgument("endpoint id must not be empty")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise InvalidArgument(f"endpoint {self.id}: weight must be an integer >= 1")
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"endpoint {self.id}: port {self.port} out of range")
        # A read-only copy, so the value really is immutable.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def authority(self) -> str:
        """`address:port`, bracketing IPv6 literals."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class Call:
    """A request in flight to one endpoint, as seen by a balancer.

    Use as a context manager, or call `end()` in a `finally`. Ending records
    the elapsed time; leaving the `with` block by any exception, including
    cancellation, ends the call as failed (the time spent still counts as an
    observation of that endpoint). A call that is garbage-collected without
    being ended is ended then, as failed, so a forgotten call cannot leave its
    endpoint looking busy forever.
    """

    __slots__ = ("_load", "_open", "_start")

    def __init__(self, load: _LoadSink | None, start: float) -> None:
        self._load = load
        self._start = start
        self._open = load is not None

    @property
    def start(self) -> float:
        return self._start

    def end(self, *, ok: bool = True, now: float | None = None) -> None:
        """Finish the call; idempotent. `now` defaults to the balancer's clock."""
        if not self._open:
            return
        self._open = False
        load = self._load
        assert load is not None
        load.finish(self._start, now, ok)

    def __del__(self) -> None:
        # A call dropped without end() would count as in flight forever and
        # skew load-aware picks away from its endpoint; end it as failed, as
        # Linkerd does when a response future is dropped. Never raise here.
        if self._open:
            with suppress(Exception):
                self.end(ok=False)

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(ok=exc_type is None)


class _LoadSink(Protocol):
    def finish(self, start: float, now: float | None, ok: bool) -> None: ...


# Balancers that track no load hand out this one shared, already-ended call.
NO_CALL = Call(None, 0.0)


@runtime_checkable
class Balancer(Protocol):
    """The shape every balancer here has; see the module header."""

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the endpoint set. Raises InvalidArgument on duplicate ids."""
        ...

    def set_ejected(self, ids: Iterable[str]) -> None:
        """Exclude these endpoint ids (outlier ejection) until told otherwise."""
        ...

    def pick(self, key: bytes | str | None = None) -> Endpoint | None:
        """The endpoint for the next request, or None when the set is empty."""
        ...

    def begin(self, endpoint: Endpoint, now: float | None = None) -> Call:
        """Record that a request to `endpoint` starts now; end the returned call."""
        ...
