"""Keep this process registered: register, heartbeat, re-register, deregister.

Theory of operation
- The instance is a key bound to a lease whose TTL is `settings.ttl`; the
  lease lives as long as a keepalive reaches the control plane at least once
  per TTL. `KeepalivePolicy` (pure: a clock and a random source in, the next
  step out) decides what to send and when; `Registrar` is the thin asyncio
  driver that sends it.
- Keepalives go through a `KeepaliveChannel` (crossway.sdk.keepalive_stream):
  a line on the one stream its client keeps open to the control plane, or a
  `PUT /v1/leases/{lease}/keepalive` where there is no stream (an older
  control plane, a test transport). Either way the answer means the same
  thing here, so everything below holds for both.
- Steady state: a keepalive every ttl/3, shortened by up to 20% of jitter so
  a fleet started together spreads out and a late timer never eats into the
  margin (two keepalives may be lost before the lease can expire).
- The control plane answers 404 `lease_not_found` when it has forgotten the
  lease — restarted on a memory store, the lease expired during a partition,
  etcd lost it, an operator deregistered the instance. The policy then
  registers again at once, under the same instance id.
- Unreachable (connection refused, timeout, 5xx): retry with capped
  exponential backoff (equal jitter, capped at ttl/3 so a lease still alive
  is renewed in time) until it answers; then carry on — a keepalive that
  finds the lease gone turns into a registration as above. One warning is
  logged when an outage starts and one line when it ends, never one per
  attempt.
- A registration the control plane refuses (4xx: bad settings, a wrong
  token) is logged once per distinct message and retried slowly: an operator
  may fix the cause (a token) without restarting the service.

Invariants
- At most one request is in flight per `Registrar`; the background task is
  created in `start()` (never at import or construction) and is cancelled and
  awaited by `stop()`, so no task outlives its client.
- The instance id never changes: a re-registration replaces the same key, so
  callers never see a duplicate of this process.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from crossway.core.clock import Clock, SystemClock
from crossway.registry.model import Instance
from crossway.resilience.backoff import Backoff, Jitter
from crossway.sdk.control import ControlPlane, ControlPlaneError, ControlPlaneUnavailable
from crossway.sdk.keepalive_stream import KeepaliveChannel
from crossway.sdk.settings import ClientSettings, InvalidSettings

log = logging.getLogger("crossway.sdk.registration")

JITTER = 0.2
"""Keepalive intervals are ttl/3 shortened by up to this share."""
REFUSED_RETRY = 30.0
"""Seconds between attempts while the control plane refuses the registration."""
DEREGISTER_TIMEOUT = 2.0


class Action(enum.Enum):
    REGISTER = "register"
    KEEPALIVE = "keepalive"


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    delay: float
    """Seconds from now until the action is due."""


class KeepalivePolicy:
    """Decides the next registration step; pure (see the module header)."""

    def __init__(
        self,
        ttl: float,
        *,
        clock: Clock | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.ttl = ttl
        self.clock = clock or SystemClock()
        self.rand = rand
        self.lease: str | None = None
        self.failures = 0
        self.outage_since: float | None = None
        self.refusal: str | None = None
        self.backoff = Backoff(base=0.2, cap=max(0.2, ttl / 3), jitter=Jitter.EQUAL)

    @property
    def interval(self) -> float:
        return self.ttl / 3

    def next_step(self) -> Step:
        action = Action.KEEPALIVE if self.lease is not None else Action.REGISTER
        if self.refusal is not None and action is Action.REGISTER:
            return Step(action, REFUSED_RETRY * (1 - JITTER * self.rand()))
        if self.failures:
            return Step(action, self.backoff.delay(self.failures - 1, rand=self.rand))
        if action is Action.REGISTER:
            return Step(action, 0.0)
        return Step(action, self.interval * (1 - JITTER * self.rand()))

    def registered(self, lease: str | None) -> float | None:
        """A registration succeeded; the outage's length in seconds if one ended."""
        self.lease = lease
        self.refusal = None
        return self._reachable()

    def renewed(self) -> float | None:
        """A keepalive succeeded; the outage's length in seconds if one ended."""
        return self._reachable()

    def lease_lost(self) -> float | None:
        """The control plane forgot the lease: register again now."""
        self.lease = None
        return self._reachable()

    def unreachable(self) -> bool:
        """A request failed to reach the control plane; True if an outage starts."""
        self.failures += 1
        if self.outage_since is not None:
            return False
        self.outage_since = self.clock.now()
        return True

    def refused(self, message: str) -> bool:
        """The registration was refused; True when this message is new (log it)."""
        self._reachable()
        new = message != self.refusal
        self.refusal = message
        return new

    def _reachable(self) -> float | None:
        self.failures = 0
        if self.outage_since is None:
            return None
        lasted = self.clock.now() - self.outage_since
        self.outage_since = None
        return lasted


def registration_body(settings: ClientSettings) -> dict[str, Any]:
    """The `PUT /v1/services/{service}/instances/{id}` body for these settings."""
    if settings.port is None:
        raise InvalidSettings("registering needs a port: set port= or CROSSWAY_PORT", field="port")
    body: dict[str, Any] = {
        "address": settings.address,
        "port": settings.port,
        "ttl": settings.ttl,
        "weight": settings.weight,
        "tags": list(settings.tags),
        "metadata": dict(settings.labels),
    }
    if settings.zone is not None:
        body["zone"] = settings.zone
    return body


