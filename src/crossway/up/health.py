"""Readiness probes of a replica: an HTTP GET answering 2xx, or a TCP connect.

`probe` never raises: any failure (refused, timeout, a non-2xx answer) is
False. One shared HTTP client per process: a probe every second per replica
must not open a connection pool each time.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx2

from crossway.up.spec import HealthSpec

_client: httpx2.AsyncClient | None = None


def _http() -> httpx2.AsyncClient:
    global _client
    if _client is None:
        # No keep-alive: a replica being replaced must not see a lingering probe connection.
        limits = httpx2.Limits(max_keepalive_connections=0)
        _client = httpx2.AsyncClient(limits=limits, trust_env=False)
    return _client


async def probe(health: HealthSpec, port: int, host: str = "127.0.0.1") -> bool:
    """True when the replica on `port` passes `health` within its timeout."""
    try:
        async with asyncio.timeout(health.timeout):
            if health.http is not None:
                response = await _http().get(f"http://{host}:{port}{health.http}")
                return 200 <= response.status_code < 300
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
    except (TimeoutError, OSError, httpx2.HTTPError):
        return False


async def close_probes() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None
