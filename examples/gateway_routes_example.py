"""Load examples/gateway.yaml, match a few requests and print what the
gateway would do with each (no network: routes and actions are pure)."""

from __future__ import annotations

import random
from pathlib import Path

from crossway.proxy.routes import decide, load_config

CONFIG = Path(__file__).with_name("gateway.yaml")

REQUESTS = [
    ("GET", "/orders/17", "shop.local", {}, ""),
    ("GET", "/api/catalog/items", "shop.local", {"x-beta": "1"}, "page=2"),
    ("GET", "/users/42", "api.example.com", {}, ""),
    (
        "OPTIONS",
        "/users/42",
        "api.example.com",
        {"origin": "https://app.example.com", "access-control-request-method": "PUT"},
        "",
    ),
    ("GET", "/shop/cart", "old.example.com", {}, "item=3"),
    ("GET", "/healthz", "any", {}, ""),
    ("GET", "/nowhere", "any", {}, ""),
]


def main() -> None:
    config = load_config(CONFIG)
    rng = random.Random(1).random
    print(f"configuration {config.version}: {len(config.routes)} routes")
    for method, path, host, headers, query in REQUESTS:
        found = config.table.match(method, path, host, headers, query)
        if found is None:
            print(f"{method} {path} -> 404 no_route")
            continue
        decision = decide(
            found.route.actions,
            found.captures,
            method=method,
            scheme="http",
            host=host,
            path=path,
            query=query,
            headers=headers,
            rng=rng,
        )
        if decision.local is not None:
            print(
                f"{method} {path} -> [{found.name}] answer {decision.local.status}"
                f" {dict(decision.local.headers)}"
            )
        else:
            assert decision.backend is not None
            print(
                f"{method} {path} -> [{found.name}] {decision.backend.service} {decision.path}"
                + (f" (mirrored to {decision.mirror})" if decision.mirror else "")
            )
    assert config.table.match("GET", "/nowhere") is None


if __name__ == "__main__":
    main()
