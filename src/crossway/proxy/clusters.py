# Upstream clusters: each backend service's endpoints and its balancers.
#
# Theory of operation
# -------------------
# A `Cluster` is one service as the gateway sees it: the endpoint set from
# discovery and one balancer per balancing policy that routes ask for (two
# routes to the same service may balance differently). Discovery calls
# `Clusters.update(service, endpoints)` whenever the set changes; each
# balancer rebuilds then, never per request (balance/endpoint.py).
#
# Each cluster also runs an `OutlierDetector` (Envoy's outlier detection):
# the engine records every attempt's outcome, and when the ejected set
# changes — on a record, or when an ejection expires, noticed on the next
# pick — every balancer of the cluster is told (`set_ejected`). The
# detector's settings come from the service's call policy (`outlier`, see
# crossway.traffic.policy; `Clusters.set_policies`): a service without a
# policy keeps the detector's defaults, a policy with `outlier: null` turns
# ejection off, and a changed setting starts a fresh detector (ejections
# under the old setting end).
#
# Pure: no I/O, no event loop. The clock feeds the load-aware balancers'
# latency estimates and the ejection times.
#
# Invariants
# ----------
# - A balancer created after endpoints arrived starts with the current set.
# - `pick` never raises for an unknown service; it answers None, and the
#   engine turns that into 503 `no_healthy_upstream`.
from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from crossway.balance import (
    Balancer,
    Endpoint,
    LeastRequest,
    Maglev,
    Outcome,
    OutlierConfig,
    OutlierDetector,
    PeakEwma,
    RingHash,
    SmoothWeighted,
)
from crossway.core.clock import Clock
from crossway.traffic.policy import DEFAULT_NAME, CallPolicy, outlier_config


def make_balancer(name: str, *, clock: Clock, rng: random.Random | None = None) -> Balancer:
    """The balancer a route names (`round_robin` honours instance weights)."""
    if name == "least_request":
        return LeastRequest(rng=rng)
    if name == "peak_ewma":
        return PeakEwma(clock=clock, rng=rng)
    if name == "ring_hash":
        return RingHash()
    if name == "maglev":
        return Maglev()
    return SmoothWeighted()


class Cluster:
    """One backend service: endpoints and a balancer per policy name."""

    __slots__ = (
        "_balancers",
        "_clock",
        "_ejected",
        "endpoints",
        "max_connections",
        "name",
        "outlier",
    )

    def __init__(self, name: str, *, clock: Clock, outlier: OutlierConfig | None = None) -> None:
        self.name = name
        self._clock = clock
        self.endpoints: tuple[Endpoint, ...] = ()
        self._balancers: dict[str, Balancer] = {}
        self.outlier: OutlierDetector | None = OutlierDetector(outlier, clock=clock)
        self._ejected: frozenset[str] = frozenset()
        self.max_connections: int | None = None
        """Open connections per endpoint from the call policy (None: the pool's)."""

    def configure_outlier(self, config: OutlierConfig | None, *, enabled: bool = True) -> None:
        """Detect outliers with `config` (None: the defaults), or not at all
        when not `enabled`; a new setting starts with nobody ejected."""
        current = self.outlier
        if not enabled:
            self.outlier = None
        elif current is None or current.config != (config or OutlierConfig()):
            self.outlier = OutlierDetector(config, clock=self._clock)
            self.outlier.update(self.endpoints)
        else:
            return
        self._sync_ejected()

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        if self.outlier is not None:
            self.outlier.update(self.endpoints)
        for balancer in self._balancers.values():
            balancer.update(self.endpoints)
        self._sync_ejected()

    def balancer(self, policy: str) -> Balancer:
        balancer = self._balancers.get(policy)
        if balancer is None:
            balancer = make_balancer(policy, clock=self._clock)
            balancer.update(self.endpoints)
            balancer.set_ejected(self._ejected)
            self._balancers[policy] = balancer
        return balancer

    def pick(
        self, policy: str, key: bytes | str | None = None, now: float | None = None
    ) -> Endpoint | None:
        """`now` (the clock's time, read by the caller) saves a clock read."""
        outlier = self.outlier
        # An ejection may have expired (`record` and `update` sync themselves).
        if outlier is not None and (now is None or now >= outlier.next_change):
            self._sync_ejected(now)
        balancer = self._balancers.get(policy)
        if balancer is None:
            balancer = self.balancer(policy)
        return balancer.pick(key)

    def record(self, endpoint_id: str, outcome: Outcome, now: float | None = None) -> None:
        """One attempt's outcome, for outlier detection; `now` as in `pick`."""
        outlier = self.outlier
        if outlier is not None:
            if now is None:
                now = self._clock.now()
            due = now >= outlier.next_change
            outlier.record(endpoint_id, outcome, now)
            if due or outcome is not Outcome.SUCCESS:  # a success ejects nobody
                self._sync_ejected(now)

    def _sync_ejected(self, now: float | None = None) -> None:
        ejected = self.outlier.ejected(now) if self.outlier is not None else _NONE
        if ejected is self._ejected:
            return  # the detector hands out the same object while unchanged
        self._ejected = ejected
        for balancer in self._balancers.values():
            balancer.set_ejected(ejected)

    def describe(self) -> dict[str, Any]:
        """For the admin port's /clusters page."""
        return {
            "name": self.name,
            "balancers": sorted(self._balancers),
            "endpoints": [
                {
                    "id": e.id,
                    "address": e.authority,
                    "weight": e.weight,
                    "zone": e.zone,
                    "healthy": e.healthy,
                    "ejected": e.id in self._ejected,
                }
                for e in self.endpoints
            ],
        }


_NONE: frozenset[str] = frozenset()


class Clusters:
    """Every backend service the configuration names."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._clusters: dict[str, Cluster] = {}
        self._policies: Mapping[str, CallPolicy] = {}

    def cluster(self, service: str) -> Cluster:
        cluster = self._clusters.get(service)
        if cluster is None:
            cluster = Cluster(service, clock=self._clock)
            self._configure(cluster)
            self._clusters[service] = cluster
        return cluster

    def set_policies(self, policies: Mapping[str, CallPolicy]) -> None:
        """Take each service's outlier settings and connection cap from its
        call policy (its own, else `default`); once per configuration swap."""
        self._policies = policies
        for cluster in self._clusters.values():
            self._configure(cluster)

    def _configure(self, cluster: Cluster) -> None:
        policies = self._policies
        policy = policies.get(cluster.name) or policies.get(DEFAULT_NAME)
        cluster.max_connections = policy.max_connections if policy is not None else None
        if policy is None:
            cluster.configure_outlier(None)
        elif policy.outlier is None:
            cluster.configure_outlier(None, enabled=False)
        else:
            cluster.configure_outlier(outlier_config(policy.outlier))

    def update(self, service: str, endpoints: Iterable[Endpoint]) -> None:
        self.cluster(service).update(endpoints)

    def pick(
        self, service: str, policy: str, key: bytes | str | None = None, now: float | None = None
    ) -> Endpoint | None:
        cluster = self._clusters.get(service)
        if cluster is None:
            return None
        return cluster.pick(policy, key, now)

    def all(self) -> list[Cluster]:
        return [self._clusters[name] for name in sorted(self._clusters)]
