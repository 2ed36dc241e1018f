"""Drives `SelfPreservation`: reads lease states, renews held leases, and
tells the API which instances are stale.

Runs every `interval` seconds. On the local backends the lease states come
from memory: the store returns only the leases that are lapsing (plus those
the policy holds), found in one pass over its lease table that allocates
nothing for a healthy lease, so a fleet of 100,000 costs about 1% of a core. On
etcd they are read with one TimeToLive call per lease, so the interval should
grow with the fleet there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from crossway.core.clock import Clock, SystemClock
from crossway.registry.catalog import Catalog
from crossway.registry.preservation import (
    LAPSE_FRACTION,
    Decision,
    LeaseView,
    PreservationSettings,
    SelfPreservation,
)
from crossway.store import LeaseNotFound, Store

log = logging.getLogger("crossway.registry")


class PreservationGuard:
    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        *,
        clock: Clock | None = None,
        settings: PreservationSettings | None = None,
        interval: float = 1.0,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._clock = clock or SystemClock()
        self.policy = SelfPreservation(settings or PreservationSettings())
        self.interval = interval
        self.last = Decision(False, [], set(), 0, 0)
        self._task: asyncio.Task[None] | None = None

    @property
    def engaged(self) -> bool:
        return self.last.engaged

    def is_stale(self, lease_text: str | None) -> bool:
        if not lease_text or not self.last.stale:
            return False
        return int(lease_text, 16) in self.last.stale

    def lift(self) -> None:
        self.policy.lift()
        self.last = Decision(False, [], set(), self.last.lapsing, self.last.total)
        log.warning("self-preservation lifted by an operator; lapsing instances will expire")

    async def run_once(self) -> Decision:
        views, total = await self._lease_views()
        was_engaged = self.policy.engaged
        decision = self.policy.evaluate(views, self._clock.now(), total=total)
        for lease in decision.renew:
            with contextlib.suppress(LeaseNotFound):
                await self._store.keepalive(lease)
        if decision.engaged and not was_engaged:
            log.warning(
                "self-preservation engaged: %d of %d leases lapsing at once; "
                "expiry paused, instances kept and marked stale",
                decision.lapsing,
                decision.total,
            )
        elif was_engaged and not decision.engaged:
            log.warning("self-preservation disengaged: renewals recovered")
        self.last = decision
        return decision

    async def _lease_views(self) -> tuple[list[LeaseView], int]:
        """The views the policy needs and the number of leases in the fleet."""
        leases = self._catalog.leases
        expiring = getattr(self._store, "expiring_leases", None)
        snapshot = getattr(self._store, "lease_snapshot", None)
        if expiring is not None and snapshot is not None:
            horizon = self.policy.settings.horizon
            found = expiring(leases, within=horizon, fraction=LAPSE_FRACTION)
            seen = {lease for lease, _, _ in found}
            found += snapshot({lease for lease in self.policy.held if lease not in seen})
            return [LeaseView(lid, ttl, rem) for lid, ttl, rem in found], len(leases)
        views = []
        for lease in list(leases):
            try:
                info = await self._store.lease_info(lease)
            except LeaseNotFound:
                continue
            views.append(LeaseView(lease, info.ttl, info.remaining))
        return views, len(views)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("self-preservation check failed: %s", exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
