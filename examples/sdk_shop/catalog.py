"""The catalog service of the example shop: items and their prices.

Every instance registers itself with the control plane (the lifespan), counts
and traces the requests it serves (the middleware), and says which instance
answered, so a caller can watch the balancing:

    CROSSWAY_URL=http://127.0.0.1:7700 CROSSWAY_SERVICE=catalog CROSSWAY_PORT=8101 \\
        uvicorn --app-dir examples/sdk_shop catalog:app --port 8101
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import crossway

client = crossway.Client()  # CROSSWAY_URL, CROSSWAY_SERVICE, CROSSWAY_PORT … from the environment

app = FastAPI(title="catalog", lifespan=crossway.lifespan(client))
app.add_middleware(crossway.CrosswayMiddleware, client=client, rate_limit="2000/s")
app.add_route("/metrics", crossway.metrics_endpoint(client))


class Item(BaseModel):
    id: int
    name: str
    price: float
    served_by: str


ITEMS = {1: ("kettle", 30.0), 2: ("teapot", 24.5), 3: ("mug", 6.0), 4: ("tea, 250 g", 9.9)}


@app.get("/items/{item_id}")
async def item(item_id: int) -> Item:
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    name, price = ITEMS[item_id]
    return Item(id=item_id, name=name, price=price, served_by=client.instance_id)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "instance": client.instance_id}
