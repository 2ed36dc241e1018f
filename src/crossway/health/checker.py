"""`HealthChecker`: the control plane's asyncio driver for active health checks.

Theory of operation
- The checker follows the `Catalog`: an initial scan at `start()` plus a
  catalog listener keep exactly one job per instance that carries a `Check`.
  A job is one task that sleeps until its `policy.wake_at`, probes, and
  records what the pure `StatusMachine` asks for. A changed check definition
  replaces the job (fresh schedule, fresh streaks); a removed instance, or one
  whose check was dropped, cancels it.
- Probes share one `asyncio.Semaphore` of `concurrency` slots, so a fleet of
  any size never has more than that many probes in flight. A probe's timeout
  starts once it holds a slot: waiting for a slot is not the endpoint's fault.
- A status or output change is written through `Registry.set_status`, which
  makes it a store event every watcher (discovery, the gateway, the
  dashboard) sees; nothing is written while the result is unchanged, so a
  steady fleet costs reads only. Each status transition is logged on
  "crossway.health" as one line: `service/id old→new output`.
- An instance that stays critical for its `deregister_after` is deregistered
  through `Registry.deregister`, and that is logged as a warning.
- The checker probes every instance it sees. In a cluster of control planes
  only one should run it (the server starts it under leader election);
  several would only probe redundantly, since writes of an unchanged
  status are skipped.

Invariants
1. At most one job (and one task) per instance; every task belongs to
   `_tasks` and is cancelled and awaited by `stop()`.
2. At most `concurrency` probes run at any moment.
3. A job's recorded status follows the store: it changes only after a write
   succeeded or when the catalog reports a status.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import format_duration
from crossway.core.errors import NotFound
from crossway.health.policy import (
    CheckTiming,
    Schedule,
    StatusMachine,
    Thresholds,
    Verdict,
    wake_at,
)
from crossway.health.probes import Prober, ProbeResult
from crossway.registry.catalog import Catalog
from crossway.registry.model import Check, Instance
from crossway.registry.registry import Registry

log = logging.getLogger("crossway.health")

DEREGISTER_RETRY = 1.0
"""Seconds between attempts when deregistering failed (for instance, the store was down)."""


@dataclass(slots=True)
class HealthStats:
    """Counters for export as metrics; they only grow, except the in-flight gauge."""

    checks: int = 0
    """Probes completed."""
    failures: int = 0
    """Probes whose result was warning or critical."""
    writes: int = 0
    """Status or output changes written to the store."""
    transitions: int = 0
    """Writes that changed the status itself."""
    write_errors: int = 0
    deregistrations: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    """The most probes ever in flight at once."""


@dataclass(slots=True, eq=False)
class _Job:
    service: str
    instance_id: str
    check: Check
    timing: CheckTiming
    schedule: Schedule
    machine: StatusMachine
    task: asyncio.Task[None] | None = None
    leaving: bool = False
    """Deregistering itself: the catalog's delete event must not cancel it."""
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{self.service}/{self.instance_id}"


