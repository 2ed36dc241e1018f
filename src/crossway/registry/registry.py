"""Register, renew, deregister and discover instances, written against `Store`.

An instance is a key bound to a lease: the lease's TTL is its heartbeat, and
when the lease expires the key vanishes and every watcher hears. Several
instances may share one lease (a process registering many endpoints renews
them all with one call), like etcd clients and Consul sessions.

Re-registering an id is idempotent: the instance is updated in place and keeps
its lease when the TTL is unchanged, so a client that re-sends its
registration does not churn leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from crossway.core.clock import Clock, SystemClock
from crossway.core.errors import InvalidArgument, NotFound
from crossway.registry.catalog import Catalog
from crossway.registry.model import (
    DEFAULT_TTL,
    Check,
    Instance,
    Registration,
    check_name,
    decode,
    duration_seconds,
    encode,
    instance_key,
    lease_from_text,
    lease_to_text,
    validate,
)
from crossway.store import CompareFailed, LeaseNotFound, Store

log = logging.getLogger("crossway.registry")

CAS_ATTEMPTS = 5
RENEW_CONCURRENCY = 64


@dataclass(slots=True, frozen=True)
class ServiceSummary:
    name: str
    instances: int
    healthy: int
    tags: list[str]
    zones: list[str]


@dataclass(slots=True, frozen=True)
class Discovery:
    instances: list[Instance]
    index: int
    protected: bool = False
    """True when the protect threshold made discovery return every instance."""


class Registry:
    def __init__(self, store: Store, catalog: Catalog, *, clock: Clock | None = None) -> None:
        self._store = store
        self.catalog = catalog
        self._clock = clock or SystemClock()
        self.protect_thresholds: dict[str, float] = {}

    async def register(self, service: str, instance_id: str, reg: Registration) -> Instance:
        check_name(service, "service")
        check_name(instance_id, "id")
        validate(reg)
        key = instance_key(service, instance_id)
        for _ in range(CAS_ATTEMPTS):
            current = await self._store.get(key)
            existing = decode(current.value) if current is not None else None
            lease, ttl = await self._lease_for(reg, existing)
            instance = self._instance(service, instance_id, reg, existing, lease, ttl)
            try:
                put = await self._store.put(
                    key,
                    encode(instance),
                    lease=lease,
                    if_mod_revision=current.mod_revision if current is not None else 0,
                )
            except CompareFailed:
                continue
            await self.catalog.caught_up(put.revision)
            # Debug: the access log already has every registration at info.
            log.debug("registered %s/%s at %s:%d", service, instance_id, reg.address, reg.port)
            return instance
        raise InvalidArgument(f"instance {service}/{instance_id} is changing too fast; retry")

    async def _lease_for(
        self, reg: Registration, existing: Instance | None
    ) -> tuple[int, str | None]:
        if reg.lease is not None:
            lease = lease_from_text(reg.lease)
            try:
                info = await self._store.lease_info(lease)
            except LeaseNotFound:
                raise InvalidArgument(
                    f"lease {reg.lease} does not exist or has expired", field="$.lease"
                ) from None
            return lease, f"{info.ttl:g}s"
        if reg.ttl is None and reg.check is not None:
            return 0, None  # health comes from the active check alone
        ttl = reg.ttl or DEFAULT_TTL
        if existing is not None and existing.lease and existing.ttl == ttl:
            lease = lease_from_text(existing.lease)
            try:
                await self._store.keepalive(lease)
                return lease, ttl
            except LeaseNotFound:
                pass
        granted = await self._store.grant(duration_seconds(ttl))
        return granted.id, ttl

    def _instance(
        self,
        service: str,
        instance_id: str,
        reg: Registration,
        existing: Instance | None,
        lease: int,
        ttl: str | None,
    ) -> Instance:
        now = self._clock.wall()
        same_check = existing is not None and existing.check == reg.check
        if reg.check is None:
            status, output, since = "passing", "", now
        elif same_check and existing is not None:
            status, output, since = existing.status, existing.output, existing.status_since
        else:
            status, output, since = "critical", "waiting for the first check", now
        return Instance(
            service=service,
            id=instance_id,
            address=reg.address,
            port=reg.port,
            weight=reg.weight,
            zone=reg.zone,
            tags=reg.tags,
            metadata=reg.metadata,
            lease=lease_to_text(lease) if lease else None,
            ttl=ttl,
            check=reg.check,
            status=status,  # type: ignore[arg-type]
            output=output,
            registered_at=existing.registered_at if existing is not None else now,
            status_since=since,
        )

    async def deregister(self, service: str, instance_id: str) -> Instance:
        check_name(service, "service")
        check_name(instance_id, "id")
        deleted = await self._store.delete(instance_key(service, instance_id))
        if not deleted.deleted:
            raise NotFound(f"instance {service}/{instance_id} is not registered")
        instance = decode(deleted.deleted[0].value)
        await self._release_lease(instance)
        await self.catalog.caught_up(deleted.revision)
        log.debug("deregistered %s/%s", service, instance_id)
        return instance

    async def _release_lease(self, instance: Instance) -> None:
        # An instance's own lease goes with it; a shared lease stays for the
        # other keys bound to it.
        if instance.lease is None:
            return
        lease = lease_from_text(instance.lease)
        try:
            info = await self._store.lease_info(lease)
        except LeaseNotFound:
            return
        if not info.keys:
            await self._store.revoke(lease)

    async def keepalive(self, lease_text: str) -> float:
        return await self._store.keepalive(lease_from_text(lease_text))

    async def keepalive_many(
        self, lease_texts: Sequence[str]
    ) -> tuple[dict[str, float], list[str]]:
        """Renew many leases at once (an agent renewing every instance of its
        node): the TTL of each renewed lease, and the leases that no longer exist.

        Every id is checked before any is renewed (`InvalidArgument` naming the
        first bad one, nothing renewed). A store failure propagates; leases
        renewed before it stay renewed (a renewal is idempotent, retry them all).
        On cancellation the same holds."""
        leases = [
            lease_from_text(text, field=f"$.leases[{i}]") for i, text in enumerate(lease_texts)
        ]
        many = getattr(self._store, "keepalive_many", None)
        if many is not None:
            ttls: dict[int, float] = await many(leases)
        else:
            ttls = await self._renew_each(leases)
        pairs = list(zip(lease_texts, leases, strict=True))
        renewed = {text: ttls[lease] for text, lease in pairs if lease in ttls}
        missing = [text for text, lease in pairs if lease not in ttls]
        return renewed, missing

    async def _renew_each(self, leases: list[int]) -> dict[int, float]:
        """One keepalive per lease, `RENEW_CONCURRENCY` at a time (remote stores)."""
        ttls: dict[int, float] = {}

        async def renew(lease: int) -> None:
            with contextlib.suppress(LeaseNotFound):
                ttls[lease] = await self._store.keepalive(lease)

        for start in range(0, len(leases), RENEW_CONCURRENCY):
            chunk = leases[start : start + RENEW_CONCURRENCY]
            await asyncio.gather(*(renew(lease) for lease in chunk))
        return ttls

    async def set_status(
        self,
        service: str,
        instance_id: str,
        status: str,
        output: str,
        *,
        check: Check | None = None,
    ) -> bool:
        """Record a health transition; False when the instance is gone, or —
        given the `check` that produced the result — was re-registered with
        another check meanwhile (that result no longer applies)."""
        key = instance_key(service, instance_id)
        for _ in range(CAS_ATTEMPTS):
            current = await self._store.get(key)
            if current is None:
                return False
            instance = decode(current.value)
            if check is not None and instance.check != check:
                return False
            if instance.status == status and instance.output == output:
                return True
            changed = Instance(
                **{
                    **{f: getattr(instance, f) for f in instance.__struct_fields__},
                    "status": status,
                    "output": output[:1024],
                    "status_since": self._clock.wall()
                    if status != instance.status
                    else instance.status_since,
                }
            )
            try:
                await self._store.put(
                    key, encode(changed), lease=current.lease, if_mod_revision=current.mod_revision
                )
                return True
            except (CompareFailed, LeaseNotFound):
                continue
        return False

    def services(self) -> tuple[list[ServiceSummary], int]:
        out = []
        for name, entry in sorted(self.catalog.services.items()):
            if not entry.instances:
                continue
            instances = entry.instances.values()
            out.append(
                ServiceSummary(
                    name=name,
                    instances=len(entry.instances),
                    healthy=sum(1 for i in instances if i.status == "passing"),
                    tags=sorted({t for i in instances for t in i.tags}),
                    zones=sorted({i.zone for i in instances if i.zone}),
                )
            )
        return out, self.catalog.revision

    def discover(
        self,
        service: str,
        *,
        healthy: bool = False,
        zone: str | None = None,
        tag: str | None = None,
    ) -> Discovery:
        entry = self.catalog.services.get(service)
        index = self.catalog.revision
        if entry is None:
            return Discovery([], index)
        instances = [
            i
            for i in entry.instances.values()
            if (zone is None or i.zone == zone) and (tag is None or tag in i.tags)
        ]
        instances.sort(key=lambda i: i.id)
        if not healthy:
            return Discovery(instances, index)
        passing = [i for i in instances if i.status != "critical"]
        threshold = self.protect_thresholds.get(service, 0.0)
        if instances and threshold > 0 and len(passing) / len(instances) < threshold:
            return Discovery(instances, index, protected=True)
        return Discovery(passing, index)
