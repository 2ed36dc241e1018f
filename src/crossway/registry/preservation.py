"""Self-preservation: do not evict the registry when the network, not the
instances, is failing (Eureka's lesson).

When many instances stop renewing at once it is far more likely that the
control plane lost the network than that half the fleet died together.
Evicting them all would turn a blip into an outage for every caller, so
expiry pauses instead: the registry keeps those leases alive on the
instances' behalf, marks the instances stale, and lets them go only once
renewals recover (the ones still silent then expire normally) or an operator
lifts the protection.

Pure: the driver feeds it the lease states it read and the time, and carries
out the decision (renew these, mark those stale).

Rules
1. A lease is *lapsing* when its remaining time is below min(ttl/2, horizon):
   its holder has missed renewals (clients renew every ttl/3) and it will
   expire within the horizon (one minute by default).
2. Protection engages when lapsing leases number at least `min_leases` and
   are more than `share` of all leases; it disengages when they are no longer.
3. While engaged, a lapsing lease is *held*: renewed by us when it is about to
   expire. A held lease whose deadline moves past what our own renewal set
   was renewed by its holder: it has recovered and is no longer held.
4. An operator's lift disengages protection until the condition clears once;
   then it re-arms by itself.
5. A single instance that dies on its own never engages protection (rule 2),
   so it is removed normally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RECOVERY_SLACK = 0.25
LAPSE_FRACTION = 0.5
"""Rule 1's share of the TTL: a lease with less than this much of it left is lapsing."""


@dataclass(slots=True, frozen=True)
class LeaseView:
    id: int
    ttl: float
    remaining: float


@dataclass(slots=True, frozen=True)
class PreservationSettings:
    share: float = 0.5
    min_leases: int = 10
    horizon: float = 60.0
    renew_margin: float = 3.0


@dataclass(slots=True)
class Decision:
    engaged: bool
    renew: list[int]
    stale: set[int]
    lapsing: int
    total: int


@dataclass(slots=True)
class SelfPreservation:
    settings: PreservationSettings = field(default_factory=PreservationSettings)
    engaged: bool = False
    lifted: bool = False
    held: dict[int, float] = field(default_factory=dict)
    """lease -> the deadline our last renewal gave it."""

    def evaluate(
        self, leases: list[LeaseView], now: float, *, total: int | None = None
    ) -> Decision:
        """Decide from the lease states `leases` read at `now`.

        `leases` is either every lease of the fleet, or — with `total`, the
        size of the fleet — only those that are lapsing or held (the others
        cannot change the decision), so a large healthy fleet costs nothing
        here."""
        fleet = len(leases) if total is None else total
        self._forget_recovered(leases, now)
        lapsing = [v for v in leases if self._lapsing(v) or v.id in self.held]
        condition = (
            len(lapsing) >= self.settings.min_leases and len(lapsing) > self.settings.share * fleet
        )
        if not condition:
            self.lifted = False
        self.engaged = condition and not self.lifted
        if not self.engaged:
            self.held.clear()
            return Decision(False, [], set(), len(lapsing), fleet)
        renew = [v for v in lapsing if v.remaining <= self._margin(v)]
        for view in lapsing:
            self.held.setdefault(view.id, now + view.remaining)
        for view in renew:
            self.held[view.id] = now + view.ttl
        return Decision(True, [v.id for v in renew], set(self.held), len(lapsing), fleet)

    def lift(self) -> None:
        """An operator lifts protection: held leases expire normally."""
        self.lifted = True
        self.engaged = False
        self.held.clear()

    def _lapsing(self, view: LeaseView) -> bool:
        return view.remaining < min(view.ttl * LAPSE_FRACTION, self.settings.horizon)

    def _margin(self, view: LeaseView) -> float:
        return min(self.settings.renew_margin, view.ttl / 2)

    def _forget_recovered(self, leases: list[LeaseView], now: float) -> None:
        live = {v.id: v for v in leases}
        for lease_id, our_deadline in list(self.held.items()):
            view = live.get(lease_id)
            if view is None or now + view.remaining > our_deadline + RECOVERY_SLACK:
                del self.held[lease_id]
