"""What the four services of the demo shop share: where their data lives, a
small SQLite helper, logging, and JSON errors for the SDK's exceptions.

Theory of operation
-------------------
Replicas of one service are separate processes (two `orders`, two
`payments`; `inventory` and `inventory-canary` share their stock), so their
state lives in SQLite files they all open, under the data directory that
`crossway up` hands every service: `CROSSWAY_CACHE_DIR` is
`<data dir>/cache`, and the shop keeps `<data dir>/shop/*.sqlite` beside it
(`SHOP_DATA_DIR` overrides; run by hand, `.crossway/shop`). Each file is in
WAL mode with a busy timeout, and every write is one `BEGIN IMMEDIATE`
transaction, so concurrent replicas serialise instead of failing.

sqlite3 blocks, so every statement runs in a worker thread
(`asyncio.to_thread`); a lock keeps one statement at a time on the single
connection of a process. The demo's rates (tens of requests a second) are
far below what this serialises.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crossway.core.errors import CrosswayError

T = TypeVar("T")


def configure_logging() -> None:
    """One line per record, as `crossway up` prefixes each with the replica."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request: too many


def data_dir() -> Path:
    """Where the shop keeps its SQLite files (created if missing)."""
    explicit = os.environ.get("SHOP_DATA_DIR")
    if explicit:
        path = Path(explicit)
    else:
        cache = Path(os.environ.get("CROSSWAY_CACHE_DIR", ".crossway/cache"))
        path = cache.parent / "shop"
    path.mkdir(parents=True, exist_ok=True)
    return path


class SharedDb:
    """One SQLite file shared by every replica of a service; see the header."""

    def __init__(self, name: str, schema: str) -> None:
        self.path = data_dir() / f"{name}.sqlite"
        self._schema = schema
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
            conn.isolation_level = None  # transactions are explicit (BEGIN IMMEDIATE)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(self._schema)
            self._conn = conn
        return self._conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` in one write transaction, off the event loop."""
        return await asyncio.to_thread(self._transaction, work)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


CODES = {400: "invalid_argument", 404: "not_found", 409: "conflict", 422: "invalid_argument"}


def error(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    """Crossway's error shape: `{"error": {"code", "message", ...}}`."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status)


def install_error_handler(app: FastAPI) -> None:
    """Answer every error in Crossway's JSON shape, never a traceback page:
    the SDK's (no instance, breaker open, a callee's error status, deadline)
    with their status, FastAPI's own (404, a body that does not validate)
    with theirs."""

    async def crossway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CrosswayError)
        logging.getLogger("shop").warning("%s %s: %s", request.method, request.url.path, exc)
        return error(exc.status, exc.code, exc.message)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail))

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(part) for part in first["loc"])
        return error(422, "invalid_argument", f"{field}: {first['msg']}", field=field)

    app.add_exception_handler(CrosswayError, crossway_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)


def money(cents: int) -> str:
    return f"{cents / 100:,.2f}"
