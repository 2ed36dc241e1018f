"""The limiter's lean Redis clients: replies, errors, timeouts, reconnection, threads, forks."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import hiredis
import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crossway.resilience.redis_limiter import (
    GCRA_SCRIPT,
    GCRA_SHA,
    AsyncRedisGCRA,
    LimiterUnavailable,
    RedisGCRA,
)
from crossway.resilience.resp import AsyncRespClient, RespClient, _parse_url, pack_command

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    unique = f"crossway-test:{uuid.uuid4().hex}:"
    yield unique
    client = redis.Redis.from_url(redis_url)
    for db in (0, 1):
        client.execute_command("SELECT", db)
        keys = list(client.scan_iter(match=unique + "*"))
        if keys:
            client.delete(*keys)
    client.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()


ConnectionHandler = Callable[[int, socket.socket], None]


@pytest.fixture
def scripted_server() -> Iterator[Callable[[ConnectionHandler], int]]:
    """Starts a fake Redis whose n-th accepted connection (from 1) is served by
    `handler(n, conn)` on a thread of its own; returns its port."""
    listeners: list[socket.socket] = []
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def start(handler: ConnectionHandler) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)
        listeners.append(listener)

        def serve(index: int, conn: socket.socket) -> None:
            with contextlib.suppress(OSError):  # the client closed or reset it
                handler(index, conn)

        def accept() -> None:
            index = 0
            while not stop.is_set():
                try:
                    conn = listener.accept()[0]
                except (TimeoutError, OSError):
                    continue
                index += 1
                conn.settimeout(5)
                accepted.append(conn)
                threading.Thread(target=serve, args=(index, conn), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        port: int = listener.getsockname()[1]
        return port

    yield start
    stop.set()
    time.sleep(0.1)
    for conn in accepted:
        conn.close()
    for listener in listeners:
        listener.close()


def commands_of(conn: socket.socket) -> Iterator[list[bytes]]:
    """The commands a client sends on `conn`, until it closes."""
    reader = hiredis.Reader()
    while data := conn.recv(65536):
        reader.feed(data)
        while (command := reader.gets()) is not False:
            yield command


def kill_connections_of(client_name: str, redis_url: str) -> int:
    admin = redis.Redis.from_url(redis_url)
    killed = 0
    for info in admin.client_list():
        if info.get("name") == client_name:
            killed += admin.client_kill_filter(_id=info["id"])
    admin.close()
    return killed


def test_pack_command_is_a_resp_array_of_bulk_strings() -> None:
    assert pack_command("SET", "k", 12) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert pack_command(b"\xff") == b"*1\r\n$1\r\n\xff\r\n"


def test_replies_and_error_replies(redis_url: str, prefix: str) -> None:
    client = RespClient.from_url(redis_url)
    assert client.ping()
    assert client.execute(pack_command("SET", prefix + "a", "1")) == b"OK"
    assert client.execute(pack_command("INCRBY", prefix + "a", 41)) == 42
    assert client.script_load(GCRA_SCRIPT) == GCRA_SHA
    with pytest.raises(NoScriptError):
        client.evalsha("0" * 40, 0)
    with pytest.raises(ResponseError, match="unknown command"):
        client.execute(pack_command("NO-SUCH-COMMAND"))
    assert client.ping()  # an error reply leaves the connection usable
    client.close()
    assert client.ping()  # and a closed client opens a new one


def test_url_selects_the_database_and_a_bad_login_is_an_error(redis_url: str, prefix: str) -> None:
    client = RespClient.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    client.execute(pack_command("SET", prefix + "in-db-1", "x"))
    other = redis.Redis.from_url(redis_url)
    assert other.exists(prefix + "in-db-1") == 0
    other.execute_command("SELECT", 1)
    assert other.exists(prefix + "in-db-1") == 1
    other.close()
    client.close()
    with pytest.raises(ResponseError):
        RespClient.from_url("redis://:wrong@127.0.0.1:6379/0").ping()
    with pytest.raises(ValueError, match="redis://"):
        RespClient.from_url("http://127.0.0.1:6379")


def test_url_query_db_is_honoured_and_other_parameters_are_refused() -> None:
    def db_of(url: str) -> int:
        return _parse_url(url)["db"]

    assert db_of("redis://127.0.0.1:6379?db=3") == 3
    assert db_of("redis://127.0.0.1:6379/?db=3") == 3
    assert db_of("redis://127.0.0.1:6379/2?db=3") == 3  # the query wins, as in redis-py
    assert db_of("redis://127.0.0.1:6379/2") == 2
    assert db_of("redis://127.0.0.1") == 0
    with pytest.raises(ValueError, match="must be a number"):
        _parse_url("redis://127.0.0.1:6379?db=x")
    with pytest.raises(ValueError, match="unsupported query parameter socket_timeout"):
        _parse_url("redis://127.0.0.1:6379/0?socket_timeout=5")
    with pytest.raises(ValueError, match="unsupported"):
        RespClient.from_url("redis://127.0.0.1:6379?ssl_cert_reqs=none")
    with pytest.raises(ValueError, match="timeouts"):
        RespClient(socket_timeout=0)


def test_limiter_on_the_lean_client_matches_the_redis_py_one(redis_url: str, prefix: str) -> None:
    lean = RedisGCRA(RespClient.from_url(redis_url), rate=10, burst=2, prefix=prefix)
    other = RedisGCRA(redis.Redis.from_url(redis_url), rate=10, burst=2, prefix=prefix)
    assert lean.try_acquire("k").remaining == 1
    assert other.try_acquire("k").remaining == 0  # one budget, whichever client
    refused = lean.try_acquire("k")
    assert not refused.allowed
    assert 0.05 < refused.retry_after <= 0.1
    assert lean.try_acquire("k2", 2).allowed  # more than one permit: packed apart
    with pytest.raises(ValueError, match="never be granted"):
        lean.try_acquire("k", 3)


class FlushedOnce(RespClient):
    """A lean client whose server looks restarted (scripts flushed) once."""

    loads = 0
    flushed = True

    def execute(self, command: bytes) -> Any:
        if self.flushed and b"EVALSHA" in command:
            self.flushed = False
            return super().execute(pack_command("EVALSHA", "0" * 40, 0))
        return super().execute(command)

    def script_load(self, script: str) -> Any:
        FlushedOnce.loads += 1
        return super().script_load(script)


def test_noscript_loads_the_script_and_repeats_the_call(redis_url: str, prefix: str) -> None:
    client = FlushedOnce.from_url(redis_url)
    limiter = RedisGCRA(client, rate=5, burst=1, prefix=prefix)
    assert limiter.try_acquire("s").allowed
    assert not limiter.try_acquire("s").allowed
    assert FlushedOnce.loads == 1


def test_a_connection_closed_by_the_server_is_replaced_without_an_error(
    redis_url: str, prefix: str
) -> None:
    client = RespClient.from_url(redis_url)
    name = f"resp-{uuid.uuid4().hex[:12]}"
    assert client.execute(pack_command("CLIENT", "SETNAME", name)) == b"OK"
    assert kill_connections_of(name, redis_url) == 1
    limiter = RedisGCRA(client, rate=5, burst=1, prefix=prefix)
    assert limiter.try_acquire("r").allowed  # sent again on a fresh connection
    assert not limiter.try_acquire("r").allowed  # and counted once
    client.close()


def test_dead_or_hung_redis_is_a_prompt_clear_error(silent_server: int) -> None:
    dead = RespClient(port=closed_port())
    with pytest.raises(RedisConnectionError, match=r"127\.0\.0\.1"):
        dead.ping()
    with pytest.raises(LimiterUnavailable):
        RedisGCRA(dead, rate=1).try_acquire("k")
    assert RedisGCRA(dead, rate=1, fail_open=True).try_acquire("k").allowed

    hung = RespClient(port=silent_server, socket_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError, match=r"no reply within 0\.2s"):
        hung.ping()
    with pytest.raises(LimiterUnavailable, match="no reply"):
        RedisGCRA(hung, rate=1).try_acquire("k")
    assert time.monotonic() - started < 2.0


class Interrupted(Exception):
    pass


def test_an_exception_mid_call_leaves_no_reply_for_the_next_call(
    scripted_server: Callable[[ConnectionHandler], int],
) -> None:
    def slow_echo(_: int, conn: socket.socket) -> None:
        for command in commands_of(conn):
            time.sleep(0.3)
            conn.sendall(b"$%d\r\n%b\r\n" % (len(command[1]), command[1]))

    client = RespClient(port=scripted_server(slow_echo), socket_timeout=2)

    def interrupt(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Interrupted):
            client.execute(pack_command("ECHO", "call-A"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert client.execute(pack_command("ECHO", "call-B")) == b"call-B"
    client.close()


def test_a_malformed_reply_is_a_connection_error_and_is_not_resent(
    scripted_server: Callable[[ConnectionHandler], int],
) -> None:
    sent: list[int] = []

    def garble_the_second_reply(index: int, conn: socket.socket) -> None:
        for _ in commands_of(conn):
            sent.append(index)
            conn.sendall(b"@?\r\n" if len(sent) == 2 else b"+PONG\r\n")

    client = RespClient(port=scripted_server(garble_the_second_reply))
    assert client.ping()
    with pytest.raises(RedisConnectionError, match="malformed reply"):
        client.ping()
    assert client.ping()  # on a new connection
    assert sent == [1, 1, 2]
    client.close()


def test_a_resend_that_times_out_leaves_no_closed_connection_behind(
    scripted_server: Callable[[ConnectionHandler], int],
) -> None:
    def drop_then_hang_then_serve(index: int, conn: socket.socket) -> None:
        for _ in commands_of(conn):
            if index == 2:
                continue  # a hung server: never answers
            conn.sendall(b"+PONG\r\n")
            if index == 1:
                time.sleep(0.1)
                conn.close()  # an idle connection the server drops
                return

    client = RespClient(port=scripted_server(drop_then_hang_then_serve), socket_timeout=0.3)
    assert client.ping()
    time.sleep(0.3)
    with pytest.raises(RedisTimeoutError):
        client.ping()  # the dropped connection's resend times out
    assert client.ping()  # and the next call opens a third connection
    client.close()


def test_threads_get_their_own_connections_and_exact_counts(redis_url: str, prefix: str) -> None:
    client = RespClient.from_url(redis_url)
    limiter = RedisGCRA(client, rate=0.001, burst=150, prefix=prefix)
    granted = [0] * 6

    def work(index: int) -> None:
        for _ in range(100):
            granted[index] += limiter.try_acquire("t").allowed

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(granted) == 150
    client.close()


def _child(client: RespClient, prefix: str, results: Any) -> None:
    limiter = RedisGCRA(client, rate=0.001, burst=10, prefix=prefix)
    results.put(sum(limiter.try_acquire("f").allowed for _ in range(20)))


def test_a_forked_child_opens_its_own_connection(redis_url: str, prefix: str) -> None:
    client = RespClient.from_url(redis_url)
    limiter = RedisGCRA(client, rate=0.001, burst=10, prefix=prefix)
    assert sum(limiter.try_acquire("f").allowed for _ in range(4)) == 4
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_child, args=(client, prefix, results))
    child.start()
    assert results.get(timeout=30) == 6
    child.join(timeout=30)
    assert child.exitcode == 0
    assert not limiter.try_acquire("f").allowed  # the parent's connection still in step
    assert client.ping()
    client.close()


def _child_pings(client: RespClient, results: Any) -> None:
    results.put(client.ping())


def test_a_child_forked_while_another_thread_holds_the_lock_can_connect(redis_url: str) -> None:
    client = RespClient.from_url(redis_url)
    assert client.ping()
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with client._lock:  # as a thread in _connect or close() at fork time
            holding.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert holding.wait(timeout=5)
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_child_pings, args=(client, results))
        child.start()
        assert results.get(timeout=10) is True
        child.join(timeout=10)
        assert child.exitcode == 0
    finally:
        release.set()
        holder.join(timeout=5)
    client.close()


async def test_async_client_pipelines_concurrent_calls_exactly(redis_url: str, prefix: str) -> None:
    client = AsyncRespClient.from_url(redis_url)
    limiter = AsyncRedisGCRA(client, rate=0.001, burst=25, prefix=prefix)
    decisions = await asyncio.gather(*(limiter.try_acquire("a") for _ in range(100)))
    assert sum(d.allowed for d in decisions) == 25
    assert [d.remaining for d in decisions if d.allowed] == list(range(24, -1, -1))
    assert await client.ping()
    assert await client.script_load(GCRA_SCRIPT) == GCRA_SHA
    with pytest.raises(NoScriptError):
        await client.evalsha("0" * 40, 0)
    await client.aclose()


def test_async_client_works_on_uvloop(redis_url: str, prefix: str) -> None:
    # The gateway runs on uvloop, whose transports are not asyncio.Transport subclasses.
    async def exchange() -> list[bool]:
        client = AsyncRespClient.from_url(redis_url)
        limiter = AsyncRedisGCRA(client, rate=0.001, burst=3, prefix=prefix)
        try:
            decisions = await asyncio.gather(*(limiter.try_acquire("u") for _ in range(5)))
        finally:
            await client.aclose()
        return [d.allowed for d in decisions]

    assert uvloop.run(exchange()) == [True, True, True, False, False]


async def test_async_cancelled_waiters_keep_replies_in_order(redis_url: str, prefix: str) -> None:
    client = AsyncRespClient.from_url(redis_url)
    await client.execute(pack_command("SET", prefix + "n", "0"))
    calls = [
        asyncio.ensure_future(client.execute(pack_command("INCR", prefix + "n"))) for _ in range(10)
    ]
    await asyncio.sleep(0)
    for call in calls[::2]:
        call.cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    # The ten INCRs were written in order before any cancel: the kept (odd) calls
    # got the 2nd, 4th, ... reply; a cancelled caller's reply handed to the next
    # caller would shift them.
    kept = [r for r in results if not isinstance(r, BaseException)]
    assert kept == [2, 4, 6, 8, 10]
    assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
    assert await client.execute(pack_command("GET", prefix + "n")) == b"10"
    await client.aclose()


async def test_async_reconnects_and_reports_dead_or_hung_redis(
    redis_url: str, prefix: str, silent_server: int
) -> None:
    client = AsyncRespClient.from_url(redis_url)
    name = f"resp-{uuid.uuid4().hex[:12]}"
    assert await client.execute(pack_command("CLIENT", "SETNAME", name)) == b"OK"
    assert kill_connections_of(name, redis_url) == 1
    await asyncio.sleep(0.05)  # the loss is seen: the next call opens a new connection
    limiter = AsyncRedisGCRA(client, rate=5, burst=1, prefix=prefix)
    assert (await limiter.try_acquire("r")).allowed
    assert not (await limiter.try_acquire("r")).allowed
    await client.aclose()

    dead = AsyncRespClient(port=closed_port())
    with pytest.raises(LimiterUnavailable):
        await AsyncRedisGCRA(dead, rate=1).try_acquire("k")
    assert (await AsyncRedisGCRA(dead, rate=1, fail_open=True).try_acquire("k")).allowed

    hung = AsyncRespClient(port=silent_server, socket_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError, match="no reply"):
        await hung.ping()
    assert time.monotonic() - started < 2.0
    await hung.aclose()


class FakeRedis:
    """An asyncio fake Redis: `answer(n, command)` is the reply to a command on
    the n-th connection (from 1), None to answer nothing, b"" to drop it."""

    def __init__(self, answer: Callable[[int, list[bytes]], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.commands: list[tuple[int, bytes]] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        index = self.connections
        reader = hiredis.Reader()
        try:
            while data := await stream.read(65536):
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    self.commands.append((index, command[0]))
                    reply = self.answer(index, command)
                    if reply == b"":
                        writer.transport.abort()
                        return
                    if reply is not None:
                        writer.write(reply)
        except ConnectionError:
            pass
        finally:
            self.open -= 1

    async def close(self) -> None:
        self.server.close()


async def test_async_login_replies_do_not_make_a_fresh_connection_reused() -> None:
    def drop_the_first_command(index: int, command: list[bytes]) -> bytes | None:
        if command[0] == b"SELECT":
            return b"+OK\r\n"
        return b"" if index == 1 else b"+PONG\r\n"

    fake = FakeRedis(drop_the_first_command)
    client = AsyncRespClient(port=await fake.start(), db=2)
    with pytest.raises(RedisConnectionError):
        await client.ping()  # dropped on its first use: not sent again
    assert fake.commands == [(1, b"SELECT"), (1, b"PING")]
    assert await client.ping()
    await client.aclose()
    await fake.close()


async def test_async_a_connect_every_caller_gave_up_on_leaves_no_stale_outcome() -> None:
    port = closed_port()
    client = AsyncRespClient(port=port)
    call = asyncio.ensure_future(client.ping())
    await asyncio.sleep(0)
    call.cancel()  # before the refused connect completes
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.05)  # the refused attempt ends with no caller left
    fake = FakeRedis(lambda index, command: b"+PONG\r\n")
    fake.server = await asyncio.start_server(fake._serve, "127.0.0.1", port)
    assert await client.ping()  # a new attempt, not the refused one's error
    await client.aclose()
    await fake.close()


async def test_async_aclose_cancels_a_pending_connect_and_resends_nothing() -> None:
    pings_on_3 = 0

    def login_hangs_on_1_third_ping_hangs_on_3(index: int, command: list[bytes]) -> bytes | None:
        nonlocal pings_on_3
        if command[0] == b"SELECT":
            return None if index == 1 else b"+OK\r\n"
        if index == 3:
            pings_on_3 += 1
            if pings_on_3 == 3:
                return None
        return b"+PONG\r\n"

    fake = FakeRedis(login_hangs_on_1_third_ping_hangs_on_3)
    client = AsyncRespClient(port=await fake.start(), db=2, socket_timeout=5)
    call = asyncio.ensure_future(client.ping())
    await asyncio.sleep(0.05)  # connected, waiting for the SELECT reply
    await client.aclose()
    with pytest.raises(RedisConnectionError, match="client closed"):
        await call
    assert await client.ping()  # a later call opens connection 2
    await client.aclose()

    assert await client.ping()  # connection 3: reused once answered
    assert await client.ping()
    in_flight = asyncio.ensure_future(client.ping())  # never answered
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(RedisConnectionError, match="client closed"):
        await in_flight
    await asyncio.sleep(0.05)
    assert fake.connections == 3  # the in-flight call was not sent again
    assert fake.open == 0
    await fake.close()


async def test_async_a_malformed_reply_is_a_connection_error_and_is_not_resent() -> None:
    replies = iter([b"+PONG\r\n", b"@?\r\n", b"+PONG\r\n"])
    fake = FakeRedis(lambda index, command: next(replies))
    client = AsyncRespClient(port=await fake.start())
    assert await client.ping()
    with pytest.raises(RedisConnectionError, match="malformed reply"):
        await client.ping()
    assert await client.ping()
    assert [index for index, _ in fake.commands] == [1, 1, 2]
    await client.aclose()
    await fake.close()
