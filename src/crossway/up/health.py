"""Readiness probes of a replica: an HTTP GET answering 2xx, or a TCP connect.

`Prober.check` never raises: any failure (refused, timeout, a non-2xx
answer) is False. One HTTP client per prober (the supervisor owns one and
closes it when it stops): a probe every second per replica must not build a
client each time.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx2

from crossway.up.spec import HealthSpec


class Prober:
    def __init__(self) -> None:
        self._client: httpx2.AsyncClient | None = None

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            # No keep-alive: a replica being replaced must not see a lingering probe connection.
            limits = httpx2.Limits(max_keepalive_connections=0)
            self._client = httpx2.AsyncClient(limits=limits, trust_env=False)
        return self._client

    async def check(self, health: HealthSpec, port: int, host: str = "127.0.0.1") -> bool:
        """True when the replica on `port` passes `health` within its timeout."""
        try:
            async with asyncio.timeout(health.timeout):
                if health.http is not None:
                    response = await self._http().get(f"http://{host}:{port}{health.http}")
                    return 200 <= response.status_code < 300
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return True
        except (TimeoutError, OSError, httpx2.HTTPError):
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
