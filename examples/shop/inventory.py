"""inventory: the shop's items, their prices and stock, and reservations.

`inventory` (label `version=v1`) and `inventory-canary` (the same code with
`version=v2`) share one stock: a canary is a new version of the code, not a
second warehouse. The gateway splits `/api/inventory` 90/10 between them, and
every answer says which version served it (`"version"`); v2 also says how
many units orders took so far (`"ordered"`), the feature the canary brings.

A reservation is keyed by the order id, so a retried `POST /reservations`
(the orders service retries on another instance after a broken connection)
reserves once. When an item runs low, a delivery tops it up: the demo's
traffic can run for hours without selling out.

    CROSSWAY_SERVICE=inventory CROSSWAY_PORT=8201 uvicorn inventory:app --port 8201
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from shopkit import SharedDb, configure_logging, install_error_handler

import crossway

configure_logging()

CATALOGUE: list[tuple[int, str, int]] = [
    (1, "Cast-iron kettle", 4_500),
    (2, "Porcelain teapot", 2_450),
    (3, "Stoneware mug", 900),
    (4, "Sencha, 100 g", 1_150),
    (5, "Assam, 250 g", 990),
    (6, "Tea infuser", 650),
]
INITIAL_STOCK = 500
LOW_STOCK = 20
DELIVERY = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL,
    stock INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY, item_id INTEGER NOT NULL, quantity INTEGER NOT NULL,
    reserved_at REAL NOT NULL, reserved_by TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reservations_by_item ON reservations (item_id);
"""


class Reservation(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    item_id: int
    quantity: int = Field(ge=1, le=100)


client = crossway.Client()
db = SharedDb("inventory", SCHEMA)
app = FastAPI(title="inventory", lifespan=crossway.lifespan(client))
app.add_middleware(crossway.CrosswayMiddleware, client=client)
app.add_route("/metrics", crossway.metrics_endpoint(client))
install_error_handler(app)


def version() -> str:
    return client.labels.get("version", "v1")


def _seed(conn: sqlite3.Connection) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO items (id, name, price_cents, stock) VALUES (?, ?, ?, ?)",
        [(item_id, name, price, INITIAL_STOCK) for item_id, name, price in CATALOGUE],
    )


def _describe(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": row["id"],
        "name": row["name"],
        "price_cents": row["price_cents"],
        "stock": row["stock"],
        "version": version(),
        "served_by": client.instance_id,
    }
    if version() == "v2":  # the canary's addition: how many units orders took so far
        item["ordered"] = conn.execute(
            "SELECT COALESCE(SUM(quantity), 0) FROM reservations WHERE item_id = ?", (row["id"],)
        ).fetchone()[0]
    return item


@app.get("/items")
async def items() -> list[dict[str, Any]]:
    def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        _seed(conn)
        rows = conn.execute("SELECT * FROM items ORDER BY id").fetchall()
        return [_describe(conn, row) for row in rows]

    return await db.run(read)


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, Any]:
    def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
        _seed(conn)
        row = conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else _describe(conn, row)

    found = await db.run(read)
    if found is None:
        raise HTTPException(404, f"no item {item_id}")
    return found


@app.post("/reservations", status_code=201)
async def reserve(body: Reservation) -> dict[str, Any]:
    """Take `quantity` units for an order, once per order id."""

    def take(conn: sqlite3.Connection) -> dict[str, Any] | str:
        _seed(conn)
        seen = conn.execute(
            "SELECT * FROM reservations WHERE order_id = ?", (body.order_id,)
        ).fetchone()
        if seen is not None:
            return dict(seen)
        row = conn.execute("SELECT stock FROM items WHERE id = ?", (body.item_id,)).fetchone()
        if row is None:
            return "missing"
        if row["stock"] < body.quantity:
            return "sold out"
        stock = row["stock"] - body.quantity
        if stock < LOW_STOCK:
            stock += DELIVERY  # a delivery arrives: the demo never sells out for good
        conn.execute("UPDATE items SET stock = ? WHERE id = ?", (stock, body.item_id))
        conn.execute(
            "INSERT INTO reservations VALUES (?, ?, ?, ?, ?)",
            (body.order_id, body.item_id, body.quantity, time.time(), client.instance_id),
        )
        return {**body.model_dump(), "stock_left": stock}

    outcome = await db.run(take)
    if outcome == "missing":
        raise HTTPException(404, f"no item {body.item_id}")
    if outcome == "sold out":
        raise HTTPException(409, f"item {body.item_id} has fewer than {body.quantity} in stock")
    assert isinstance(outcome, dict)
    return {**outcome, "version": version(), "served_by": client.instance_id}


@app.delete("/reservations/{order_id}")
async def release(order_id: str) -> dict[str, Any]:
    """Give an order's units back (an order that failed or expired); idempotent."""

    def give_back(conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "SELECT item_id, quantity FROM reservations WHERE order_id = ?", (order_id,)
        ).fetchone()
        if row is None:
            return 0
        conn.execute(
            "UPDATE items SET stock = stock + ? WHERE id = ?", (row["quantity"], row["item_id"])
        )
        conn.execute("DELETE FROM reservations WHERE order_id = ?", (order_id,))
        return int(row["quantity"])

    released = await db.run(give_back)
    return {"order_id": order_id, "released": released, "version": version()}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "instance": client.instance_id, "version": version()}
