"""payments: charges orders, and fails on purpose when told to.

Its settings are bound to the config entry `default/shop/payments.yaml`
(seeded from config/payments.yaml) and change while it runs:

    failing_instance: payments-2   # that replica fails every charge, at once
    mode: error                    # error: answer 500; slow: wait slow_ms, then answer
    slow_ms: 3000
    failure_rate: 0.0              # every replica fails this share of charges (0..1)

A charge carries an `Idempotency-Key` (the order id): a charge retried on
another replica after an error or a timeout is recorded once, and the retry
answers with the first charge. That is what lets the orders service retry a
POST, so one failing replica costs no order: the retry goes to another
replica, and after a few failures the failing one is ejected from orders'
balancer altogether.

    CROSSWAY_SERVICE=payments CROSSWAY_INSTANCE_ID=payments-2 CROSSWAY_PORT=8302 \\
        uvicorn payments:app --port 8302
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from shopkit import SharedDb, configure_logging, error, install_error_handler

import crossway

configure_logging()
log = logging.getLogger("payments")

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    idempotency_key TEXT PRIMARY KEY, charge_id TEXT NOT NULL, order_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, charged_by TEXT NOT NULL, charged_at REAL NOT NULL);
"""


class PaymentSettings(BaseModel):
    """What operators change while payments runs (config `shop/payments.yaml`)."""

    failing_instance: str = ""
    mode: Literal["error", "slow"] = "error"
    slow_ms: int = Field(3000, ge=0, le=60_000)
    failure_rate: float = Field(0.0, ge=0.0, le=1.0)


class ChargeRequest(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=0)


client = crossway.Client()
settings = client.bind(PaymentSettings, "payments.yaml", group="shop")
db = SharedDb("payments", SCHEMA)
app = FastAPI(title="payments", lifespan=crossway.lifespan(client))
app.add_middleware(crossway.CrosswayMiddleware, client=client)
app.add_route("/metrics", crossway.metrics_endpoint(client))
install_error_handler(app)


@settings.on_change
def announce(old: PaymentSettings, new: PaymentSettings) -> None:
    if new.failing_instance == client.instance_id:
        log.warning("%s fails every charge from now on (mode %s)", client.instance_id, new.mode)
    elif old.failing_instance == client.instance_id:
        log.warning("%s charges normally again", client.instance_id)


def failure(why: str) -> JSONResponse:
    return error(500, "payment_failed", f"{client.instance_id} refused the charge: {why}")


@app.post("/charges", status_code=201, response_model=None)
async def charge(
    body: ChargeRequest,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> dict[str, Any] | JSONResponse:
    current = settings.value
    if current.failing_instance == client.instance_id:
        if current.mode == "error":
            return failure("failing_instance is set to this replica")
        await asyncio.sleep(current.slow_ms / 1000)
    if random.random() < current.failure_rate:
        return failure(f"failure_rate is {current.failure_rate:g}")
    key = idempotency_key or body.order_id

    def record(conn: sqlite3.Connection) -> dict[str, Any]:
        conn.execute(
            "INSERT OR IGNORE INTO charges VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                f"ch-{uuid.uuid4().hex[:12]}",
                body.order_id,
                body.amount_cents,
                client.instance_id,
                time.time(),
            ),
        )
        row = conn.execute("SELECT * FROM charges WHERE idempotency_key = ?", (key,)).fetchone()
        return dict(row)

    charged = await db.run(record)
    return {**charged, "answered_by": client.instance_id}


@app.get("/settings")
async def current_settings() -> dict[str, Any]:
    """The bound settings, the version they came from, and whether this replica fails."""
    value = settings.value
    return {
        "instance": client.instance_id,
        "failing": value.failing_instance == client.instance_id,
        "version": settings.version,
        **value.model_dump(),
    }


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "instance": client.instance_id}
