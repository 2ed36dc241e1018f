"""web: the shop's HTML pages, served through the gateway at http://127.0.0.1:7780/.

    /                  the products, with a live stock widget per product
    /products/{id}     one product: the price after the live discount, an order form
    POST /order        place an order (form), then see it at /orders/{id}
    /orders            the most recent orders: status, which replicas served them

Everything it shows comes from `orders`, called by name through a
declarative client on the SDK's HTTP client. The stock widget is the
browser's: a few lines of JavaScript fetch `/api/inventory/items/{id}`
through the gateway, whose route splits that path 90/10 between `inventory`
and `inventory-canary`, so roughly one widget in ten says "v2".

The page's title, banner and accent colour are bound to the config entry
`default/shop/web.yaml`: `crossway config set shop/web.yaml` changes them for
the next page view, with no restart.

    CROSSWAY_SERVICE=web CROSSWAY_PORT=8001 uvicorn web:app --port 8001
"""

# mypy: disable-error-code="empty-body"
# (the declarative client's bodies are never run: their signatures are the contract)

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from html import escape
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field
from shopkit import configure_logging, money

import crossway
from crossway.core.errors import CrosswayError

configure_logging()


class WebSettings(BaseModel):
    """What operators change while web runs (config `shop/web.yaml`)."""

    title: str = Field("Crossway Tea Shop", min_length=1, max_length=80)
    banner: str = Field("", max_length=200)
    accent: str = Field("#2f6f4f", pattern=r"^#[0-9a-fA-F]{6}$")


class Orders(crossway.Api):
    base_url = "http://orders"  # a service name, resolved through discovery

    @crossway.get("/products")
    async def products(self) -> dict[str, Any]: ...

    @crossway.get("/quote/{item_id}")
    async def quote(self, item_id: int, quantity: int = 1) -> dict[str, Any]: ...

    @crossway.post("/orders")
    async def place(
        self, body: dict[str, Any], key: Annotated[str, crossway.Header("Idempotency-Key")]
    ) -> dict[str, Any]: ...

    @crossway.get("/orders")
    async def recent(self, limit: int = 20) -> list[dict[str, Any]]: ...

    @crossway.get("/orders/{order_id}")
    async def order(self, order_id: str) -> dict[str, Any]: ...


client = crossway.Client()
settings = client.bind(WebSettings, "web.yaml", group="shop")


@asynccontextmanager
async def calling_orders(app: FastAPI) -> AsyncIterator[None]:
    async with client.http(timeout=15.0) as http:
        app.state.orders = Orders(http)
        yield


app = FastAPI(title="web", lifespan=crossway.lifespan(client, calling_orders))
app.add_middleware(crossway.CrosswayMiddleware, client=client)
app.add_route("/metrics", crossway.metrics_endpoint(client))


def orders_api(request: Request) -> Orders:
    api: Orders = request.app.state.orders
    return api


# -- pages -------------------------------------------------------------------------------


@app.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    catalogue = await orders_api(request).products()
    cards = "".join(product_card(item) for item in catalogue["items"])
    discount = catalogue["discount_percent"]
    sale = f"<p class=sale>{discount:g}% off everything</p>" if discount else ""
    return page("Products", f"{sale}<div class=grid>{cards}</div>")


def product_card(item: dict[str, Any]) -> str:
    was = item["price_cents"]
    now = item["price_now_cents"]
    price = f"<s>{money(was)}</s> {money(now)}" if now != was else money(now)
    return (
        f"<a class=card href='/products/{item['id']}'><h3>{escape(item['name'])}</h3>"
        f"<p class=price>€ {price}</p>{stock_widget(item['id'])}</a>"
    )


def stock_widget(item_id: int) -> str:
    return f"<p class=stock data-stock-item='{item_id}'>checking stock…</p>"


@app.get("/products/{item_id}", response_class=HTMLResponse)
async def product(item_id: int, request: Request) -> HTMLResponse:
    quote = await orders_api(request).quote(item_id)
    item = quote["item"]
    options = "".join(f"<option>{n}</option>" for n in range(1, quote["max_quantity"] + 1))
    body = f"""
      <h2>{escape(item["name"])}</h2>
      <p class=price>€ {money(quote["total_cents"])}</p>
      {stock_widget(item["id"])}
      <form method=post action=/order>
        <input type=hidden name=item_id value="{item["id"]}">
        <input type=hidden name=key value="{uuid.uuid4()}">
        <label>Quantity <select name=quantity>{options}</select></label>
        <button>Order</button>
      </form>
      <p class=meta>quoted by {escape(quote["quoted_by"])}</p>"""
    return page(item["name"], body)


