from __future__ import annotations

import logging

import pytest

from crossway.server.context import ServerContext
from crossway.store.errors import StoreClosed
from crossway.store.local import LocalStore


class Registry:
    pass


def test_services_are_found_by_type(ctx: ServerContext) -> None:
    registry = Registry()
    ctx.provide(registry)
    assert ctx.service(Registry) is registry
    with pytest.raises(ValueError, match="already provided"):
        ctx.provide(Registry())
    with pytest.raises(LookupError, match="no int"):
        ctx.service(int)
    ctx.provide(3, as_type=object)
    assert ctx.service(object) == 3


async def test_start_hooks_run_once_in_order(ctx: ServerContext) -> None:
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")

    async def second() -> None:
        ran.append("second")

    ctx.on_start(first)
    ctx.on_start(second)
    await ctx.start()
    await ctx.start()
    assert ran == ["first", "second"]


async def test_close_runs_hooks_newest_first_then_closes_the_store(
    ctx: ServerContext, store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    async def older() -> None:
        ran.append("older")

    async def broken() -> None:
        raise RuntimeError("hook failed")

    async def newer() -> None:
        assert await store.revision() == 0  # the store is still open for the hooks
        ran.append("newer")

    for hook in (older, broken, newer):
        ctx.on_close(hook)
    with caplog.at_level(logging.ERROR, logger="crossway.server"):
        await ctx.close()
        await ctx.close()
    assert ran == ["newer", "older"]
    assert ctx.shutting_down
    assert any("shutdown hook failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(StoreClosed):
        await store.revision()
