"""Ports for replicas: a fixed port, the next free one of a range, or one from the OS.

`PortAllocator` remembers what it handed out, so two replicas starting at
once (a rolling restart's surge) never get the same port; `release` gives a
port back when its replica stops. Whether a port is free on the machine is
asked of `probe` (binding 127.0.0.1:port), injected so tests can decide.
"""

from __future__ import annotations

import socket
from collections.abc import Callable


class PortUnavailable(Exception):
    """No port can be handed out; the message names the port(s) and the service."""


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port` (we could bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def os_free_port() -> int:
    """A port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PortAllocator:
    def __init__(
        self,
        *,
        probe: Callable[[int], bool] = port_is_free,
        any_port: Callable[[], int] = os_free_port,
    ) -> None:
        self._probe = probe
        self._any_port = any_port
        self.in_use: dict[int, str] = {}
        """port -> who holds it (a replica's label)."""

    def allocate(
        self,
        holder: str,
        *,
        fixed: int | None = None,
        port_range: tuple[int, int] | None = None,
    ) -> int:
        """A port for `holder`. `PortUnavailable` when the fixed port is taken
        or the range has no free port left."""
        if fixed is not None:
            return self._take_fixed(holder, fixed)
        if port_range is not None:
            return self._take_from_range(holder, port_range)
        for _ in range(20):  # the OS may hand back a port we still hold
            port = self._any_port()
            if port not in self.in_use:
                self.in_use[port] = holder
                return port
        raise PortUnavailable(f"{holder}: no free port from the operating system")

    def _take_fixed(self, holder: str, port: int) -> int:
        if port in self.in_use:
            raise PortUnavailable(f"{holder}: port {port} is held by {self.in_use[port]}")
        if not self._probe(port):
            raise PortUnavailable(f"{holder}: port {port} is already in use")
        self.in_use[port] = holder
        return port

    def _take_from_range(self, holder: str, bounds: tuple[int, int]) -> int:
        low, high = bounds
        for port in range(low, high + 1):
            if port not in self.in_use and self._probe(port):
                self.in_use[port] = holder
                return port
        raise PortUnavailable(f"{holder}: no free port left in {low}-{high}")

    def release(self, port: int | None) -> None:
        if port is not None:
            self.in_use.pop(port, None)
