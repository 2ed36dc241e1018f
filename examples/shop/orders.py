"""orders: quotes and places orders; the heart of the demo's call graph.

    web -> orders -> inventory   (items, stock, reservations)
                  -> payments    (charges)

It calls `inventory` and `payments` by service name through declarative
clients on the SDK's HTTP client: discovery, balancing, retries under a
budget, a circuit breaker and outlier ejection happen underneath, with the
policies `crossway up` stores from crossway.yaml (`policies:`). Placing an
order is safe to retry end to end: web sends an `Idempotency-Key`, the
reservation is keyed by the order id, and so is the charge.

Two replicas run; a job that must run once per cluster — expiring orders left
`pending` by a process that died mid-order, and giving their stock back — runs
on the elected leader only (`client.scheduled`), and logs
`leader orders-1 ran cleanup …` every 10 s. Restart the leader and the other
replica takes over the same timetable.

Settings (`default/shop/orders.yaml`, live): `discount_percent`,
`max_quantity`, `pending_timeout_s`.

    CROSSWAY_SERVICE=orders CROSSWAY_PORT=8101 uvicorn orders:app --port 8101
"""

# mypy: disable-error-code="empty-body"
# (the declarative clients' bodies are never run: their signatures are the contract)

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from shopkit import SharedDb, configure_logging, error, install_error_handler

import crossway
from crossway.core.errors import CrosswayError

configure_logging()
log = logging.getLogger("orders")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE NOT NULL, item_id INTEGER NOT NULL,
    item_name TEXT NOT NULL, quantity INTEGER NOT NULL, total_cents INTEGER NOT NULL,
    status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', placed_by TEXT NOT NULL,
    charged_by TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_time ON orders (created_at);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, created_at);
