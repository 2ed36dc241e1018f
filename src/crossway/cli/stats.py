"""`crossway stat`, `crossway top`, `crossway edges`, `crossway alerts …`, `crossway export …`.

The golden signals and alerts from a terminal, in the spirit of `linkerd viz`:

    crossway stat                       one row per service (NAME SUCCESS RPS LATENCY_P50 …)
    crossway stat service/orders        the routes of one service, and its total
    crossway top                        the busiest routes, refreshed in place (Ctrl-C to leave)
    crossway edges                      caller → callee with success and latency
    crossway alerts                     firing and pending alerts (--history: recent changes)
    crossway alerts rules|apply|check|reset
    crossway export prometheus-rules    recording + alerting rules for `promtool check rules`
    crossway export grafana-dashboard   a dashboard JSON of the golden signals

Every command that reads the control plane takes `--url`/`--token` (and the
`CROSSWAY_URL`/`CROSSWAY_TOKEN` variables) and `--json` for scripts; a
failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import json as jsonlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from crossway.cli._http import (
    DEFAULT_URL,
    CliFailure,
    ControlPlane,
    Json,
    Token,
    Url,
    echo_json,
    run,
)
from crossway.core.errors import CrosswayError
from crossway.telemetry.alerts.export import grafana_dashboard, prometheus_rules
from crossway.telemetry.alerts.rules import RuleSet, load_rules_file, parse_rules

Window = Annotated[str, typer.Option("--window", "-w", help="Period: 10s, 1m, 5m, 1h, 24h.")]
_ALL = ("service", "services", "svc", "deploy", "deployment", "deployments", "all")

alerts_app = typer.Typer(
    name="alerts",
    help="Alerts: list firing and pending alerts; show, check, apply or reset the rules.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
export_app = typer.Typer(
    name="export",
    help="Export Prometheus rules or a Grafana dashboard for the golden signals.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def register(app: typer.Typer) -> None:
    app.command("stat")(stat)
    app.command("top")(top)
    app.command("edges")(edges)
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(export_app, name="export")


# Formatting, shared by the tables.


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def rate(value: float) -> str:
    return f"{value:.1f}rps" if value >= 10 else f"{value:.2f}rps"


def millis(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f}ms"
    if value < 1000:
        return f"{value:.0f}ms"
    return f"{value / 1000:.2f}s"


def signal_cells(row: dict[str, Any]) -> list[str]:
    """SUCCESS RPS LATENCY_P50 LATENCY_P95 LATENCY_P99, coloured by success."""
    success = row.get("success_rate")
    colour = "green" if success is None or success >= 0.99 else "yellow"
    colour = "red" if success is not None and success < 0.95 else colour
    return [
        f"[{colour}]{percent(success)}[/]",
        rate(row.get("rps", 0.0)),
        millis(row.get("p50_ms")),
        millis(row.get("p95_ms")),
        millis(row.get("p99_ms")),
    ]


SIGNAL_COLUMNS = ("SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99")


def _table(*first: str) -> Table:
    table = Table(*first, *SIGNAL_COLUMNS, box=None, pad_edge=False)
    for column in table.columns[len(first) :]:
        column.justify = "right"
    return table


# crossway stat


def stat(
    target: Annotated[
        str,
        typer.Argument(
            help="service (every service), or service/NAME (or just NAME) for its routes."
        ),
    ] = "service",
    window: Window = "1m",
    route: Annotated[str | None, typer.Option(help="Only this route template.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Success rate, request rate and latency percentiles, like `linkerd viz stat`."""

    def action() -> None:
        service = _service_of(target)
        params = {"window": window}
        if service:
            params["service"] = service
        if route:
            params["route"] = route
        with ControlPlane(url, token) as cp:
            body = cp.json("GET", "/v1/stats", params=params)
        if json:
            echo_json(body)
            return
        _print(stat_table(body, service), empty=not body["rows"], what=_nothing(service, window))

    run("crossway stat", action)


def _service_of(target: str) -> str | None:
    kind, sep, name = target.partition("/")
    if not sep:
        return None if target.lower() in _ALL else target
    if kind.lower() not in _ALL or not name:
        raise CliFailure(f"expected service, service/NAME or NAME, got {target!r}")
    return name


def stat_table(body: dict[str, Any], service: str | None) -> Table:
    if service is None and body["kind"] == "service":
        table = _table("NAME")
        for row in body["rows"]:
            table.add_row(escape(row["service"]), *signal_cells(row))
        return table
    table = _table("NAME", "ROUTE")
    for row in body["rows"]:
        table.add_row(escape(row["service"]), _route(row), *signal_cells(row))
    total = body.get("total")
    if total:
        table.add_row(escape(total["service"]), "[bold](total)[/]", *signal_cells(total))
    return table


