"""Port allocation for replicas: fixed, from a range, from the OS."""

from __future__ import annotations

import socket

import pytest

from crossway.testing.services import free_port
from crossway.up.ports import PortAllocator, PortUnavailable, port_is_free


def test_a_range_hands_out_free_ports_in_order_and_takes_them_back() -> None:
    busy = {8101}
    ports = PortAllocator(probe=lambda port: port not in busy)
    assert ports.allocate("a-1", port_range=(8100, 8103)) == 8100
    assert ports.allocate("a-2", port_range=(8100, 8103)) == 8102  # 8101 is in use on the machine
    assert ports.allocate("a-3", port_range=(8100, 8103)) == 8103
    with pytest.raises(PortUnavailable, match="a-4: no free port left in 8100-8103"):
        ports.allocate("a-4", port_range=(8100, 8103))
    ports.release(8102)
    assert ports.allocate("a-4", port_range=(8100, 8103)) == 8102


def test_a_fixed_port_names_who_holds_it() -> None:
    ports = PortAllocator(probe=lambda port: port != 9000)
    assert ports.allocate("web-1", fixed=8080) == 8080
    with pytest.raises(PortUnavailable, match="web-1-2: port 8080 is held by web-1"):
        ports.allocate("web-1-2", fixed=8080)
    with pytest.raises(PortUnavailable, match="api-1: port 9000 is already in use"):
        ports.allocate("api-1", fixed=9000)


def test_os_ports_are_never_handed_out_twice() -> None:
    handed = iter([5000, 5000, 5001])
    ports = PortAllocator(any_port=lambda: next(handed))
    assert ports.allocate("a-1") == 5000
    assert ports.allocate("a-2") == 5001


def test_port_is_free_sees_a_listener() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)
