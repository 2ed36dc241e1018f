"""Start-up failures become one clear sentence (in-process)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from starlette.routing import BaseRoute

from crossway.server.context import ServerContext
from crossway.server.run import (
    StartupError,
    bind_socket,
    open_context,
    open_server_store,
    prepare_data_dir,
    serve,
)
from crossway.server.settings import ServerSettings
from crossway.testing.services import free_port


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        expected = rf"127.0.0.1:{port}: the port is already in use"
        with pytest.raises(StartupError, match=expected), bind_socket("127.0.0.1", port):
            pass


def test_an_address_that_is_not_local_is_named() -> None:
    # 192.0.2.1 is TEST-NET-1: never assigned to a host.
    with pytest.raises(StartupError, match="not an address"), bind_socket("192.0.2.1", 0):
        pass


def test_bind_socket_closes_on_exit() -> None:
    with bind_socket("127.0.0.1", 0) as sock:
        assert sock.getsockname()[1] > 0
    assert sock.fileno() == -1


def test_data_dir_problems(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StartupError, match="exists and is not a directory"):
        prepare_data_dir(a_file)
    with pytest.raises(StartupError, match="cannot create the data directory"):
        prepare_data_dir(a_file / "sub")
    prepare_data_dir(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()


async def test_a_corrupt_sqlite_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "store.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StartupError) as caught:
        await open_server_store(ServerSettings(data_dir=tmp_path))
    message = caught.value.message
    assert message.startswith(f"cannot open the sqlite store in {tmp_path}: ")
    assert "\n" not in message


async def test_an_unreachable_etcd_is_one_line() -> None:
    settings = ServerSettings(
        store="etcd", etcd_endpoints=(f"http://127.0.0.1:{free_port()}",), store_timeout=1.5
    )
    with pytest.raises(StartupError) as caught:
        await open_server_store(settings)
    assert "etcd" in caught.value.message
    assert "\n" not in caught.value.message


async def test_open_context_over_sqlite(tmp_path: Path) -> None:
    ctx = await open_context(ServerSettings(data_dir=tmp_path / "data"))
    try:
        assert ctx.store.name == "sqlite"
        assert (tmp_path / "data" / "store.db").exists()
        names = {m.name for m in ctx.registry.collect()}
        assert "process_cpu_seconds" in names  # the process metrics live in its registry
    finally:
        await ctx.close()


async def test_start_hooks_of_route_providers_run_before_serving(tmp_path: Path) -> None:
    calls: list[str] = []

    def provider(ctx: ServerContext) -> list[BaseRoute]:
        async def start() -> None:
            calls.append("start")
            raise RuntimeError("the feed cannot start")

        async def close() -> None:
            calls.append("close")

        ctx.on_start(start)
        ctx.on_close(close)
        return []

    settings = ServerSettings(store="memory", port=0)
    with pytest.raises(StartupError, match="a service failed to start: the feed cannot start"):
        await serve(settings, extra=[provider])
    assert calls == ["start", "close"]