def _nothing(service: str | None, window: str) -> str:
    about = f"for {service}" if service else "from any service"
    return (
        f"no requests {about} in the last {window} (signals show once a 10 s slot is"
        " complete; are the SDK, gateway or sidecars pushing?)"
    )


# crossway top


def top(
    window: Window = "10s",
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
    limit: Annotated[int, typer.Option(min=1, help="Routes shown.")] = 20,
    service: Annotated[str | None, typer.Option(help="Only this service.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Print one table and exit.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The busiest routes right now, refreshed in place until Ctrl-C."""

    def fetch(cp: ControlPlane) -> dict[str, Any]:
        params = {"window": window, "by": "route"}
        if service:
            params["service"] = service
        body: dict[str, Any] = cp.json("GET", "/v1/stats", params=params)
        return body

    def action() -> None:
        with ControlPlane(url, token, timeout=10) as cp:
            if once:
                console().print(top_table(fetch(cp), limit, window))
                return
            _live(lambda: top_table(fetch(cp), limit, window), interval)

    run("crossway top", action)


def top_table(body: dict[str, Any], limit: int, window: str) -> Table:
    rows = sorted(body["rows"], key=lambda r: (-r["rps"], r["service"], r["route"]))
    table = _table("SERVICE", "ROUTE")
    table.title = f"top routes by request rate, last {window} ({time.strftime('%H:%M:%S')})"
    for row in rows[:limit]:
        table.add_row(escape(row["service"]), _route(row), *signal_cells(row))
    if not rows:
        table.caption = "no requests in this window"
    return table


def _live(render: Callable[[], Table], interval: float) -> None:
    """Redraw `render()` every `interval` s until Ctrl-C; a failed fetch shows and retries."""
    with Live(_safe(render), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_safe(render))
        except KeyboardInterrupt:
            return


def _safe(render: Callable[[], Table]) -> Table:
    try:
        return render()
    except CliFailure as exc:
        table = Table(box=None)
        table.title = f"[red]{exc}[/] (retrying)"
        return table


# crossway edges


def edges(
    window: Window = "1m",
    service: Annotated[str | None, typer.Option(help="Only calls to this service.")] = None,
    caller: Annotated[str | None, typer.Option(help="Only calls from this service.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Caller → callee edges with success rate, request rate and latency."""

    def action() -> None:
        params = {"window": window}
        if service:
            params["service"] = service
        if caller:
            params["caller"] = caller
        with ControlPlane(url, token) as cp:
            body = cp.json("GET", "/v1/edges", params=params)
        if json:
            echo_json(body)
            return
        table = _table("CALLER", "CALLEE")
        for row in body["rows"]:
            table.add_row(escape(row["caller"]), escape(row["service"]), *signal_cells(row))
        _print(table, empty=not body["rows"], what=f"no calls seen in the last {window}")

    run("crossway edges", action)


# crossway alerts


@alerts_app.callback()
def alerts(
    ctx: typer.Context,
    history: Annotated[bool, typer.Option("--history", help="Show recent changes too.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Firing and pending alerts (sub-commands manage the rules)."""
    if ctx.invoked_subcommand is not None:
        return

    def action() -> None:
        with ControlPlane(url, token) as cp:
            body = cp.json("GET", "/v1/alerts")
        if json:
            echo_json(body)
            return
        _print(alerts_table(body["active"]), empty=not body["active"], what=_quiet(body))
        if history and body["history"]:
            typer.echo("")
            console().print(history_table(body["history"]))

    run("crossway alerts", action)


def _quiet(body: dict[str, Any]) -> str:
    return f"no alerts pending or firing ({body['rules']} rules, {body['evaluations']} evaluations)"


def alerts_table(active: list[dict[str, Any]]) -> Table:
    table = Table("NAME", "STATE", "SEVERITY", "LABELS", "VALUE", "SINCE", box=None)
    for alert in active:
        colour = "red" if alert["state"] == "firing" else "yellow"
        table.add_row(
            escape(alert["alertname"]),
            f"[{colour}]{alert['state']}[/]",
            escape(alert["labels"].get("severity", "")),
            _labels(alert["labels"]),
            alert["value_text"],
            alert["started_at"] or "",
        )
    return table


def history_table(history: list[dict[str, Any]]) -> Table:
    table = Table("TIME", "NAME", "STATE", "LABELS", "VALUE", box=None, title="recent changes")
    for event in history:
        table.add_row(
            event["time"],
            escape(event["alertname"]),
            event["state"],
            _labels(event["labels"]),
            event["value_text"],
        )
    return table


def _labels(labels: dict[str, str]) -> str:
    shown = (f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "severity"))
    return escape(",".join(shown))


def _route(row: dict[str, Any]) -> str:
    return escape(f"{row['method']} {row['route']}")


@alerts_app.command("rules")
def show_rules(url: Url = DEFAULT_URL, token: Token = None, json: Json = False) -> None:
    """Show the rules in force and where they came from."""

    def action() -> None:
        with ControlPlane(url, token) as cp:
            body = cp.json("GET", "/v1/alerts/rules")
        if json:
            echo_json(body)
            return
        table = Table("NAME", "EXPR", "FOR", "WINDOW", "SEVERITY", "NOTIFY", box=None)
        for rule in body["rules"]:
            notify = ",".join(rule["notify"])
            row = (rule["name"], rule["expr"], rule["for"], rule["window"], rule["severity"])
            table.add_row(*(escape(cell) for cell in (*row, notify)))
        what = f"no alert rules (origin: {body['origin']})"
        _print(table, empty=not body["rules"], what=what)

    run("crossway alerts rules", action)


RulesFile = Annotated[Path, typer.Argument(help="A YAML rule file.", show_default=False)]


@alerts_app.command("check")
def check_rules(path: RulesFile) -> None:
    """Validate a rule file locally (no server needed); errors name file:line:column."""

    def action() -> None:
        rules = _load(path)
        typer.echo(f"{path}: {len(rules.rules)} rules, {len(rules.notifiers)} notifiers, valid")

    run("crossway alerts check", action)


@alerts_app.command("apply")
def apply_rules(path: RulesFile, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Replace the control plane's rules with a file (checked first, stored in the store)."""

    def action() -> None:
        _load(path)
        with ControlPlane(url, token) as cp:
            body = cp.json("PUT", "/v1/alerts/rules", content=path.read_bytes())
        typer.echo(f"applied {len(body['rules'])} rules, {len(body['notifiers'])} notifiers")

    run("crossway alerts apply", action)


@alerts_app.command("reset")
def reset_rules(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Remove the stored rules: the control plane falls back to its rule file, if any."""

    def action() -> None:
        with ControlPlane(url, token) as cp:
            body = cp.json("DELETE", "/v1/alerts/rules")
        typer.echo(f"stored rules removed; {len(body['rules'])} rules in force ({body['origin']})")

    run("crossway alerts reset", action)


def _load(path: Path) -> RuleSet:
    try:
        return load_rules_file(path)
    except CrosswayError as exc:
        raise CliFailure(exc.message) from None


# crossway export


Output = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to this file instead of stdout."),
]


@export_app.command("prometheus-rules")
def export_prometheus_rules(
    rules: Annotated[
        Path | None, typer.Option(help="Add alerting rules for this Crossway rule file.")
    ] = None,
    from_server: Annotated[
        bool, typer.Option("--from-server", help="Add alerting rules for the server's rules.")
    ] = False,
    output: Output = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Recording rules for the golden signals (and alerting rules), for Prometheus."""

    def action() -> None:
        if rules is not None and from_server:
            raise CliFailure("give --rules FILE or --from-server, not both")
        ruleset = _load(rules) if rules is not None else None
        if from_server:
            with ControlPlane(url, token) as cp:
                body = cp.json("GET", "/v1/alerts/rules")
            ruleset = _parse(body["yaml"])
        _write(prometheus_rules(ruleset), output)

    run("crossway export prometheus-rules", action)


@export_app.command("grafana-dashboard")
def export_grafana_dashboard(
    output: Output = None,
    title: Annotated[str, typer.Option(help="Dashboard title.")] = "Crossway golden signals",
) -> None:
    """A Grafana dashboard JSON: rate, success rate and p50/p95/p99 per service."""

    def action() -> None:
        text = jsonlib.dumps(grafana_dashboard(title=title), indent=2, ensure_ascii=False)
        _write(text + "\n", output)

    run("crossway export grafana-dashboard", action)


def _parse(text: str) -> RuleSet:
    try:
        return parse_rules(text, source="server rules")
    except CrosswayError as exc:
        raise CliFailure(exc.message) from None


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliFailure(f"cannot write {output}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {output}", err=True)


def _print(table: Table, *, empty: bool, what: str) -> None:
    if empty:
        typer.echo(what)
        return
    console().print(table)


def console() -> Console:
    """A console for tables: the terminal's width, or unlimited when piped
    (a script reading the output wants whole rows, never wrapped ones)."""
    plain = Console()
    return plain if plain.is_terminal else Console(width=10_000)
