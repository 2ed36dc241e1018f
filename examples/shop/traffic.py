"""traffic: a bounded shopper that browses the shop through the gateway, so the
dashboard shows live traffic as soon as the demo is up.

    python traffic.py [--rate 5] [--duration 30m] [--gateway http://127.0.0.1:7780]

Each visit looks at the products, the stock widget (the gateway's 90/10
inventory split), one product, sometimes orders it (one in four visits) and
sometimes the recent orders. Requests leave at `--rate` per second (at most
20 in flight) until `--duration` has passed; then it prints a summary and
exits 0. Without `--gateway` it asks the control plane (`CROSSWAY_URL`)
where `crossway up` runs the gateway, and falls back to port 7780.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx2

from crossway.core.durations import parse_duration

MAX_IN_FLIGHT = 20
REPORT_EVERY = 30.0
ITEMS = range(1, 7)


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--duration", default="30m", help="how long to run: 90s, 30m, 2h")
    parser.add_argument("--gateway", default=None, help="the gateway's URL")
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1000:
        parser.error("--rate must be above 0 and at most 1000")
    try:
        args.seconds = parse_duration(args.duration)
    except ValueError as exc:
        parser.error(f"--duration: {exc}")
    return args


async def find_gateway(http: httpx2.AsyncClient) -> str:
    """The gateway's URL from the control plane's process list (the demo's
    ports can be moved with `crossway up --gateway-port`)."""
    control = os.environ.get("CROSSWAY_URL", "http://127.0.0.1:7700").rstrip("/")
    for _ in range(30):
        try:
            listing = (await http.get(f"{control}/v1/processes")).json()
            for process in listing.get("processes", []):
                if process.get("service") == "gateway" and process.get("port"):
                    return f"http://127.0.0.1:{process['port']}"
        except (httpx2.HTTPError, ValueError, AttributeError):
            pass
        await asyncio.sleep(1.0)
    return "http://127.0.0.1:7780"


def visits() -> Iterator[tuple[str, str, dict[str, str] | None]]:
    """(method, path, form) of an endless, plausible browsing session."""
    while True:
        item = random.choice(ITEMS)
        yield "GET", "/", None
        yield "GET", f"/api/inventory/items/{item}", None
        yield "GET", f"/products/{item}", None
        if random.random() < 0.25:
            form = {"item_id": str(item), "quantity": "1", "key": str(uuid.uuid4())}
            yield "POST", "/order", form
        if random.random() < 0.2:
            yield "GET", "/orders", None


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.started = time.monotonic()

    def add(self, outcome: str) -> None:
        self.statuses[outcome] += 1

    def line(self) -> str:
        total = sum(self.statuses.values())
        failed = sum(n for s, n in self.statuses.items() if s[0] not in "234")
        ok = 100.0 * (total - failed) / total if total else 100.0
        detail = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return f"traffic: {total} requests, {ok:.1f}% ok ({detail})"


async def send(
    http: httpx2.AsyncClient, method: str, path: str, form: dict[str, str] | None, tally: Tally
) -> None:
    try:
        response = await http.request(method, path, data=form)
        tally.add(str(response.status_code))
    except httpx2.HTTPError as exc:
        tally.add(type(exc).__name__)


async def run(args: argparse.Namespace) -> None:
    async with httpx2.AsyncClient(timeout=20.0) as probe:
        gateway = args.gateway or await find_gateway(probe)
    print(f"traffic: {args.rate:g} requests/s to {gateway} for {args.duration}", flush=True)
    tally = Tally()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    stopping = asyncio.Event()  # SIGTERM (`crossway up` stopping): finish like the deadline
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    deadline = time.monotonic() + args.seconds
    next_report = time.monotonic() + REPORT_EVERY

    async def one(method: str, path: str, form: dict[str, str] | None) -> None:
        try:
            await send(http, method, path, form, tally)
        finally:
            slots.release()

    async with httpx2.AsyncClient(base_url=gateway, timeout=20.0) as http:
        for method, path, form in visits():
            now = time.monotonic()
            if now >= deadline or stopping.is_set():
                break
            if now >= next_report:
                print(tally.line(), flush=True)
                next_report = now + REPORT_EVERY
            await slots.acquire()  # at most MAX_IN_FLIGHT: a slow shop slows the shopper
            task = asyncio.create_task(one(method, path, form))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1.0 / args.rate)
        await asyncio.gather(*tasks)
    print(tally.line() + " - done", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = arguments(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
