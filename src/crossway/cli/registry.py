"""`crossway services`, `crossway instances NAME`, `crossway register`,
`crossway deregister`: the registry from a terminal."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crossway.cli._http import DEFAULT_URL, ControlPlane, Json, Token, Url, echo_json, run


def register(app: typer.Typer) -> None:
    app.command("services")(services)
    app.command("instances")(instances)
    app.command("register")(register_instance)
    app.command("deregister")(deregister_instance)


def services(url: Url = DEFAULT_URL, token: Token = None, json: Json = False) -> None:
    """List registered services with their instance and healthy counts."""

    def action() -> None:
        with ControlPlane(url, token) as cp:
            rows = cp.json("GET", "/v1/services")
        if json:
            echo_json(rows)
            return
        table = Table("SERVICE", "INSTANCES", "HEALTHY", "ZONES", "TAGS", box=None)
        for row in rows:
            healthy = f"{row['healthy']}/{row['instances']}"
            style = "green" if row["healthy"] == row["instances"] else "yellow"
            table.add_row(
                row["name"],
                str(row["instances"]),
                f"[{style}]{healthy}[/]",
                ",".join(row.get("zones", [])),
                ",".join(row.get("tags", [])),
            )
        _print(table, empty=not rows, what="no services are registered")

    run("crossway services", action)


def instances(
    name: Annotated[str, typer.Argument(help="The service.")],
    healthy: Annotated[bool, typer.Option("--healthy", help="Only usable instances.")] = False,
    zone: Annotated[str | None, typer.Option(help="Only this zone.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only instances with this tag.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """List the instances of one service with status, zone and lease."""

    def action() -> None:
        params: dict[str, str] = {}
        if healthy:
            params["healthy"] = "true"
        if zone:
            params["zone"] = zone
        if tag:
            params["tag"] = tag
        with ControlPlane(url, token) as cp:
            rows = cp.json("GET", f"/v1/services/{name}", params=params)
        if json:
            echo_json(rows)
            return
        table = Table("ID", "ADDRESS", "STATUS", "ZONE", "WEIGHT", "LEASE", "AGE", box=None)
        now = time.time()
        for row in rows:
            table.add_row(
                row["id"],
                f"{row['address']}:{row['port']}",
                _status(row),
                row.get("zone") or "",
                str(row.get("weight", 100)),
                row.get("lease") or "-",
                _age(now - row.get("registered_at", now)),
            )
        _print(table, empty=not rows, what=f"no instances of {name}")

    run("crossway instances", action)


def register_instance(
    service: Annotated[str, typer.Argument(help="The service.")],
    instance_id: Annotated[str, typer.Argument(metavar="ID", help="The instance id.")],
    address: Annotated[str, typer.Option(help="Address callers use.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port callers use.")] = 8080,
    ttl: Annotated[str | None, typer.Option(help="Lease TTL, e.g. 30s.")] = None,
    zone: Annotated[str | None, typer.Option(help="Zone.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    meta: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeatable).")] = None,
    http_check: Annotated[str | None, typer.Option("--http-check", help="URL to probe.")] = None,
    tcp_check: Annotated[str | None, typer.Option("--tcp-check", help="host:port.")] = None,
    interval: Annotated[str, typer.Option(help="Check interval.")] = "10s",
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Register (or update) an instance by hand; renew its lease with keepalives."""

    def action() -> None:
        body: dict[str, Any] = {"address": address, "port": port}
        if ttl:
            body["ttl"] = ttl
        if zone:
            body["zone"] = zone
        if tag:
            body["tags"] = tag
        if meta:
            body["metadata"] = dict(_pair(m) for m in meta)
        if http_check or tcp_check:
            check: dict[str, str] = {"interval": interval}
            check["http" if http_check else "tcp"] = http_check or tcp_check or ""
            body["check"] = check
        with ControlPlane(url, token) as cp:
            instance = cp.json("PUT", f"/v1/services/{service}/instances/{instance_id}", json=body)
        if json:
            echo_json(instance)
        else:
            lease = instance.get("lease") or "none (health from the check)"
            typer.echo(f"registered {service}/{instance_id}; lease {lease}")

    run("crossway register", action)


def deregister_instance(
    service: Annotated[str, typer.Argument(help="The service.")],
    instance_id: Annotated[str, typer.Argument(metavar="ID", help="The instance id.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Remove an instance now."""

    def action() -> None:
        with ControlPlane(url, token) as cp:
            cp.call("DELETE", f"/v1/services/{service}/instances/{instance_id}")
        typer.echo(f"deregistered {service}/{instance_id}")

    run("crossway deregister", action)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"--meta takes KEY=VALUE, got {text!r}")
    return key, value


def _status(row: dict[str, Any]) -> str:
    status = str(row.get("status", "passing"))
    colour = {"passing": "green", "warning": "yellow", "critical": "red"}.get(status, "white")
    stale = " (stale)" if row.get("stale") else ""
    return f"[{colour}]{status}[/]{stale}"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _print(table: Table, *, empty: bool, what: str) -> None:
    if empty:
        typer.echo(what)
        return
    Console().print(table)