class HealthChecker:
    """Runs every instance's active check; see the module header.

    `clock` must tell the same wall time as the registry's (both `SystemClock`
    in production): an instance's `status_since` is compared with it.
    """

    def __init__(
        self,
        registry: Registry,
        catalog: Catalog,
        *,
        clock: Clock | None = None,
        concurrency: int = 64,
        rng: random.Random | None = None,
        success_before_passing: int = 1,
        failures_before_critical: int = 1,
        prober: Prober | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._registry = registry
        self._catalog = catalog
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._thresholds = Thresholds(success_before_passing, failures_before_critical)
        self._slots = asyncio.Semaphore(concurrency)
        self._given_prober = prober
        self._prober: Prober | None = None
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listening = False
        self._running = False
        self.stats = HealthStats()

    @property
    def scheduled(self) -> int:
        """How many instances currently have a check scheduled."""
        return len(self._jobs)

    async def start(self) -> None:
        """Schedule every checked instance in the catalog and follow its changes.

        Idempotent. The catalog should already be started, or its initial
        listing reaches the checker through the listener.
        """
        if self._running:
            return
        self._running = True
        self._prober = self._given_prober or Prober()
        if not self._listening:
            self._catalog.add_listener(self._on_change)
            self._listening = True
        for service, entry in list(self._catalog.services.items()):
            for instance_id, instance in list(entry.instances.items()):
                self._on_change(service, instance_id, None, instance)

    async def stop(self) -> None:
        """Cancel every job and wait for them; in-flight probes are abandoned.

        Idempotent. Statuses already written stay in the store; an instance
        half-way through deregistration may or may not have been removed.
        """
        self._running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()
        if self._prober is not None and self._given_prober is None:
            await self._prober.aclose()
        self._prober = None

    # --- following the catalog --------------------------------------------

    def _on_change(
        self, service: str, instance_id: str, old: Instance | None, new: Instance | None
    ) -> None:
        if not self._running:
            return
        key = (service, instance_id)
        job = self._jobs.get(key)
        if new is not None and new.check is not None and job is not None and job.check == new.check:
            now = self._clock.now()
            job.machine.record(
                new.status, new.output, now=now, critical_for=self._critical_for(new)
            )
            return
        if job is not None:
            self._drop(key, job)
        if new is not None and new.check is not None:
            self._add(key, new, new.check)

    def _critical_for(self, instance: Instance) -> float:
        if instance.status != "critical" or instance.status_since <= 0:
            return 0.0
        return max(0.0, self._clock.wall() - instance.status_since)

    def _add(self, key: tuple[str, str], instance: Instance, check: Check) -> None:
        try:
            timing = CheckTiming.of(check)
        except ValueError as exc:  # validated at registration; a hand-written key may not be
            log.warning("not checking %s/%s: %s", instance.service, instance.id, exc)
            return
        now = self._clock.now()
        machine = StatusMachine(
            self._thresholds,
            deregister_after=timing.deregister_after,
            status=instance.status,
            output=instance.output,
            now=now,
            critical_for=self._critical_for(instance),
        )
        schedule = Schedule(timing.interval, self._rng, now=now)
        job = _Job(key[0], key[1], check, timing, schedule, machine)
        job.task = asyncio.get_running_loop().create_task(
            self._follow(job), name=f"health {job.name}"
        )
        self._tasks.add(job.task)
        job.task.add_done_callback(self._tasks.discard)
        self._jobs[key] = job

    def _drop(self, key: tuple[str, str], job: _Job) -> None:
        del self._jobs[key]
        if job.task is not None and not job.leaving:
            job.task.cancel()

    # --- one instance ------------------------------------------------------

    async def _follow(self, job: _Job) -> None:
        while True:
            await asyncio.sleep(max(0.0, wake_at(job.schedule, job.machine) - self._clock.now()))
            if job.machine.deregister_due(self._clock.now()):
                if await self._deregister(job):
                    return
                await asyncio.sleep(DEREGISTER_RETRY)
                if self._jobs.get((job.service, job.instance_id)) is not job:
                    return  # removed or replaced meanwhile: never delete a newer registration
            elif job.schedule.due(self._clock.now()):
                await self._check_once(job)

    async def _check_once(self, job: _Job) -> None:
        try:
            result = await self._probe(job)
        finally:
            job.schedule.ran(self._clock.now())
        self.stats.checks += 1
        if result.status != "passing":
            self.stats.failures += 1
        verdict = job.machine.observe(result.status, result.output)
        if verdict is not None:
            await self._write(job, verdict)

    async def _probe(self, job: _Job) -> ProbeResult:
        assert self._prober is not None, "jobs only run between start() and stop()"
        async with self._slots:
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                return await self._prober.probe(job.check, job.timing.timeout)
            finally:
                self.stats.in_flight -= 1

    async def _write(self, job: _Job, verdict: Verdict) -> None:
        old = job.machine.status
        try:
            written = await self._registry.set_status(
                job.service, job.instance_id, verdict.status, verdict.output, check=job.check
            )
        except Exception as exc:  # the store is down: keep probing, retry the write next time
            self.stats.write_errors += 1
            log.warning("could not record health of %s: %s", job.name, exc)
            return
        if not written:
            return  # the instance is gone; the catalog listener unschedules it
        job.machine.record(verdict.status, verdict.output, now=self._clock.now())
        self.stats.writes += 1
        if verdict.transition:
            self.stats.transitions += 1
            log.info("%s %s→%s %s", job.name, old, verdict.status, verdict.output)

    async def _deregister(self, job: _Job) -> bool:
        """Remove a long-critical instance; False when it should be retried."""
        after = format_duration(job.timing.deregister_after or 0.0)
        job.leaving = True
        try:
            await self._registry.deregister(job.service, job.instance_id)
        except NotFound:
            return True
        except Exception as exc:
            job.leaving = False
            self.stats.write_errors += 1
            log.warning("could not deregister %s: %s", job.name, exc)
            return False
        self.stats.deregistrations += 1
        log.warning("deregistered %s: critical for more than %s", job.name, after)
        return True