class Registrar:
    """Registers one instance and keeps it registered; see the module header."""

    def __init__(
        self,
        control: ControlPlane,
        *,
        service: str,
        instance_id: str,
        body: Mapping[str, Any],
        ttl: float,
        clock: Clock | None = None,
        rand: Callable[[], float] = random.random,
        keepalives: KeepaliveChannel | None = None,
    ) -> None:
        """`keepalives` is the client's shared channel; without one, every
        keepalive is a PUT (a channel of this registrar's own, never streaming)."""
        self.control = control
        self.keepalives = keepalives or KeepaliveChannel(control, streaming=False, clock=clock)
        self.service = service
        self.instance_id = instance_id
        self.body = dict(body)
        self.policy = KeepalivePolicy(ttl, clock=clock, rand=rand)
        self.instance: Instance | None = None
        self.registrations = 0
        """Successful registrations so far (the first, then every re-registration)."""
        self._task: asyncio.Task[None] | None = None
        self._timeout = max(0.5, ttl / 3)

    @property
    def lease(self) -> str | None:
        return self.policy.lease

    async def start(self) -> None:
        """Register once, then keep the registration alive in the background.

        Raises `ControlPlaneError` when the control plane refuses the
        registration (bad settings, wrong token): a configuration error
        surfaces at start. An unreachable control plane does not fail start:
        the service boots, and the background task registers it as soon as
        the control plane answers. Cancelling start cancels the attempt and
        starts nothing.
        """
        if self._task is not None:
            raise RuntimeError("this registrar is already started")
        try:
            await self._register()
        except ControlPlaneUnavailable as exc:
            self._unreachable(exc)
        self._task = asyncio.create_task(self._run(), name=f"crossway-keepalive-{self.service}")

    async def stop(self, *, deregister: bool = True, timeout: float = DEREGISTER_TIMEOUT) -> None:
        """Cancel the background task, then deregister (best effort, at most
        `timeout` seconds; failures are logged, not raised). Safe to call
        twice. If `stop` itself is cancelled, the task has been cancelled
        already and ends on its own; the cancellation propagates at once and
        the instance is left to expire with its lease."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait(), not `await task`: a cancellation of this call must propagate,
            # not be mistaken for the task's own CancelledError and swallowed.
            await asyncio.wait({task})
        if deregister and self.instance is not None:
            self.instance = None
            await self._deregister(timeout)

    async def _run(self) -> None:
        while True:
            step = self.policy.next_step()
            await asyncio.sleep(step.delay)
            try:
                await self._perform(step.action)
            except Exception:
                # Never let the keepalive die silently: log and treat as an outage.
                log.exception("unexpected failure keeping %s registered", self.instance_id)
                self.policy.unreachable()

    async def _perform(self, action: Action) -> None:
        try:
            if action is Action.KEEPALIVE:
                await self._keepalive()
            else:
                await self._register()
        except ControlPlaneUnavailable as exc:
            self._unreachable(exc)
        except ControlPlaneError as exc:
            self._refused(action, exc)

    async def _register(self) -> None:
        path_id = f"{self.service}/{self.instance_id}"
        self.instance = await self.control.register(
            self.service, self.instance_id, self.body, timeout=self._timeout
        )
        self.registrations += 1
        self._recovered(self.policy.registered(self.instance.lease))
        if self.registrations == 1:
            log.info("registered %s (lease %s)", path_id, self.instance.lease)
        else:
            log.info("registered %s again (lease %s)", path_id, self.instance.lease)

    async def _keepalive(self) -> None:
        lease = self.policy.lease
        assert lease is not None
        await self.keepalives.renew(lease, timeout=self._timeout)
        self._recovered(self.policy.renewed())

    def _refused(self, action: Action, exc: ControlPlaneError) -> None:
        if action is Action.KEEPALIVE:
            # 404 lease_not_found is the usual case; any other refusal of a
            # keepalive also means the lease cannot be renewed: start over.
            log.info(
                "control plane forgot lease %s of %s (%s); registering again",
                self.policy.lease,
                self.instance_id,
                exc.code,
            )
            self._recovered(self.policy.lease_lost())
        elif self.policy.refused(exc.message):
            log.error("control plane refused to register %s: %s", self.instance_id, exc.message)

    def _unreachable(self, exc: ControlPlaneUnavailable) -> None:
        if self.policy.unreachable():
            log.warning("control plane unreachable, retrying in the background: %s", exc.message)

    def _recovered(self, outage: float | None) -> None:
        if outage is not None:
            log.warning("control plane reachable again after %.1fs", outage)

    async def _deregister(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.control.deregister(self.service, self.instance_id)
            log.info("deregistered %s/%s", self.service, self.instance_id)
        except (TimeoutError, ControlPlaneUnavailable, ControlPlaneError) as exc:
            log.warning("could not deregister %s: %s", self.instance_id, exc)
