"""Consul-style blocking queries: `GET …?index=N&wait=30s`.

A client reads a list, remembers its `X-Crossway-Index` (the store revision the
answer reflects) and asks again with `?index=<that>`. The server holds the
request until something under the list's key prefix changes after revision N,
or the wait runs out, and then answers with the current state — so a client
learns of a change within one round trip, without polling.

Theory of operation
- `BlockingParams.parse` (pure) reads `index` and `wait`: no `index` means an
  ordinary read; `wait` defaults to 30 s and is capped at 10 min.
- `jittered_wait` (pure) adds up to wait/16 at random, as Consul does, so that
  many clients that started together do not all come back at the same instant.
- `blocking_query` opens `store.watch(prefix, after_revision=N)`: the store
  replays anything after N at once, so a change that happened between the
  client's two requests is never missed. It returns at the first event, when
  the wait elapses, when the client disconnects or when the server begins to
  shut down; the caller then reads and answers with the current state.
- An `index` above the store's current revision cannot come from this store's
  history (the store was replaced, or the client is confused): answer at once,
  so the client resynchronises from the lower index it gets back. An `index`
  older than the compacted history also answers at once: something certainly
  changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass

from starlette.requests import Request

from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument
from crossway.store.errors import CompactedError
from crossway.store.protocol import Store

DEFAULT_WAIT = 30.0
MAX_WAIT = 600.0
JITTER_FRACTION = 1 / 16


@dataclass(frozen=True, slots=True)
class BlockingParams:
    index: int | None
    wait: float

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> BlockingParams:
        """Read `index` and `wait` from a query string; `InvalidArgument` (400)
        for values that are not a non-negative integer / a duration."""
        raw_index, raw_wait = query.get("index"), query.get("wait")
        index = None
        if raw_index is not None and raw_index != "":
            if not raw_index.isdigit():
                raise InvalidArgument(f"index must be a revision number, got {raw_index!r}")
            index = int(raw_index)
        wait = DEFAULT_WAIT
        if raw_wait is not None and raw_wait != "":
            try:
                wait = parse_duration(raw_wait)
            except ValueError as exc:
                raise InvalidArgument(f"wait: {exc}", field="wait") from None
        return cls(index=index, wait=min(wait, MAX_WAIT))


def jittered_wait(wait: float, unit_random: float) -> float:
    """`wait` plus up to wait/16; `unit_random` is uniform in [0, 1)."""
    return wait + wait * JITTER_FRACTION * unit_random


def should_block(params: BlockingParams, current_revision: int) -> bool:
    """Whether a request may wait at all (see the module header)."""
    return params.index is not None and params.wait > 0 and params.index <= current_revision


async def blocking_query(request: Request, store: Store, prefix: str) -> None:
    """Wait, per the request's `?index=N&wait=D`, for a change under `prefix`.

    Returns at once without `index`; otherwise at the first change after N, at
    the end of the (jittered) wait, on client disconnect, or when the server
    starts shutting down. It never answers: the caller reads the current state
    afterwards and replies with its revision as `X-Crossway-Index`. Call it
    after reading the request body (it listens for the disconnect on the
    request's receive channel). Raises `InvalidArgument` (400) for bad
    parameters; store failures (`StoreUnavailable`, `StoreClosed`) propagate.
    Cancellation closes the watch and propagates.
    """
    params = BlockingParams.parse(request.query_params)
    if params.index is None:
        return
    stopping = _stopping_event(request)
    if stopping is not None and stopping.is_set():
        return
    if not should_block(params, await store.revision()):
        return
    timeout = jittered_wait(params.wait, random.random())
    try:
        async with store.watch(prefix, after_revision=params.index) as watch:
            waiters: list[Awaitable[object]] = [watch.__anext__(), _disconnected(request)]
            if stopping is not None:
                waiters.append(stopping.wait())
            await first_of(waiters, seconds=timeout)
    except CompactedError:
        return


async def first_of(waiters: Sequence[Awaitable[object]], *, seconds: float) -> None:
    """Wait until one of `waiters` finishes or `seconds` pass; cancel the rest.

    An exception from the first one to finish propagates; the others are
    cancelled and awaited either way (also on cancellation of the caller).
    """
    tasks = [asyncio.ensure_future(w) for w in waiters]
    try:
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _stopping_event(request: Request) -> asyncio.Event | None:
    ctx = getattr(getattr(request.app, "state", None), "ctx", None)
    return ctx.stopping if ctx is not None else None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
