"""Which hosts are services, and each service's folded call: one `Router`
per transport, fed by discovery and the policy book.

Theory of operation
-------------------
A host is a service when it has no dot, is not an IP literal, not
"localhost", is a valid service name and not in `passthrough_hosts`; hosts
seen not to be services are remembered (up to `_MAX_PLAIN_HOSTS`) so they
skip the check. The first request to a service subscribes to its membership
(before reading the list, so no change falls in between), waits for its
first instance list and folds its stack; later requests are one dict lookup.
A policy change rebuilds only the stacks whose policy differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from crossway.core.clock import Clock
from crossway.registry.model import NAME, Instance
from crossway.sdk.policies import (
    PolicyBook,
)
from crossway.sdk.telemetry import ServiceTelemetry
from crossway.sdk.transport_drive import fold_async, fold_sync
from crossway.sdk.transport_flavor import Flavor
from crossway.sdk.transport_stack import NoInstancesError, ServiceStack

_MAX_PLAIN_HOSTS = 4096


class Discovery(Protocol):
    """What the transport needs of `crossway.sdk.discovery.DiscoveryCache`."""

    async def instances(self, service: str) -> list[Instance]: ...

    def peek(self, service: str) -> list[Instance] | None: ...

    def subscribe(
        self, service: str, callback: Callable[[str, list[Instance]], None]
    ) -> Callable[[], None]: ...


def is_service_host(host: str, passthrough: frozenset[str]) -> bool:
    """Whether requests to `host` are resolved through discovery (module header)."""
    return (
        bool(host)
        and "." not in host
        and ":" not in host
        and host not in passthrough
        and NAME.fullmatch(host) is not None
    )


class Router:
    """Service stacks by host, fed by discovery and the policy book; one per transport."""

    def __init__(
        self,
        discovery: Discovery,
        *,
        book: PolicyBook,
        flavor: Flavor,
        send: Callable[[Any], Any],
        is_async: bool,
        zone: str | None,
        clock: Clock,
        passthrough_hosts: Iterable[str],
        telemetry: ServiceTelemetry | None = None,
    ) -> None:
        self.discovery = discovery
        self.telemetry = telemetry
        self.book = book
        self.stacks: dict[str, Callable[[Any], Any]] = {}  # host -> folded call
        self.plain: set[str] = set()  # hosts seen not to be services
        self._flavor, self._send, self._async = flavor, send, is_async
        self._zone, self._clock = zone, clock
        self._passthrough = frozenset({"localhost", *(h.lower() for h in passthrough_hosts)})
        self._services: dict[str, ServiceStack] = {}
        self._instances: dict[str, list[Instance]] = {}
        self._followed: set[str] = set()
        self._unsubscribe: list[Callable[[], None]] = [book.on_change(self._policy_changed)]

    def stack(self, service: str) -> ServiceStack | None:
        """The current stack of `service`, if it has been called."""
        return self._services.get(service)

    def is_service(self, host: str) -> bool:
        if is_service_host(host, self._passthrough):
            return True
        if len(self.plain) >= _MAX_PLAIN_HOSTS:
            self.plain.clear()
        self.plain.add(host)
        return False

    async def resolve(self, host: str) -> Callable[[Any], Any] | None:
        """The folded call for `host`, or None when it is not a service. The
        first request to a service waits for its first instance list
        (discovery's errors propagate)."""
        if not self.is_service(host):
            return None
        found = self.stacks.get(host)
        if found is not None:
            return found
        self._follow(host)
        if host not in self._instances:
            listed = await self.discovery.instances(host)
            self._instances.setdefault(host, listed)  # a newer event may have come first
        return self.stacks.get(host) or self._install(host)

    def resolve_known(self, host: str) -> Callable[[Any], Any] | None:
        """As `resolve`, without waiting: NoInstancesError if `host` was never
        discovered (call from the loop's thread, or with no loop at all)."""
        if not self.is_service(host):
            return None
        self._follow(host)
        if host not in self._instances:
            known = self.discovery.peek(host)
            if known is None:
                raise NoInstancesError(
                    f"{host!r} has not been discovered yet; a blocking client cannot wait "
                    "for it here (await client.discovery.instances(...) at start-up)",
                    service=host,
                )
            self._instances[host] = known
        return self.stacks.get(host) or self._install(host)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def _follow(self, service: str) -> None:
        # Subscribe before reading the list, so no change can fall in between.
        if service not in self._followed:
            self._followed.add(service)
            self._unsubscribe.append(self.discovery.subscribe(service, self._on_instances))

    def _install(self, service: str) -> Callable[[Any], Any]:
        stack = ServiceStack(
            service,
            self.book.policy_for(service),
            flavor=self._flavor,
            zone=self._zone,
            clock=self._clock,
            telemetry=self.telemetry,
        )
        stack.update(self._instances.get(service, ()))
        folded = fold_async(stack, self._send) if self._async else fold_sync(stack, self._send)
        self._services[service] = stack
        self.stacks[service] = folded
        return folded

    def _on_instances(self, service: str, instances: list[Instance]) -> None:
        self._instances[service] = instances
        stack = self._services.get(service)
        if stack is not None:
            stack.update(instances)

    def _policy_changed(self, name: str | None) -> None:
        for service in [name] if name is not None else list(self._services):
            stack = self._services.get(service)
            if stack is not None and self.book.policy_for(service) != stack.policy:
                self._install(service)
