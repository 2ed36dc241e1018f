"""`crossway up`, `crossway ps`, `crossway logs`, `crossway scale`, `crossway restart`:
a whole system from a crossway.yaml, and the commands that look at and steer it.

`up` runs in the foreground until Ctrl-C. Its exit status: 0 after a clean
stop, 2 for a crossway.yaml with problems (each printed as
`file:line:col: path: message`), 1 when it cannot start (already running
here, a port in use, the control plane failing). The other four talk to the
running `up` over HTTP (`--url`, default http://127.0.0.1:7700).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx2
import typer
from rich.console import Console
from rich.table import Table

import crossway
from crossway.cli._common import EXIT_INTERRUPTED, EXIT_USAGE, fail, fail_unexpected
from crossway.cli._http import (
    DEFAULT_URL,
    CliFailure,
    ControlPlane,
    Json,
    Token,
    Url,
    echo_json,
    error_text,
    run,
)
from crossway.core.errors import CrosswayError

STATE_STYLES = {
    "healthy": "green",
    "starting": "cyan",
    "unhealthy": "yellow",
    "restarting": "yellow",
    "crashed": "red",
    "stopped": "dim",
}


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("ps")(ps)
    app.command("logs")(logs)
    app.command("scale")(scale)
    app.command("restart")(restart)


def demo_file() -> Path | None:
    """The demo shop's crossway.yaml: in the repository of an editable
    install, else under the current directory; None when neither exists."""
    candidates = (
        Path(crossway.__file__).resolve().parents[2] / "examples/shop/crossway.yaml",
        Path("examples/shop/crossway.yaml"),
    )
    return next((path for path in candidates if path.is_file()), None)


def up(
    file: Annotated[
        Path,
        typer.Option("-f", "--file", envvar="CROSSWAY_FILE", help="The system to run."),
    ] = Path("crossway.yaml"),
    demo: Annotated[
        bool, typer.Option("--demo", help="Run the demo shop (examples/shop).")
    ] = False,
    control_port: Annotated[
        int | None,
        typer.Option(
            envvar="CROSSWAY_CONTROL_PORT",
            min=0,
            max=65535,
            help="Control plane port (overrides the file).",
        ),
    ] = None,
    gateway_port: Annotated[
        int | None,
        typer.Option(
            envvar="CROSSWAY_GATEWAY_PORT",
            min=1,
            max=65535,
            help="Gateway port (overrides the file).",
        ),
    ] = None,
    admin_port: Annotated[
        int | None,
        typer.Option(
            envvar="CROSSWAY_ADMIN_PORT",
            min=1,
            max=65535,
            help="Gateway admin port (overrides the file).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="CROSSWAY_DATA_DIR", help="State, logs and the lock (overrides the file)."
        ),
    ] = None,
) -> None:
    """Run the control plane, the gateway and every service of a crossway.yaml."""
    from crossway.up import Overrides, UpFileError, load_project
    from crossway.up.run import run_up

    command = "crossway up"
    if demo:
        found = demo_file()
        if found is None:
            fail(command, "the demo shop is not here: run from a checkout of crossway")
        file = found
        data_dir = data_dir or Path(".crossway")
    overrides = Overrides(
        control_port=control_port,
        gateway_port=gateway_port,
        admin_port=admin_port,
        data_dir=data_dir.resolve() if data_dir else None,
    )
    try:
        project = load_project(file, overrides)
    except UpFileError as exc:
        for problem in exc.problems:
            print(problem.render(exc.file), file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        code = run_up(project)
    except CrosswayError as exc:
        fail(command, exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.TyperException):
        raise
    except Exception as exc:
        fail_unexpected(command, exc)
    raise typer.Exit(code)


def ps(url: Url = DEFAULT_URL, token: Token = None, json: Json = False) -> None:
    """List the processes `crossway up` supervises, with state, port and restarts."""

    def action() -> None:
        with ControlPlane(url, token) as cp:
            body = _processes(cp)
        if json:
            echo_json(body)
            return
        table = Table(
            "SERVICE",
            "REPLICA",
            "INSTANCE",
            "PID",
            "PORT",
            "STATE",
            "RESTARTS",
            "UP",
            "LAST EXIT",
            box=None,
        )
        now = time.time()
        for row in body["processes"]:
            style = STATE_STYLES.get(row["state"], "")
            table.add_row(
                row["service"],
                str(row["replica"]),
                row["instance_id"],
                _text(row["pid"]),
                _text(row["port"]),
                f"[{style}]{row['state']}[/]" if style else row["state"],
                str(row["restarts"]),
                _since(row["started_at"], now) if row["pid"] else "-",
                _exit(row["last_exit"]),
            )
        console = Console()
        if not console.is_terminal:  # piped: full names rather than a table cut to 80 columns
            console = Console(width=200)
        console.print(table)

    run("crossway ps", action)


def logs(
    service: Annotated[str, typer.Argument(help="The service.")],
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new lines.")
    ] = False,
    tail: Annotated[int, typer.Option("--tail", min=0, help="Lines from before now.")] = 200,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Print a service's recent output (`replica | line`); -f keeps following it."""

    def action() -> None:
        params = {"tail": str(tail), "follow": "true" if follow else "false"}
        path = f"/v1/processes/{service}/logs"
        with ControlPlane(url, token, timeout=60.0) as cp:
            if not follow:
                sys.stdout.write(cp.call("GET", path, params=params).text)
                return
            try:
                timeout = httpx2.Timeout(10.0, read=None)
                with cp.http.stream("GET", path, params=params, timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise CliFailure(error_text(response))
                    _print_lines(response.iter_text())
            except httpx2.HTTPError as exc:
                raise CliFailure(f"the log stream from {cp.url} ended: {exc}") from None

    try:
        run("crossway logs", action)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def scale(
    service: Annotated[str, typer.Argument(help="The service.")],
    replicas: Annotated[int, typer.Argument(min=0, help="How many replicas to run.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    json: Json = False,
) -> None:
    """Run N replicas of a service (down: the highest replicas stop gracefully)."""

    def action() -> None:
        with ControlPlane(url, token) as cp:
            body = cp.json("POST", f"/v1/processes/{service}/scale", json={"replicas": replicas})
        if json:
            echo_json(body)
            return
        count = len(body["processes"])
        print(f"{service}: {count} replica(s)")

    run("crossway scale", action)


def restart(
    service: Annotated[str, typer.Argument(help="The service.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Restart a service's replicas one at a time, each replacement healthy first."""

    def action() -> None:
        with ControlPlane(url, token) as cp:
            cp.call("POST", f"/v1/processes/{service}/restart")
        print(f"{service}: rolling restart started (watch it with `crossway ps`)")

    run("crossway restart", action)


def _print_lines(chunks: Iterator[str]) -> None:
    """Print each complete line as soon as it arrives (iter_lines may hold one back)."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            print(line, flush=True)
    if pending:
        print(pending, flush=True)


def _processes(cp: ControlPlane) -> dict[str, Any]:
    response = cp.call("GET", "/v1/processes", accept=(404,))
    if response.status_code == 404:
        raise CliFailure(
            f"{cp.url} is a control plane without processes: is `crossway up` running there?"
        )
    body: dict[str, Any] = response.json()
    return body


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _since(started: float | None, now: float) -> str:
    if not started:
        return "-"
    seconds = int(max(0.0, now - started))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _exit(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    code = last.get("code")
    return f"signal {-code}" if isinstance(code, int) and code < 0 else f"code {code}"