"""


class OrderSettings(BaseModel):
    """What operators change while orders runs (config `shop/orders.yaml`)."""

    discount_percent: float = Field(0.0, ge=0, le=90)
    max_quantity: int = Field(5, ge=1, le=100)
    pending_timeout_s: float = Field(30.0, ge=5)


class NewOrder(BaseModel):
    item_id: int
    quantity: int = Field(1, ge=1)


class Inventory(crossway.Api):
    base_url = "http://inventory"  # a service name, resolved through discovery

    @crossway.get("/items")
    async def items(self) -> list[dict[str, Any]]: ...

    @crossway.get("/items/{item_id}")
    async def item(self, item_id: int) -> dict[str, Any]: ...

    @crossway.post("/reservations")
    async def reserve(self, body: dict[str, Any]) -> dict[str, Any]: ...

    @crossway.delete("/reservations/{order_id}")
    async def release(self, order_id: str) -> dict[str, Any]: ...


class Payments(crossway.Api):
    base_url = "http://payments"

    @crossway.post("/charges")
    async def charge(
        self, body: dict[str, Any], key: Annotated[str, crossway.Header("Idempotency-Key")]
    ) -> dict[str, Any]: ...


client = crossway.Client()
settings = client.bind(OrderSettings, "orders.yaml", group="shop")
db = SharedDb("orders", SCHEMA)


@asynccontextmanager
async def callees(app: FastAPI) -> AsyncIterator[None]:
    # Made after the client started (in this process), closed before it stops.
    async with client.http(timeout=10.0) as http:
        app.state.inventory = Inventory(http)
        app.state.payments = Payments(http)
        yield


app = FastAPI(title="orders", lifespan=crossway.lifespan(client, callees))
app.add_middleware(crossway.CrosswayMiddleware, client=client)
app.add_route("/metrics", crossway.metrics_endpoint(client))
install_error_handler(app)


def price(item: dict[str, Any], quantity: int) -> int:
    """Total in cents after the live discount."""
    cents: int = item["price_cents"]
    return round(cents * quantity * (1 - settings.value.discount_percent / 100))


@app.get("/products")
async def products(request: Request) -> dict[str, Any]:
    items = await request.app.state.inventory.items()
    for item in items:
        item["price_now_cents"] = price(item, 1)
    return {"discount_percent": settings.value.discount_percent, "items": items}


@app.get("/quote/{item_id}")
async def quote(item_id: int, request: Request, quantity: int = 1) -> dict[str, Any]:
    check_quantity(quantity)
    item = await request.app.state.inventory.item(item_id)
    return {
        "item": item,
        "quantity": quantity,
        "total_cents": price(item, quantity),
        "discount_percent": settings.value.discount_percent,
        "max_quantity": settings.value.max_quantity,
        "quoted_by": client.instance_id,
    }


def check_quantity(quantity: int) -> None:
    if not 1 <= quantity <= settings.value.max_quantity:
        raise HTTPException(422, f"quantity must be between 1 and {settings.value.max_quantity}")


# -- placing an order ------------------------------------------------------------------


@app.post("/orders", status_code=201, response_model=None)
async def place(
    body: NewOrder,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> dict[str, Any] | JSONResponse:
    """Reserve the stock, charge, and record the outcome. A repeated
    `Idempotency-Key` answers with the order it already made (200)."""
    check_quantity(body.quantity)
    state = request.app.state
    item = await state.inventory.item(body.item_id)
    order, created = await db.run(
        lambda conn: create_pending(conn, item, body.quantity, idempotency_key)
    )
    if not created:  # a retry, or the same form sent twice: answer as the first time did
        if order["status"] == "failed":
            return error(502, "order_failed", order["detail"], order=order)
        response.status_code = 200
        return order
    order_id = order["id"]
    try:
        await state.inventory.reserve(
            {"order_id": order_id, "item_id": body.item_id, "quantity": body.quantity}
        )
    except CrosswayError as exc:
        return await fail(order_id, exc)
    try:
        paid = await state.payments.charge(
            {"order_id": order_id, "amount_cents": order["total_cents"]}, key=order_id
        )
    except CrosswayError as exc:
        return await fail(order_id, exc)
    return await db.run(lambda conn: settle(conn, order_id, "paid", "", paid["charged_by"]))


def create_pending(
    conn: sqlite3.Connection, item: dict[str, Any], quantity: int, key: str | None
) -> tuple[dict[str, Any], bool]:
    if key is not None:
        seen = conn.execute("SELECT * FROM orders WHERE idempotency_key = ?", (key,)).fetchone()
        if seen is not None:
            return dict(seen), False
    order_id = f"o-{uuid.uuid4().hex[:10]}"
    now = time.time()
    conn.execute(
        "INSERT INTO orders (id, idempotency_key, item_id, item_name, quantity, total_cents,"
        " status, placed_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            order_id,
            key or order_id,
            item["id"],
            item["name"],
            quantity,
            price(item, quantity),
            "pending",
            client.instance_id,
            now,
            now,
        ),
    )
    return dict(conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()), True


def settle(
    conn: sqlite3.Connection, order_id: str, status: str, detail: str, charged_by: str = ""
) -> dict[str, Any]:
    # Only a pending order moves on: one the cleanup job expired stays expired.
    conn.execute(
        "UPDATE orders SET status = ?, detail = ?, charged_by = ?, updated_at = ?"
        " WHERE id = ? AND status = 'pending'",
        (status, detail, charged_by, time.time(), order_id),
    )
    return dict(conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone())


async def fail(order_id: str, exc: CrosswayError) -> JSONResponse:
    """Record why the order failed, give its stock back, and answer with the
    callee's status: 409 sold out, 503 no payments instance, 502 otherwise.

    The stock goes back even when the reservation itself seemed to fail: its
    answer may have been lost after it was made, and releasing an order that
    holds nothing is a no-op."""
    try:
        await app.state.inventory.release(order_id)
    except CrosswayError as release_error:  # the cleanup job's sweep cannot see it: log it
        log.warning("order %s: stock not released: %s", order_id, release_error)
    order = await db.run(lambda conn: settle(conn, order_id, "failed", exc.message))
    log.warning("order %s failed: %s", order_id, exc.message)
    return error(exc.status, exc.code, exc.message, order=order)


# -- reading orders ----------------------------------------------------------------------


@app.get("/orders")
async def recent(limit: int = 20) -> list[dict[str, Any]]:
    limit = max(1, min(limit, 200))

    def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        rows = conn.execute("SELECT * FROM orders ORDER BY created_at DESC LIMIT ?", (limit,))
        return [dict(row) for row in rows]

    return await db.run(read)


@app.get("/orders/{order_id}")
async def one(order_id: str) -> dict[str, Any]:
    row = await db.run(
        lambda conn: conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    )
    if row is None:
        raise HTTPException(404, f"no order {order_id}")
    return dict(row)


# -- the leader-only job -------------------------------------------------------------------


@client.scheduled(every="10s", name="orders-cleanup")
async def cleanup() -> None:
    """Expire orders pending longer than `pending_timeout_s` (their process
    died mid-order) and give their stock back. On the leader only."""
    cutoff = time.time() - settings.value.pending_timeout_s

    def expire(conn: sqlite3.Connection) -> list[str]:
        stale = [
            row["id"]
            for row in conn.execute(
                "SELECT id FROM orders WHERE status = 'pending' AND created_at < ?", (cutoff,)
            )
        ]
        for order_id in stale:
            settle(conn, order_id, "expired", "left pending by a process that stopped")
        return stale

    inventory: Inventory | None = getattr(app.state, "inventory", None)
    if inventory is None:  # the job can fall due before the lifespan made the clients
        return
    stale = await db.run(expire)
    for order_id in stale:
        try:
            await inventory.release(order_id)
        except CrosswayError as exc:
            log.warning("order %s expired, stock not released: %s", order_id, exc)
    log.info(
        "leader %s ran cleanup: %d stale pending order(s) expired", client.instance_id, len(stale)
    )


@app.get("/settings")
async def current_settings() -> dict[str, Any]:
    return {"version": settings.version, **settings.value.model_dump()}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "instance": client.instance_id}
