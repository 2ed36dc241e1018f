"""The orders service of the example shop: quotes for items of the catalog.

It calls `catalog` by name through a declarative client (discovery, balancing,
retries and ejection happen underneath), and its settings are bound to the
config entry `shop/orders.yaml`, so a publish changes them while it runs:

    CROSSWAY_URL=http://127.0.0.1:7700 CROSSWAY_SERVICE=orders CROSSWAY_PORT=8100 \\
        uvicorn --app-dir examples/sdk_shop orders:app --port 8100
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

import crossway


class OrderSettings(BaseModel):
    """What operators may change while orders runs (config `shop/orders.yaml`)."""

    max_quantity: int = Field(10, ge=1)
    discount_percent: float = Field(0.0, ge=0, le=90)
    banner: str = "Thanks for shopping with us"


class Item(BaseModel):
    id: int
    name: str
    price: float
    served_by: str


class Catalog(crossway.Api):
    base_url = "http://catalog"  # a service name: resolved through discovery

    @crossway.get("/items/{item_id}")
    async def item(self, item_id: int) -> Item: ...


client = crossway.Client()
settings = client.bind(OrderSettings, "orders.yaml", group="shop")


@asynccontextmanager
async def calling_catalog(app: FastAPI) -> AsyncIterator[None]:
    # Made after the client started (in the worker process), closed before it stops.
    async with client.http(timeout=5.0) as http:
        app.state.catalog = Catalog(http)
        yield


app = FastAPI(title="orders", lifespan=crossway.lifespan(client, calling_catalog))
app.add_middleware(crossway.CrosswayMiddleware, client=client)
app.add_route("/metrics", crossway.metrics_endpoint(client))


@app.get("/quote/{item_id}")
async def quote(item_id: int, request: Request, quantity: int = 1) -> dict[str, Any]:
    if not 1 <= quantity <= settings.max_quantity:
        raise HTTPException(422, f"quantity must be between 1 and {settings.max_quantity}")
    try:
        item = await request.app.state.catalog.item(item_id)
    except crossway.NotFoundError:
        raise HTTPException(404, f"no item {item_id}") from None
    total = item.price * quantity * (1 - settings.discount_percent / 100)
    return {
        "item": item.name,
        "quantity": quantity,
        "total": round(total, 2),
        "banner": settings.banner,
        "catalog_instance": item.served_by,
        "orders_instance": client.instance_id,
    }


@app.get("/settings")
async def current_settings() -> dict[str, Any]:
    """The bound settings, with the version they came from and refusals so far."""
    return {
        "version": settings.version,
        "rejected": settings.rejected,
        **settings.value.model_dump(),
    }


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "instance": client.instance_id}
