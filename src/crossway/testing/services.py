"""Test-suite helpers for servers a test needs on loopback.

A missing server skips the test with the reason locally, but fails it when
CI=true: CI must never go green by skipping what it was meant to check.
"""

from __future__ import annotations

import os
import socket

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(available: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) the current test when `available` is false."""
    if available:
        return
    import pytest

    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
