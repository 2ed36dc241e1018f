# A lean Redis client for the rate limiter's script calls, blocking and asyncio.
#
# Theory of operation
# -------------------
# Why not redis-py: a global limiter decision is one EVALSHA, and on loopback
# redis-py spends about twice the round trip's own CPU around it (pool
# checkout and release, generic command encoding, the retry wrapper, response
# callbacks), so the client library, not the network, was most of what a
# limited call cost its caller. This module does only what the limiter needs:
#
#   - commands are RESP arrays of bulk strings; the limiter packs everything
#     but the key once (`pack_command`, `bulk`), and replies are parsed by
#     hiredis' C reader;
#   - `RespClient` (threads) holds one blocking connection per thread: no pool
#     and no lock on a call's path. A forked child opens its own connections
#     (the parent's socket would interleave two processes' replies) and renews
#     each client's lock (another thread may have held it at fork time);
#   - `AsyncRespClient` holds one connection per client and pipelines: a call
#     writes its command at once and awaits its reply, and replies resolve the
#     waiting futures in the order the commands were written (Redis answers in
#     order). A waiter that gave up still owns its place in that order; its
#     reply is read and dropped. One timer watches the connection rather than
#     one per call: it ticks every `socket_timeout` while replies are awaited
#     and fails the connection on a tick that finds no reply since the last,
#     so a stall is reported between `socket_timeout` and twice that after the
#     last reply (or after the command that began the wait).
#
# Failures are bounded and clear, with redis-py's own exception types, so code
# written for a redis-py client handles them unchanged: no connection within
# `connect_timeout` or no reply within `socket_timeout` (asyncio: the stall
# bound above) raises TimeoutError; a refused, reset or closed connection, or
# a malformed reply, ConnectionError; an error reply ResponseError
# (NoScriptError for NOSCRIPT). A connection that failed is
# closed (its stream may still hold a late reply) and the next call opens a new
# one. A call that found a reused connection closed (the server restarted or
# dropped it while idle) is sent once more on a fresh connection; had the
# server run it before closing, the script runs twice, which for a limiter
# errs towards admitting less.
#
# The blocking socket's timeouts are the kernel's (SO_RCVTIMEO/SO_SNDTIMEO):
# a Python-level socket timeout would poll() before every send and receive,
# one more system call per round trip.
#
# Invariants
# ----------
# 1. A connection serves one thread (blocking) or one client (asyncio) and is
#    never used after a failure.
# 2. The n-th reply read from a connection answers the n-th command written
#    to it; a connection on which that may no longer hold is closed.

from __future__ import annotations

import asyncio
import collections
import os
import socket
import struct
import sys
import threading
import weakref
from typing import Any, Self, TypedDict, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

DEFAULT_TIMEOUT = 1.0
"""Seconds to connect, and to wait for a reply, before TimeoutError."""

_READ_SIZE = 65536