@app.post("/order", response_model=None)
async def order(request: Request) -> RedirectResponse | HTMLResponse:
    """The order form: place it (the form's key makes a resubmission safe),
    then show it. A failed order shows why, with the callee's status."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    try:
        item_id = int(form["item_id"][0])
        quantity = int(form.get("quantity", ["1"])[0])
    except (KeyError, ValueError):
        return page("Bad order", "<p>item_id and quantity must be numbers.</p>", status=400)
    key = form.get("key", [str(uuid.uuid4())])[0][:128]
    placed = await orders_api(request).place({"item_id": item_id, "quantity": quantity}, key=key)
    return RedirectResponse(f"/orders/{placed['id']}", status_code=303)


@app.get("/orders", response_class=HTMLResponse)
async def recent_orders(request: Request) -> HTMLResponse:
    orders = await orders_api(request).recent(limit=25)
    rows = "".join(order_row(o) for o in orders) or "<tr><td colspan=7>No orders yet.</td></tr>"
    head = "<tr><th>order<th>item<th>qty<th>total<th>status<th>placed by<th>charged by"
    return page("Recent orders", f"<table>{head}{rows}</table>")


def order_row(o: dict[str, Any]) -> str:
    return (
        f"<tr><td><a href='/orders/{escape(o['id'])}'>{escape(o['id'])}</a>"
        f"<td>{escape(o['item_name'])}<td>{o['quantity']}<td>€ {money(o['total_cents'])}"
        f"<td class='status {escape(o['status'])}'>{escape(o['status'])}"
        f"<td>{escape(o['placed_by'])}<td>{escape(o['charged_by'])}"
    )


@app.get("/orders/{order_id}", response_class=HTMLResponse)
async def one_order(order_id: str, request: Request) -> HTMLResponse:
    o = await orders_api(request).order(order_id)
    when = datetime.fromtimestamp(o["created_at"], UTC).strftime("%H:%M:%S UTC")
    body = f"""
      <h2>Order {escape(o["id"])}</h2>
      <p class='status {escape(o["status"])}'>{escape(o["status"])}</p>
      <p>{o["quantity"]} × {escape(o["item_name"])}, € {money(o["total_cents"])}</p>
      <p class=meta>placed at {when} by {escape(o["placed_by"])}, charged by
        {escape(o["charged_by"] or "nobody")} {escape(o["detail"])}</p>
      <p><a href=/orders>all recent orders</a></p>"""
    return page(f"Order {o['id']}", body)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "instance": client.instance_id}


@app.exception_handler(CrosswayError)
async def callee_failed(request: Request, exc: Exception) -> HTMLResponse:
    """A page for a failed call to orders (or below it), with its status."""
    assert isinstance(exc, CrosswayError)
    # A 4xx from orders is the visitor's to fix (a quantity out of range, an
    # unknown product): show it as such, not as a failure of the shop.
    status = exc.status_code if isinstance(exc, crossway.ClientError) else exc.status
    body = f"<h2>Sorry, that did not work</h2><p>{escape(exc.message)}</p>"
    return page("Error", body, status=status)


# -- layout ------------------------------------------------------------------------------


def page(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    current = settings.value
    banner = f"<div class=banner>{escape(current.banner)}</div>" if current.banner else ""
    html = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8>
<title>{escape(title)} · {escape(current.title)}</title>
<style>
  body {{ font: 16px/1.5 system-ui, sans-serif; margin: 0; color: #222; }}
  header {{ background: {current.accent}; color: #fff; padding: .8rem 1.5rem; }}
  header a {{ color: #fff; margin-right: 1.2rem; text-decoration: none; }}
  main {{ padding: 1rem 1.5rem; max-width: 60rem; }}
  .banner {{ background: #fff3c4; padding: .6rem 1.5rem; font-weight: 600; }}
  .grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr));
           gap: 1rem; }}
  .card {{ border: 1px solid #ddd; border-radius: 8px; padding: .8rem; color: inherit;
           text-decoration: none; }}
  .price {{ font-size: 1.2rem; }} .sale {{ color: #b00; font-weight: 600; }}
  .stock, .meta {{ color: #666; font-size: .85rem; }}
  .v2 {{ color: #7a2cb8; font-weight: 600; }}
  .status.paid {{ color: #1a7f37; }} .status.failed, .status.expired {{ color: #b00; }}
  table {{ border-collapse: collapse; }} td, th {{ padding: .3rem .7rem; text-align: left;
           border-bottom: 1px solid #eee; }}
</style></head>
<body><header><strong>{escape(current.title)}</strong> &nbsp;
  <a href=/>products</a><a href=/orders>recent orders</a></header>
{banner}<main>{body}</main>
<script>
// The stock widget: asks the gateway's /api/inventory route (a 90/10 split
// between inventory v1 and its canary v2) and says which version answered.
async function refreshStock() {{
  for (const el of document.querySelectorAll("[data-stock-item]")) {{
    try {{
      const r = await fetch("/api/inventory/items/" + el.dataset.stockItem);
      const item = await r.json();
      const ordered = item.ordered === undefined ? "" : ` · ${{item.ordered}} ordered`;
      el.textContent = `${{item.stock}} in stock${{ordered}} · inventory ${{item.version}}`;
      el.classList.toggle("v2", item.version === "v2");
    }} catch (e) {{ el.textContent = "stock unavailable"; }}
  }}
}}
refreshStock(); setInterval(refreshStock, 5000);
</script></body></html>"""
    return HTMLResponse(html, status_code=status)