def bulk(part: bytes | str | int) -> bytes:
    """One RESP bulk string."""
    data = part if isinstance(part, bytes) else str(part).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack_command(*parts: bytes | str | int) -> bytes:
    """A command as Redis reads it: a RESP array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(bulk(part) for part in parts)


def _reply_error(message: str) -> Exception:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationError(message)
    return ResponseError(message)


def _new_reader() -> hiredis.Reader:
    return hiredis.Reader(replyError=_reply_error)


class _UrlParts(TypedDict):
    host: str
    port: int
    db: int
    username: str | None
    password: str | None


def _parse_url(url: str) -> _UrlParts:
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"not a redis:// URL: {url!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        # redis-py takes these; silently ignoring one would run with other settings
        raise ValueError(f"{url!r}: unsupported query parameter {', '.join(unknown)} (only db)")
    # As redis-py does, ?db= wins over the path.
    db = query["db"][-1] if "db" in query else parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database of {url!r} must be a number")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(db or 0),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


class _Address:
    """Where the server is, how to log in and how long to wait for it."""

    __slots__ = ("connect_timeout", "db", "host", "password", "port", "socket_timeout", "username")

    def __init__(
        self,
        host: str,
        port: int,
        db: int,
        username: str | None,
        password: str | None,
        socket_timeout: float,
        connect_timeout: float,
    ) -> None:
        if not (socket_timeout > 0 and connect_timeout > 0):
            raise ValueError("timeouts must be positive (a dead Redis must not hang a caller)")
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.socket_timeout, self.connect_timeout = socket_timeout, connect_timeout

    def login(self) -> list[bytes]:
        """The commands a new connection sends before any other."""
        commands = []
        if self.password is not None:
            who = () if self.username is None else (self.username,)
            commands.append(pack_command("AUTH", *who, self.password))
        if self.db:
            commands.append(pack_command("SELECT", self.db))
        return commands

    def __str__(self) -> str:
        return f"redis at {self.host}:{self.port}"


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Blocking sends and receives that give up after `seconds` (EAGAIN)."""
    if sys.platform == "win32":  # no struct timeval there: fall back on Python's timeout
        sock.settimeout(seconds)
        return
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


# Bumped in a forked child: connections made before the fork belong to the parent.
_forks = [0]
# Every blocking client, for the child to renew their locks: a lock another
# thread held at fork time stays held forever in the child.
_blocking_clients: weakref.WeakSet[RespClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _forks[0] += 1
    for client in list(_blocking_clients):
        client._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _MalformedReply(RedisConnectionError):
    """The server's bytes are not RESP: the command may have run, so it is not resent."""


def _connect_failed(address: _Address, error: OSError) -> RedisTimeoutError | RedisConnectionError:
    """The redis-py error a caller expects for a connection that could not open."""
    if isinstance(error, TimeoutError):
        timed_out = RedisTimeoutError(f"{address}: no connection within {address.connect_timeout}s")
        timed_out.__suppress_context__ = True  # as `from None`: the timeout says it all
        return timed_out
    failed = RedisConnectionError(f"{address}: {error.strerror or error}")
    failed.__cause__ = error  # as `from error`
    return failed


class _Connection:
    """One blocking socket and its reply reader (one thread's)."""

    __slots__ = ("__weakref__", "buffer", "fork", "reader", "reused", "sock")

    def __init__(self, address: _Address) -> None:
        try:
            sock = socket.create_connection(
                (address.host, address.port), timeout=address.connect_timeout
            )
        except OSError as error:  # TimeoutError included
            raise _connect_failed(address, error)  # noqa: B904 (chained inside)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _kernel_timeouts(sock, address.socket_timeout)
        self.sock = sock
        self.reader = _new_reader()
        self.buffer = bytearray(_READ_SIZE)
        self.fork = _forks[0]
        self.reused = False
        try:
            for command in address.login():
                reply = self.round_trip(command, address)
                if isinstance(reply, ResponseError):
                    raise reply
        except BaseException:
            self.close()
            raise

    def round_trip(self, command: bytes, address: _Address) -> Any:
        """Send one command, read its reply (an error reply is returned, not raised)."""
        sock, reader, buffer = self.sock, self.reader, self.buffer
        try:
            sock.sendall(command)
            reply = reader.gets()
            while reply is False:
                size = sock.recv_into(buffer)
                if not size:
                    raise RedisConnectionError(f"{address} closed the connection")
                reader.feed(buffer, 0, size)  # type: ignore[arg-type]  # any buffer is read
                reply = reader.gets()
        except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO / SO_SNDTIMEO expired
            self.close()
            raise RedisTimeoutError(
                f"{address}: no reply within {address.socket_timeout}s"
            ) from None
        except OSError as error:
            self.close()
            raise RedisConnectionError(f"{address}: {error.strerror or error}") from error
        except hiredis.ProtocolError as error:
            self.close()
            raise _MalformedReply(f"{address} sent a malformed reply ({error})") from None
        except BaseException:
            # Anything else (RedisConnectionError, KeyboardInterrupt, an exception
            # raised by a signal handler, a gevent timeout) may leave this command's
            # reply unread on the stream, where the next command would read it.
            self.close()
            raise
        return reply

    def close(self) -> None:
        self.sock.close()


class _Client:
    """Where a client connects and how it logs in: the part both clients share."""

    __slots__ = ("_address",)

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._address = _Address(
            host, port, db, username, password, socket_timeout, connect_timeout
        )
        self._start()

    def _start(self) -> None:
        """Set up the client's own state (its connections)."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_TIMEOUT,
    ) -> Self:
        """A client for `redis://[[user]:password@]host[:port][/db][?db=db]`."""
        return cls(
            **_parse_url(url), socket_timeout=socket_timeout, connect_timeout=connect_timeout
        )


class RespClient(_Client):
    """A blocking Redis client for scripts, one connection per thread.

    Speaks the `ScriptingClient` protocol of redis_limiter (evalsha,
    script_load), so RedisGCRA takes it in place of a `redis.Redis`.
    """

    __slots__ = ("__weakref__", "_connections", "_local", "_lock")

    def _start(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        _blocking_clients.add(self)

    def execute(self, command: bytes) -> Any:
        """Send one packed command (`pack_command`) and return its reply.

        Raises ResponseError (NoScriptError, ...) for an error reply,
        ConnectionError or TimeoutError when Redis cannot answer.
        """
        local = self._local
        connection: _Connection | None = getattr(local, "connection", None)
        if connection is None or connection.fork != _forks[0]:
            connection = self._connect()
        try:
            reply = connection.round_trip(command, self._address)
        except RedisConnectionError as error:
            local.connection = None
            if not connection.reused or isinstance(error, _MalformedReply):
                raise
            connection = self._connect()
            try:
                reply = connection.round_trip(command, self._address)
            except BaseException:  # the sibling handler below does not see this one's errors
                local.connection = None
                raise
        except BaseException:  # round_trip closed the connection
            local.connection = None
            raise
        connection.reused = True
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _connect(self) -> _Connection:
        connection = _Connection(self._address)
        self._local.connection = connection
        with self._lock:
            self._connections.add(connection)
        return connection

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: str | int) -> Any:
        return self.execute(pack_command("EVALSHA", sha, numkeys, *keys_and_args))

    def script_load(self, script: str) -> Any:
        sha = self.execute(pack_command("SCRIPT", "LOAD", script))
        return sha.decode() if isinstance(sha, bytes) else sha

    def ping(self) -> bool:
        return bool(self.execute(pack_command("PING")) == b"PONG")

    def close(self) -> None:
        """Close every thread's connection; a later call opens a new one."""
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            connection.close()
        self._local = threading.local()


# -- asyncio ------------------------------------------------------------------


class _ReplyProtocol(asyncio.Protocol):
    """Reads replies and settles the oldest waiting future with each."""

    def __init__(self, address: _Address, login_commands: int, generation: int) -> None:
        self.address = address
        self.reader = _new_reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        # Counts from below zero through the login's replies, so `replies > 0`
        # means a reply to a command of `execute` came: the connection is reused.
        self.replies = -login_commands
        # The client's `aclose` count when this connection was opened.
        self.generation = generation
        self.error: Exception | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._replies_at_arming = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        transport = self.transport
        if transport is None or self.error is not None:
            raise self.error or RedisConnectionError(f"{self.address}: not connected")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        transport.write(command)
        if self._watchdog is None:
            self._arm()
        return future

    def _arm(self) -> None:
        # One timer while replies are awaited, not one per call: it fires every
        # socket_timeout and fails the connection only if no reply came since.
        self._replies_at_arming = self.replies
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.address.socket_timeout, self._check_progress)

    def _check_progress(self) -> None:
        self._watchdog = None
        if not self.waiting:
            return
        if self.replies == self._replies_at_arming:
            timeout = self.address.socket_timeout
            self.fail(RedisTimeoutError(f"{self.address}: no reply within {timeout}s"))
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                self.replies += 1
                if not waiting:
                    self.fail(RedisConnectionError(f"{self.address} sent a reply nobody asked for"))
                    return
                future = waiting.popleft()
                if not future.done():  # a caller that gave up (cancelled) is skipped
                    if isinstance(reply, ResponseError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as error:
            self.fail(_MalformedReply(f"{self.address} sent a malformed reply ({error})"))

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc else ""
        self.fail(RedisConnectionError(f"{self.address} closed the connection{detail}"))

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self.waiting = self.waiting, collections.deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class AsyncRespClient(_Client):
    """An asyncio Redis client for scripts: one pipelined connection.

    Speaks the `AsyncScriptingClient` protocol of redis_limiter (evalsha,
    script_load), so AsyncRedisGCRA and the gateway take it in place of a
    `redis.asyncio.Redis`. Use it from one event loop.
    """

    __slots__ = ("_closes", "_connecting", "_protocol")

    def _start(self) -> None:
        self._protocol: _ReplyProtocol | None = None
        self._connecting: asyncio.Future[_ReplyProtocol] | None = None
        self._closes = 0

    async def execute(self, command: bytes) -> Any:
        """Send one packed command (`pack_command`) and await its reply.

        Raises ResponseError (NoScriptError, ...) for an error reply,
        ConnectionError or TimeoutError when Redis cannot answer.
        """
        protocol = self._protocol
        if protocol is None or protocol.error is not None:
            protocol = await self._connect()
        reused = protocol.replies > 0
        try:
            return await protocol.send(command)
        except RedisConnectionError as error:
            if (
                not reused
                or protocol.generation != self._closes
                or isinstance(error, _MalformedReply)
            ):
                raise  # a first use, an aclose, or a reply that may have run the command
        return await (await self._connect()).send(command)

    async def _connect(self) -> _ReplyProtocol:
        # Concurrent callers share one connection attempt.
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._open())
            # Cleared when done even if every waiter gave up before: a later
            # call must not get this attempt's stale outcome.
            connecting.add_done_callback(self._connect_done)
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if connecting.cancelled() and caller is not None and not caller.cancelling():
                raise RedisConnectionError(f"{self._address}: client closed") from None
            raise  # the caller itself was cancelled

    def _connect_done(self, connecting: asyncio.Future[_ReplyProtocol]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # seen: a failure no caller awaited any more is not logged

    async def _open(self) -> _ReplyProtocol:
        address = self._address
        current = self._protocol
        if current is not None and current.error is None:
            return current
        generation = self._closes
        login = address.login()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(address.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _ReplyProtocol(address, len(login), generation),
                    address.host,
                    address.port,
                )
        except OSError as error:  # TimeoutError included
            raise _connect_failed(address, error)  # noqa: B904 (chained inside)
        try:
            for command in login:
                await protocol.send(command)
        except BaseException:
            protocol.fail(RedisConnectionError(f"{address}: login failed"))
            raise
        if generation != self._closes:  # aclose ran meanwhile: this connection is not kept
            closed = RedisConnectionError(f"{address}: client closed")
            protocol.fail(closed)
            raise closed
        self._protocol = protocol
        return protocol

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: str | int) -> Any:
        return await self.execute(pack_command("EVALSHA", sha, numkeys, *keys_and_args))

    async def script_load(self, script: str) -> Any:
        sha = await self.execute(pack_command("SCRIPT", "LOAD", script))
        return sha.decode() if isinstance(sha, bytes) else sha

    async def ping(self) -> bool:
        return bool(await self.execute(pack_command("PING")) == b"PONG")

    async def aclose(self) -> None:
        """Close the connection and cancel one being opened.

        Calls in flight fail with ConnectionError and are not sent again; a
        later call opens a new connection.
        """
        self._closes += 1
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.fail(RedisConnectionError(f"{self._address}: client closed"))
